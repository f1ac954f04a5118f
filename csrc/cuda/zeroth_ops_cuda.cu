// CUDA implementations of the zeroth custom ops (schemas in ../zeroth_ops.cpp): argument
// checks and output allocation here, kernels in kernels.cu. Built only where the running
// torch has CUDA and nvcc exists (zeroth/ops/_build.py).
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAStream.h>

#include "kernels.cuh"
#include "../zeroth_checks.h"
#include "../zeroth_math.h"

namespace zeroth {
namespace {

using at::Tensor;

cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream(); }

void check_cuda(const Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), "zeroth ops: ", name, " must be a CUDA tensor here");
}

Tensor activation_difference_cuda(const Tensor& a_in, const Tensor& delta_in, int64_t kind, double slope) {
  check_cuda(a_in, "a");
  checks::activation(a_in, delta_in, kind);
  auto a = a_in.contiguous();
  auto delta = delta_in.contiguous();
  auto out = at::empty_like(delta);
  AT_DISPATCH_FLOATING_TYPES(delta.scalar_type(), "activation_difference_cuda", [&] {
    cuda::activation_difference<scalar_t>(a.data_ptr<scalar_t>(), delta.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
                                          a.numel(), delta.numel(), static_cast<int>(kind), slope, stream());
  });
  return out;
}

Tensor activation_difference_confined_cuda(const Tensor& a_in, const Tensor& channels_in, const Tensor& delta_in,
                                           int64_t kind, double slope) {
  check_cuda(a_in, "a");
  auto channels = channels_in.to(at::kLong).contiguous();
  checks::activation_confined(a_in, channels, delta_in, kind);
  auto a = a_in.contiguous();
  auto delta = delta_in.contiguous();
  const int64_t B = a.size(0), C = a.size(1), S = a.size(2), K = delta.size(0);
  auto out = at::empty_like(delta);
  AT_DISPATCH_FLOATING_TYPES(delta.scalar_type(), "activation_difference_confined_cuda", [&] {
    cuda::activation_difference_confined<scalar_t>(a.data_ptr<scalar_t>(), channels.data_ptr<int64_t>(),
                                                   delta.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), K, B, C, S,
                                                   static_cast<int>(kind), slope, stream());
  });
  return out;
}

Tensor batchnorm_difference_cuda(const Tensor& a_in, const Tensor& delta_in, const Tensor& channels_in,
                                 const Tensor& weight_in, const Tensor& bias_in, double eps) {
  check_cuda(a_in, "a");
  auto channels = channels_in.to(at::kLong).contiguous();
  const bool confined = checks::batchnorm(a_in, delta_in, channels);
  auto a = a_in.contiguous();
  auto delta = delta_in.contiguous();
  const int64_t B = a.size(0), C = a.size(1), S = a.size(2), K = delta.size(0);
  auto gamma = weight_in.numel() ? weight_in.to(at::kDouble).contiguous() : weight_in;
  (void)bias_in;  // beta cancels in the difference
  auto out = at::empty_like(delta);
  AT_DISPATCH_FLOATING_TYPES(delta.scalar_type(), "batchnorm_difference_cuda", [&] {
    cuda::batchnorm_difference<scalar_t>(a.data_ptr<scalar_t>(), delta.data_ptr<scalar_t>(),
                                         confined ? channels.data_ptr<int64_t>() : nullptr,
                                         gamma.numel() ? gamma.data_ptr<double>() : nullptr, out.data_ptr<scalar_t>(),
                                         K, B, C, S, eps, stream());
  });
  return out;
}

Tensor cross_entropy_difference_cuda(const Tensor& logits, const Tensor& targets_in, const Tensor& delta_in,
                                     const Tensor& channels_in) {
  check_cuda(logits, "logits");
  auto channels = channels_in.to(at::kLong).contiguous();
  const bool confined = checks::cross_entropy(logits, delta_in, channels);
  const int64_t B = logits.size(0), C = logits.size(1);
  auto p = at::softmax(logits.to(at::kDouble), 1).contiguous();
  auto targets = targets_in.to(at::kLong).contiguous();
  auto delta = delta_in.to(at::kDouble).contiguous();
  const int64_t K = delta.size(0);
  auto out = at::empty({K}, logits.options().dtype(at::kDouble));
  cuda::cross_entropy_difference(p.data_ptr<double>(), targets.data_ptr<int64_t>(), delta.data_ptr<double>(),
                                 confined ? channels.data_ptr<int64_t>() : nullptr, out.data_ptr<double>(), K, B, C,
                                 stream());
  return out;
}

Tensor head_cross_entropy_difference_cuda(const Tensor& x_in, const Tensor& logits, const Tensor& targets_in,
                                          double mu, bool with_bias) {
  check_cuda(x_in, "x");
  checks::head(x_in, logits);
  auto x = x_in.to(at::kDouble).contiguous();
  auto p = at::softmax(logits.to(at::kDouble), 1).contiguous();
  auto targets = targets_in.to(at::kLong).contiguous();
  const int64_t B = x.size(0), I = x.size(1), O = logits.size(1);
  auto out = at::empty({O, I + (with_bias ? 1 : 0)}, logits.options().dtype(at::kDouble));
  cuda::head_cross_entropy_difference(x.data_ptr<double>(), p.data_ptr<double>(), targets.data_ptr<int64_t>(),
                                      out.data_ptr<double>(), B, I, O, with_bias, mu, stream());
  return out;
}

Tensor conv_weight_patches_cuda(const Tensor& x_in, const Tensor& c_in, const Tensor& i_in, const Tensor& j_in,
                                int64_t out_h, int64_t out_w, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
                                int64_t dh, int64_t dw) {
  check_cuda(x_in, "x");
  auto c = c_in.to(at::kLong).contiguous(), ki = i_in.to(at::kLong).contiguous(), kj = j_in.to(at::kLong).contiguous();
  checks::patches(x_in, c);
  auto x = x_in.contiguous();
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), K = c.numel();
  auto out = at::empty({K, B, out_h, out_w}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv_weight_patches_cuda", [&] {
    cuda::conv_weight_patches<scalar_t>(x.data_ptr<scalar_t>(), c.data_ptr<int64_t>(), ki.data_ptr<int64_t>(),
                                        kj.data_ptr<int64_t>(), out.data_ptr<scalar_t>(), K, B, C, H, W, out_h, out_w,
                                        sh, sw, ph, pw, dh, dw, stream());
  });
  return out;
}

Tensor scatter_scaled_add_cuda(Tensor grad, const Tensor& indices_in, const Tensor& coeffs_in, double scale) {
  check_cuda(grad, "grad");
  auto indices = indices_in.to(grad.device(), at::kLong).contiguous();
  auto coeffs = coeffs_in.to(grad.device(), at::kDouble).contiguous();
  checks::scatter(grad, indices, coeffs);
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "scatter_scaled_add_cuda", [&] {
    cuda::scatter_scaled_add<scalar_t>(grad.data_ptr<scalar_t>(), indices.data_ptr<int64_t>(),
                                       coeffs.data_ptr<double>(), indices.numel(), scale, stream());
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(zeroth, CUDA, m) {
  m.impl("activation_difference", &activation_difference_cuda);
  m.impl("activation_difference_confined", &activation_difference_confined_cuda);
  m.impl("batchnorm_difference", &batchnorm_difference_cuda);
  m.impl("cross_entropy_difference", &cross_entropy_difference_cuda);
  m.impl("head_cross_entropy_difference", &head_cross_entropy_difference_cuda);
  m.impl("conv_weight_patches", &conv_weight_patches_cuda);
  m.impl("scatter_scaled_add", &scatter_scaled_add_cuda);
}

}  // namespace zeroth
