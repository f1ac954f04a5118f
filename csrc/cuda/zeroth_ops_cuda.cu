// CUDA implementations of the zeroth custom ops (schemas in ../zeroth_ops.cpp): argument
// checks and output allocation here, kernels in kernels.cu. Built only where the running
// torch has CUDA and nvcc exists (zeroth/ops/_build.py).
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAStream.h>

#include "kernels.cuh"
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
  TORCH_CHECK(kind >= 0 && kind < kNumActivations, "activation_difference: unknown kind ", kind);
  auto a = a_in.contiguous();
  auto delta = delta_in.contiguous();
  TORCH_CHECK(a.numel() > 0 && delta.numel() % a.numel() == 0, "activation_difference: delta must be K copies of a");
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
  TORCH_CHECK(kind >= 0 && kind < kNumActivations, "activation_difference_confined: unknown kind ", kind);
  TORCH_CHECK(a_in.dim() == 3 && delta_in.dim() == 3, "activation_difference_confined: a (B, C, S), delta (K, B, S)");
  auto a = a_in.contiguous();
  auto delta = delta_in.contiguous();
  auto channels = channels_in.to(at::kLong).contiguous();
  const int64_t B = a.size(0), C = a.size(1), S = a.size(2), K = delta.size(0);
  TORCH_CHECK(delta.size(1) == B && delta.size(2) == S && channels.numel() == K,
              "activation_difference_confined: shapes do not match");
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
  TORCH_CHECK(a_in.dim() == 3, "batchnorm_difference: a must be (B, C, S)");
  auto a = a_in.contiguous();
  auto delta = delta_in.contiguous();
  const bool confined = channels_in.numel() > 0 || delta.dim() == 3;
  const int64_t B = a.size(0), C = a.size(1), S = a.size(2), K = delta.size(0);
  auto channels = channels_in.to(at::kLong).contiguous();
  auto gamma = weight_in.numel() ? weight_in.to(at::kDouble).contiguous() : weight_in;
  if (confined) {
    TORCH_CHECK(delta.dim() == 3 && delta.size(1) == B && delta.size(2) == S && channels.numel() == K,
                "batchnorm_difference: confined delta must be (K, B, S) with K channels");
  } else {
    TORCH_CHECK(delta.dim() == 4 && delta.size(1) == B && delta.size(2) == C && delta.size(3) == S,
                "batchnorm_difference: dense delta must be (K, B, C, S)");
  }
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
  TORCH_CHECK(logits.dim() == 2, "cross_entropy_difference: logits must be (B, C)");
  const int64_t B = logits.size(0), C = logits.size(1);
  auto p = at::softmax(logits.to(at::kDouble), 1).contiguous();
  auto targets = targets_in.to(at::kLong).contiguous();
  auto delta = delta_in.to(at::kDouble).contiguous();
  auto channels = channels_in.to(at::kLong).contiguous();
  const bool confined = channels.numel() > 0;
  const int64_t K = delta.size(0);
  TORCH_CHECK(confined ? (delta.dim() == 2 && delta.size(1) == B && channels.numel() == K)
                       : (delta.dim() == 3 && delta.size(1) == B && delta.size(2) == C),
              "cross_entropy_difference: delta must be (K, B, C), or (K, B) with K channels");
  auto out = at::empty({K}, logits.options().dtype(at::kDouble));
  cuda::cross_entropy_difference(p.data_ptr<double>(), targets.data_ptr<int64_t>(), delta.data_ptr<double>(),
                                 confined ? channels.data_ptr<int64_t>() : nullptr, out.data_ptr<double>(), K, B, C,
                                 stream());
  return out;
}

Tensor head_cross_entropy_difference_cuda(const Tensor& x_in, const Tensor& logits, const Tensor& targets_in,
                                          double mu, bool with_bias) {
  check_cuda(x_in, "x");
  TORCH_CHECK(x_in.dim() == 2 && logits.dim() == 2 && x_in.size(0) == logits.size(0),
              "head_cross_entropy_difference: x (B, I) and logits (B, O)");
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
  TORCH_CHECK(x_in.dim() == 4, "conv_weight_patches: x must be (B, C, H, W)");
  auto x = x_in.contiguous();
  auto c = c_in.to(at::kLong).contiguous(), ki = i_in.to(at::kLong).contiguous(), kj = j_in.to(at::kLong).contiguous();
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
  TORCH_CHECK(grad.dim() == 1 && grad.is_contiguous(), "scatter_scaled_add: grad must be flat and contiguous");
  auto indices = indices_in.to(grad.device(), at::kLong).contiguous();
  auto coeffs = coeffs_in.to(grad.device(), at::kDouble).contiguous();
  TORCH_CHECK(indices.numel() == coeffs.numel(), "scatter_scaled_add: one coefficient per index");
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
