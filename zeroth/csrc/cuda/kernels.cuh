// Torch-free CUDA launchers of zeroth.ops (kernels.cu). The torch bindings in
// zeroth_ops_cuda.cu check arguments (../zeroth_checks.h), set the device and call these;
// keeping them free of torch headers lets the kernels compile with plain nvcc wherever it
// exists (tests/ops/test_cuda_sources.py). Each launcher returns the launch's error status
// (cudaGetLastError) for the binding to check; an empty problem launches nothing.
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

namespace zeroth {
namespace cuda {

template <typename T>
cudaError_t activation_difference(const T* a, const T* d, T* out, int64_t n, int64_t total, int kind, double slope,
                                  cudaStream_t stream);

template <typename T>
cudaError_t activation_difference_confined(const T* a, const int64_t* channels, const T* d, T* out, int64_t K,
                                           int64_t B, int64_t C, int64_t S, int kind, double slope,
                                           cudaStream_t stream);

// One channel per block: dense (channels == nullptr, delta (K, B, C, S)) or confined (delta (K, B, S)).
template <typename T>
cudaError_t batchnorm_difference(const T* a, const T* d, const int64_t* channels, const double* gamma, T* out,
                                 int64_t K, int64_t B, int64_t C, int64_t S, double eps, cudaStream_t stream);

// p: softmax (B, C) in double; delta (K, B, C) or, with channels, (K, B). out (K) double.
cudaError_t cross_entropy_difference(const double* p, const int64_t* targets, const double* d, const int64_t* channels,
                                     double* out, int64_t K, int64_t B, int64_t C, cudaStream_t stream);

// x (B, I) double, p (B, O) double -> out (O, I + with_bias) double.
cudaError_t head_cross_entropy_difference(const double* x, const double* p, const int64_t* targets, double* out,
                                          int64_t B, int64_t I, int64_t O, bool with_bias, double mu,
                                          cudaStream_t stream);

template <typename T>
cudaError_t conv_weight_patches(const T* x, const int64_t* c, const int64_t* ki, const int64_t* kj, T* out, int64_t K,
                                int64_t B, int64_t C, int64_t H, int64_t W, int64_t out_h, int64_t out_w, int64_t sh,
                                int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw, cudaStream_t stream);

template <typename T>
cudaError_t scatter_scaled_add(T* grad, const int64_t* indices, const double* coeffs, int64_t K, double scale,
                               cudaStream_t stream);

// Exact Rademacher involutions (../zeroth_exact.h), x flat of n entries of `dtype` (0 float16,
// 1 bfloat16, 2 float32, 3 float64: zeroth::exact::Dtype). words: (moves, stride) int64 on the
// device; signs and weights: device arrays of doubles.
cudaError_t rademacher_involution(int dtype, void* x, int64_t n, const int64_t* words, int64_t stride,
                                  const double* signs, int64_t num_moves, double a, cudaStream_t stream);

cudaError_t rademacher_sgd(int dtype, void* x, int64_t n, const int64_t* undo_words, int64_t undo_stride,
                           const double* undo_signs, int64_t num_undo, const int64_t* words, int64_t stride,
                           const double* weights, int64_t num_directions, double a, double scale, double decay,
                           bool antithetic, cudaStream_t stream);

}  // namespace cuda
}  // namespace zeroth
