// CUDA kernels of zeroth.ops (torch-free; see kernels.cuh). Arithmetic in double, as on CPU.
#include "kernels.cuh"
#include "../zeroth_exact.h"
#include "../zeroth_math.h"

namespace zeroth {
namespace cuda {
namespace {

constexpr int kThreads = 256;

inline int blocks_for(int64_t n) { return static_cast<int>((n + kThreads - 1) / kThreads); }

template <typename T>
__global__ void activation_difference_kernel(const T* a, const T* d, T* out, int64_t n, int64_t total, int kind,
                                             double slope) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = static_cast<T>(activation_diff(kind, static_cast<double>(a[i % n]), static_cast<double>(d[i]), slope));
  }
}

template <typename T>
__global__ void activation_difference_confined_kernel(const T* a, const int64_t* channels, const T* d, T* out,
                                                      int64_t K, int64_t B, int64_t C, int64_t S, int kind,
                                                      double slope) {
  const int64_t total = K * B * S;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t s = i % S, b = (i / S) % B, k = i / (B * S);
    const double base = a[(b * C + channels[k]) * S + s];
    out[i] = static_cast<T>(activation_diff(kind, base, static_cast<double>(d[i]), slope));
  }
}

// Sum over the block of one double per thread (kThreads threads).
__device__ double block_sum(double v, double* shared) {
  shared[threadIdx.x] = v;
  __syncthreads();
  for (int step = kThreads / 2; step > 0; step >>= 1) {
    if (threadIdx.x < step) shared[threadIdx.x] += shared[threadIdx.x + step];
    __syncthreads();
  }
  const double out = shared[0];
  __syncthreads();
  return out;
}

// Block (k, c): statistics of base and base + d over (B, S), then the difference of the two
// normalised outputs (beta cancels).
template <typename T>
__global__ void batchnorm_difference_kernel(const T* a, const T* d, const int64_t* channels, const double* gamma,
                                            T* out, int64_t B, int64_t C, int64_t S, double eps) {
  __shared__ double shared[kThreads];
  const int64_t block = blockIdx.x;
  int64_t c, d_off, d_sb;
  if (channels != nullptr) {  // confined: block = k
    c = channels[block];
    d_off = block * B * S;
    d_sb = S;
  } else {  // dense: block = k * C + c
    c = block % C;
    d_off = (block / C) * B * C * S + c * S;
    d_sb = C * S;
  }
  const int64_t count = B * S;
  double s0 = 0, s1 = 0;
  for (int64_t e = threadIdx.x; e < count; e += kThreads) {
    const int64_t b = e / S, s = e % S;
    const double x0 = a[(b * C + c) * S + s];
    s0 += x0;
    s1 += x0 + static_cast<double>(d[d_off + b * d_sb + s]);
  }
  const double m0 = block_sum(s0, shared) / count, m1 = block_sum(s1, shared) / count;
  double v0 = 0, v1 = 0;
  for (int64_t e = threadIdx.x; e < count; e += kThreads) {
    const int64_t b = e / S, s = e % S;
    const double x0 = a[(b * C + c) * S + s];
    const double x1 = x0 + static_cast<double>(d[d_off + b * d_sb + s]);
    v0 += (x0 - m0) * (x0 - m0);
    v1 += (x1 - m1) * (x1 - m1);
  }
  const double g = gamma != nullptr ? gamma[c] : 1.0;
  const double r0 = g * rsqrt(block_sum(v0, shared) / count + eps);
  const double r1 = g * rsqrt(block_sum(v1, shared) / count + eps);
  for (int64_t e = threadIdx.x; e < count; e += kThreads) {
    const int64_t b = e / S, s = e % S;
    const double x0 = a[(b * C + c) * S + s];
    const double x1 = x0 + static_cast<double>(d[d_off + b * d_sb + s]);
    out[d_off + b * d_sb + s] = static_cast<T>((x1 - m1) * r1 - (x0 - m0) * r0);
  }
}

// Block k: mean over the batch of the per-row cross-entropy change.
__global__ void cross_entropy_difference_kernel(const double* p, const int64_t* targets, const double* d,
                                                const int64_t* channels, double* out, int64_t B, int64_t C) {
  __shared__ double shared[kThreads];
  const int64_t k = blockIdx.x;
  double acc = 0;
  for (int64_t b = threadIdx.x; b < B; b += kThreads) {
    const int64_t y = targets[b];
    if (channels != nullptr) {
      const int64_t c = channels[k];
      const double dk = d[k * B + b];
      acc += log_mix1(p[b * C + c], dk) - (y == c ? dk : 0.0);
    } else {
      const double* row = d + (k * B + b) * C;
      double s = 0;
      for (int64_t j = 0; j < C; ++j) s += p[b * C + j] * expm1(row[j]);
      acc += log1p(s) - row[y];
    }
  }
  const double total = block_sum(acc, shared);
  if (threadIdx.x == 0) out[k] = total / B;
}

// One thread per coordinate (o, i) of the last Linear layer; O(B) each.
__global__ void head_cross_entropy_difference_kernel(const double* x, const double* p, const int64_t* targets,
                                                     double* out, int64_t B, int64_t I, int64_t O, int64_t cols,
                                                     double mu) {
  const int64_t oi = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (oi >= O * cols) return;
  const int64_t o = oi / cols, i = oi % cols;
  double acc = 0;
  for (int64_t b = 0; b < B; ++b) {
    const double dv = mu * (i < I ? x[b * I + i] : 1.0);
    acc += log_mix1(p[b * O + o], dv) - (targets[b] == o ? dv : 0.0);
  }
  out[oi] = acc / B;
}

template <typename T>
__global__ void conv_weight_patches_kernel(const T* x, const int64_t* c, const int64_t* ki, const int64_t* kj, T* out,
                                           int64_t K, int64_t B, int64_t C, int64_t H, int64_t W, int64_t out_h,
                                           int64_t out_w, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh,
                                           int64_t dw) {
  const int64_t total = K * B * out_h * out_w;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t z = e % out_w, y = (e / out_w) % out_h, b = (e / (out_w * out_h)) % B, k = e / (out_w * out_h * B);
    const int64_t iy = y * sh - ph + ki[k] * dh, ix = z * sw - pw + kj[k] * dw;
    out[e] = (iy >= 0 && iy < H && ix >= 0 && ix < W) ? x[((b * C + c[k]) * H + iy) * W + ix] : T(0);
  }
}

template <typename T>
__global__ void scatter_scaled_add_kernel(T* grad, const int64_t* indices, const double* coeffs, int64_t K,
                                          double scale) {
  const int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (k < K) atomicAdd(grad + indices[k], static_cast<T>(coeffs[k] * scale));
}

// One thread per entry: the moves applied in order (../zeroth_exact.h; the CPU loops compute the same).
template <class F>
__global__ void rademacher_involution_kernel(typename F::Storage* x, int64_t n, const int64_t* words, int64_t stride,
                                             const double* signs, int64_t num_moves, double a) {
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < n;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    typename F::T v = static_cast<typename F::T>(x[t]);
    for (int64_t m = 0; m < num_moves; ++m) {
      const exact::Involution<F> s(signs[m], a);
      v = exact::involution<F>(v, s, static_cast<typename F::Int>(exact::word_bit(words + m * stride, t)));
    }
    x[t] = static_cast<typename F::Storage>(v);
  }
}

template <class F>
__global__ void rademacher_sgd_kernel(typename F::Storage* x, int64_t n, const int64_t* undo_words, int64_t undo_stride,
                                      const double* undo_signs, int64_t num_undo, const int64_t* words, int64_t stride,
                                      const double* weights, int64_t num_directions, double a, double scale,
                                      double decay, bool antithetic) {
  using W = typename F::W;
  using Int = typename F::Int;
  const exact::Involution<F> plus(1.0, a), minus(-1.0, a);
  const exact::Update<F> upd(a, F::kPrecision, scale, decay);
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < n;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    typename F::T v = static_cast<typename F::T>(x[t]);
    for (int64_t m = 0; m < num_undo; ++m) {
      const exact::Involution<F> s(undo_signs[m], a);
      v = exact::involution<F>(v, s, static_cast<Int>(exact::word_bit(undo_words + m * undo_stride, t)));
    }
    W step = 0;
    if (num_directions > 0) {
      W total =
          exact::mul_rn(exact::applied<F>(v, plus, minus, static_cast<Int>(exact::word_bit(words, t)), antithetic),
                        static_cast<W>(weights[0]));
      for (int64_t k = 1; k < num_directions; ++k)
        total = exact::add_rn(
            total,
            exact::mul_rn(
                exact::applied<F>(v, plus, minus, static_cast<Int>(exact::word_bit(words + k * stride, t)), antithetic),
                static_cast<W>(weights[k])));
      step = exact::mul_rn(total, upd.scale);
    }
    x[t] = static_cast<typename F::Storage>(exact::update<F>(v, upd, num_directions > 0, step));
  }
}

template <class F>
cudaError_t launch_involution(void* x, int64_t n, const int64_t* words, int64_t stride, const double* signs,
                              int64_t num_moves, double a, cudaStream_t stream) {
  rademacher_involution_kernel<F><<<blocks_for(n), kThreads, 0, stream>>>(static_cast<typename F::Storage*>(x), n,
                                                                          words, stride, signs, num_moves, a);
  return cudaGetLastError();  // a failed launch (bad configuration, no device) surfaces here
}

template <class F>
cudaError_t launch_sgd(void* x, int64_t n, const int64_t* undo_words, int64_t undo_stride, const double* undo_signs,
                       int64_t num_undo, const int64_t* words, int64_t stride, const double* weights,
                       int64_t num_directions, double a, double scale, double decay, bool antithetic,
                       cudaStream_t stream) {
  rademacher_sgd_kernel<F><<<blocks_for(n), kThreads, 0, stream>>>(
      static_cast<typename F::Storage*>(x), n, undo_words, undo_stride, undo_signs, num_undo, words, stride, weights,
      num_directions, a, scale, decay, antithetic);
  return cudaGetLastError();  // a failed launch (bad configuration, no device) surfaces here
}

}  // namespace

template <typename T>
cudaError_t activation_difference(const T* a, const T* d, T* out, int64_t n, int64_t total, int kind, double slope,
                                  cudaStream_t stream) {
  if (total == 0) return cudaSuccess;
  activation_difference_kernel<T><<<blocks_for(total), kThreads, 0, stream>>>(a, d, out, n, total, kind, slope);
  return cudaGetLastError();  // a failed launch (bad configuration, no device) surfaces here
}

template <typename T>
cudaError_t activation_difference_confined(const T* a, const int64_t* channels, const T* d, T* out, int64_t K,
                                           int64_t B, int64_t C, int64_t S, int kind, double slope,
                                           cudaStream_t stream) {
  if (K * B * S == 0) return cudaSuccess;
  activation_difference_confined_kernel<T>
      <<<blocks_for(K * B * S), kThreads, 0, stream>>>(a, channels, d, out, K, B, C, S, kind, slope);
  return cudaGetLastError();  // a failed launch (bad configuration, no device) surfaces here
}

template <typename T>
cudaError_t batchnorm_difference(const T* a, const T* d, const int64_t* channels, const double* gamma, T* out,
                                 int64_t K, int64_t B, int64_t C, int64_t S, double eps, cudaStream_t stream) {
  const int64_t blocks = channels != nullptr ? K : K * C;
  if (blocks == 0) return cudaSuccess;
  batchnorm_difference_kernel<T>
      <<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(a, d, channels, gamma, out, B, C, S, eps);
  return cudaGetLastError();  // a failed launch (bad configuration, no device) surfaces here
}

cudaError_t cross_entropy_difference(const double* p, const int64_t* targets, const double* d, const int64_t* channels,
                                     double* out, int64_t K, int64_t B, int64_t C, cudaStream_t stream) {
  if (K == 0) return cudaSuccess;
  cross_entropy_difference_kernel<<<static_cast<unsigned>(K), kThreads, 0, stream>>>(p, targets, d, channels, out, B,
                                                                                     C);
  return cudaGetLastError();  // a failed launch (bad configuration, no device) surfaces here
}

cudaError_t head_cross_entropy_difference(const double* x, const double* p, const int64_t* targets, double* out,
                                          int64_t B, int64_t I, int64_t O, bool with_bias, double mu,
                                          cudaStream_t stream) {
  const int64_t cols = I + (with_bias ? 1 : 0);
  if (O * cols == 0) return cudaSuccess;
  head_cross_entropy_difference_kernel<<<blocks_for(O * cols), kThreads, 0, stream>>>(x, p, targets, out, B, I, O, cols,
                                                                                      mu);
  return cudaGetLastError();  // a failed launch (bad configuration, no device) surfaces here
}

template <typename T>
cudaError_t conv_weight_patches(const T* x, const int64_t* c, const int64_t* ki, const int64_t* kj, T* out, int64_t K,
                                int64_t B, int64_t C, int64_t H, int64_t W, int64_t out_h, int64_t out_w, int64_t sh,
                                int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw, cudaStream_t stream) {
  const int64_t total = K * B * out_h * out_w;
  if (total == 0) return cudaSuccess;
  conv_weight_patches_kernel<T><<<blocks_for(total), kThreads, 0, stream>>>(x, c, ki, kj, out, K, B, C, H, W, out_h,
                                                                            out_w, sh, sw, ph, pw, dh, dw);
  return cudaGetLastError();  // a failed launch (bad configuration, no device) surfaces here
}

template <typename T>
cudaError_t scatter_scaled_add(T* grad, const int64_t* indices, const double* coeffs, int64_t K, double scale,
                               cudaStream_t stream) {
  if (K == 0) return cudaSuccess;
  scatter_scaled_add_kernel<T><<<blocks_for(K), kThreads, 0, stream>>>(grad, indices, coeffs, K, scale);
  return cudaGetLastError();  // a failed launch (bad configuration, no device) surfaces here
}

cudaError_t rademacher_involution(int dtype, void* x, int64_t n, const int64_t* words, int64_t stride,
                                  const double* signs, int64_t num_moves, double a, cudaStream_t stream) {
  if (n == 0 || num_moves == 0) return cudaSuccess;
  switch (static_cast<exact::Dtype>(dtype)) {
    case exact::Dtype::kHalf:
      return launch_involution<exact::HalfFormat>(x, n, words, stride, signs, num_moves, a, stream);
    case exact::Dtype::kBFloat16:
      return launch_involution<exact::BFloat16Format>(x, n, words, stride, signs, num_moves, a, stream);
    case exact::Dtype::kFloat:
      return launch_involution<exact::FloatFormat>(x, n, words, stride, signs, num_moves, a, stream);
    default:
      return launch_involution<exact::DoubleFormat>(x, n, words, stride, signs, num_moves, a, stream);
  }
}

cudaError_t rademacher_sgd(int dtype, void* x, int64_t n, const int64_t* undo_words, int64_t undo_stride,
                           const double* undo_signs, int64_t num_undo, const int64_t* words, int64_t stride,
                           const double* weights, int64_t num_directions, double a, double scale, double decay,
                           bool antithetic, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  switch (static_cast<exact::Dtype>(dtype)) {
    case exact::Dtype::kHalf:
      return launch_sgd<exact::HalfFormat>(x, n, undo_words, undo_stride, undo_signs, num_undo, words, stride, weights,
                                           num_directions, a, scale, decay, antithetic, stream);
    case exact::Dtype::kBFloat16:
      return launch_sgd<exact::BFloat16Format>(x, n, undo_words, undo_stride, undo_signs, num_undo, words, stride,
                                               weights, num_directions, a, scale, decay, antithetic, stream);
    case exact::Dtype::kFloat:
      return launch_sgd<exact::FloatFormat>(x, n, undo_words, undo_stride, undo_signs, num_undo, words, stride, weights,
                                            num_directions, a, scale, decay, antithetic, stream);
    default:
      return launch_sgd<exact::DoubleFormat>(x, n, undo_words, undo_stride, undo_signs, num_undo, words, stride,
                                             weights, num_directions, a, scale, decay, antithetic, stream);
  }
}

#define ZEROTH_INSTANTIATE(T)                                                                                         \
  template cudaError_t activation_difference<T>(const T*, const T*, T*, int64_t, int64_t, int, double, cudaStream_t); \
  template cudaError_t activation_difference_confined<T>(const T*, const int64_t*, const T*, T*, int64_t, int64_t,    \
                                                         int64_t, int64_t, int, double, cudaStream_t);                \
  template cudaError_t batchnorm_difference<T>(const T*, const T*, const int64_t*, const double*, T*, int64_t,        \
                                               int64_t, int64_t, int64_t, double, cudaStream_t);                      \
  template cudaError_t conv_weight_patches<T>(const T*, const int64_t*, const int64_t*, const int64_t*, T*, int64_t,  \
                                              int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, \
                                              int64_t, int64_t, int64_t, int64_t, cudaStream_t);                      \
  template cudaError_t scatter_scaled_add<T>(T*, const int64_t*, const double*, int64_t, double, cudaStream_t);

ZEROTH_INSTANTIATE(float)
ZEROTH_INSTANTIATE(double)
#undef ZEROTH_INSTANTIATE

}  // namespace cuda
}  // namespace zeroth
