// CUDA implementations of the zeroth custom ops (schemas in ../zeroth_ops.cpp): argument
// checks (../zeroth_checks.h, shared with the CPU ops), the device guard, output allocation
// and the launch check here; kernels in kernels.cu. Built only where the running torch has
// CUDA and nvcc exists (zeroth/ops/_build.py).
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "kernels.cuh"
#include "../zeroth_checks.h"
#include "../zeroth_math.h"

namespace zeroth {
namespace {

using at::Tensor;

cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream(); }

// After the shared checks (every tensor on one device): that device is a GPU, and it is the
// current device while the op allocates and launches (kernels run on its current stream).
c10::cuda::CUDAGuard on_device(const Tensor& t, const char* op) {
  TORCH_CHECK_VALUE(t.is_cuda(), op, ": the CUDA implementation got a ", checks::device_name(t.device()), " tensor");
  return c10::cuda::CUDAGuard(t.device());
}

Tensor activation_difference_cuda(const Tensor& a_in, const Tensor& delta_in, int64_t kind, double slope) {
  checks::activation(a_in, delta_in, kind);
  const auto guard = on_device(a_in, "activation_difference");
  auto a = a_in.contiguous();
  auto delta = delta_in.contiguous();
  auto out = at::empty_like(delta);
  AT_DISPATCH_FLOATING_TYPES(delta.scalar_type(), "activation_difference_cuda", [&] {
    C10_CUDA_CHECK(cuda::activation_difference<scalar_t>(a.data_ptr<scalar_t>(), delta.data_ptr<scalar_t>(),
                                                         out.data_ptr<scalar_t>(), a.numel(), delta.numel(),
                                                         static_cast<int>(kind), slope, stream()));
  });
  return out;
}

Tensor activation_difference_confined_cuda(const Tensor& a_in, const Tensor& channels_in, const Tensor& delta_in,
                                           int64_t kind, double slope) {
  checks::activation_confined(a_in, channels_in, delta_in, kind);
  const auto guard = on_device(a_in, "activation_difference_confined");
  auto channels = channels_in.to(at::kLong).contiguous();
  auto a = a_in.contiguous();
  auto delta = delta_in.contiguous();
  const int64_t B = a.size(0), C = a.size(1), S = a.size(2), K = delta.size(0);
  auto out = at::empty_like(delta);
  AT_DISPATCH_FLOATING_TYPES(delta.scalar_type(), "activation_difference_confined_cuda", [&] {
    C10_CUDA_CHECK(cuda::activation_difference_confined<scalar_t>(a.data_ptr<scalar_t>(), channels.data_ptr<int64_t>(),
                                                                  delta.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
                                                                  K, B, C, S, static_cast<int>(kind), slope, stream()));
  });
  return out;
}

Tensor batchnorm_difference_cuda(const Tensor& a_in, const Tensor& delta_in, const Tensor& channels_in,
                                 const Tensor& weight_in, const Tensor& bias_in, double eps) {
  const bool confined = checks::batchnorm(a_in, delta_in, channels_in, weight_in, bias_in);
  const auto guard = on_device(a_in, "batchnorm_difference");
  auto channels = channels_in.to(at::kLong).contiguous();
  auto a = a_in.contiguous();
  auto delta = delta_in.contiguous();
  const int64_t B = a.size(0), C = a.size(1), S = a.size(2), K = delta.size(0);
  auto gamma = weight_in.numel() ? weight_in.to(at::kDouble).contiguous() : weight_in;
  (void)bias_in;  // beta cancels in the difference
  auto out = at::empty_like(delta);
  AT_DISPATCH_FLOATING_TYPES(delta.scalar_type(), "batchnorm_difference_cuda", [&] {
    C10_CUDA_CHECK(cuda::batchnorm_difference<scalar_t>(
        a.data_ptr<scalar_t>(), delta.data_ptr<scalar_t>(), confined ? channels.data_ptr<int64_t>() : nullptr,
        gamma.numel() ? gamma.data_ptr<double>() : nullptr, out.data_ptr<scalar_t>(), K, B, C, S, eps, stream()));
  });
  return out;
}

Tensor cross_entropy_difference_cuda(const Tensor& logits, const Tensor& targets_in, const Tensor& delta_in,
                                     const Tensor& channels_in) {
  const bool confined = checks::cross_entropy(logits, targets_in, delta_in, channels_in);
  const auto guard = on_device(logits, "cross_entropy_difference");
  auto channels = channels_in.to(at::kLong).contiguous();
  const int64_t B = logits.size(0), C = logits.size(1);
  auto p = at::softmax(logits.to(at::kDouble), 1).contiguous();
  auto targets = targets_in.to(at::kLong).contiguous();
  auto delta = delta_in.to(at::kDouble).contiguous();
  const int64_t K = delta.size(0);
  auto out = at::empty({K}, logits.options().dtype(at::kDouble));
  C10_CUDA_CHECK(cuda::cross_entropy_difference(
      p.data_ptr<double>(), targets.data_ptr<int64_t>(), delta.data_ptr<double>(),
      confined ? channels.data_ptr<int64_t>() : nullptr, out.data_ptr<double>(), K, B, C, stream()));
  return out;
}

Tensor head_cross_entropy_difference_cuda(const Tensor& x_in, const Tensor& logits, const Tensor& targets_in, double mu,
                                          bool with_bias) {
  checks::head(x_in, logits, targets_in);
  const auto guard = on_device(x_in, "head_cross_entropy_difference");
  auto x = x_in.to(at::kDouble).contiguous();
  auto p = at::softmax(logits.to(at::kDouble), 1).contiguous();
  auto targets = targets_in.to(at::kLong).contiguous();
  const int64_t B = x.size(0), I = x.size(1), O = logits.size(1);
  auto out = at::empty({O, I + (with_bias ? 1 : 0)}, logits.options().dtype(at::kDouble));
  C10_CUDA_CHECK(cuda::head_cross_entropy_difference(x.data_ptr<double>(), p.data_ptr<double>(),
                                                     targets.data_ptr<int64_t>(), out.data_ptr<double>(), B, I, O,
                                                     with_bias, mu, stream()));
  return out;
}

Tensor conv_weight_patches_cuda(const Tensor& x_in, const Tensor& c_in, const Tensor& i_in, const Tensor& j_in,
                                int64_t out_h, int64_t out_w, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
                                int64_t dh, int64_t dw) {
  checks::patches(x_in, c_in, i_in, j_in, out_h, out_w, sh, sw, ph, pw, dh, dw);
  const auto guard = on_device(x_in, "conv_weight_patches");
  auto c = c_in.to(at::kLong).contiguous(), ki = i_in.to(at::kLong).contiguous(), kj = j_in.to(at::kLong).contiguous();
  auto x = x_in.contiguous();
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), K = c.numel();
  auto out = at::empty({K, B, out_h, out_w}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv_weight_patches_cuda", [&] {
    C10_CUDA_CHECK(cuda::conv_weight_patches<scalar_t>(
        x.data_ptr<scalar_t>(), c.data_ptr<int64_t>(), ki.data_ptr<int64_t>(), kj.data_ptr<int64_t>(),
        out.data_ptr<scalar_t>(), K, B, C, H, W, out_h, out_w, sh, sw, ph, pw, dh, dw, stream()));
  });
  return out;
}

Tensor scatter_scaled_add_cuda(Tensor grad, const Tensor& indices_in, const Tensor& coeffs_in, double scale) {
  checks::scatter(grad, indices_in, coeffs_in);
  const auto guard = on_device(grad, "scatter_scaled_add");
  auto indices = indices_in.to(at::kLong).contiguous();
  auto coeffs = coeffs_in.to(at::kDouble).contiguous();
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "scatter_scaled_add_cuda", [&] {
    C10_CUDA_CHECK(cuda::scatter_scaled_add<scalar_t>(grad.data_ptr<scalar_t>(), indices.data_ptr<int64_t>(),
                                                      coeffs.data_ptr<double>(), indices.numel(), scale, stream()));
  });
  return grad;
}

int exact_dtype(const Tensor& x) {  // zeroth::exact::Dtype (the checks admit these four only)
  switch (x.scalar_type()) {
    case at::kHalf:
      return 0;
    case at::kBFloat16:
      return 1;
    case at::kFloat:
      return 2;
    default:
      return 3;
  }
}

// Per-move or per-direction scalars, copied to x's device for the kernel.
Tensor on_device_doubles(c10::ArrayRef<double> values, const Tensor& x) {
  return at::tensor(values, x.options().dtype(at::kDouble));
}

Tensor rademacher_involution_cuda(Tensor x, const Tensor& words, c10::ArrayRef<double> signs, double a) {
  checks::rademacher_involution(x, words, signs, a);
  const auto guard = on_device(x, "rademacher_involution_");
  if (x.numel() == 0 || signs.empty()) return x;
  const Tensor dsigns = on_device_doubles(signs, x);
  C10_CUDA_CHECK(cuda::rademacher_involution(exact_dtype(x), x.data_ptr(), x.numel(), words.data_ptr<int64_t>(),
                                             words.size(1), dsigns.data_ptr<double>(),
                                             static_cast<int64_t>(signs.size()), a, stream()));
  return x;
}

Tensor rademacher_sgd_cuda(Tensor x, const Tensor& undo_words, c10::ArrayRef<double> undo_signs, const Tensor& words,
                           c10::ArrayRef<double> weights, double a, double scale, double decay, bool antithetic) {
  checks::rademacher_sgd(x, undo_words, undo_signs, words, weights, a);
  const auto guard = on_device(x, "rademacher_sgd_");
  if (x.numel() == 0) return x;
  const Tensor dundo = on_device_doubles(undo_signs, x), dweights = on_device_doubles(weights, x);
  C10_CUDA_CHECK(cuda::rademacher_sgd(
      exact_dtype(x), x.data_ptr(), x.numel(), undo_signs.empty() ? nullptr : undo_words.data_ptr<int64_t>(),
      undo_words.size(1), dundo.data_ptr<double>(), static_cast<int64_t>(undo_signs.size()),
      weights.empty() ? nullptr : words.data_ptr<int64_t>(), words.size(1), dweights.data_ptr<double>(),
      static_cast<int64_t>(weights.size()), a, scale, decay, antithetic, stream()));
  return x;
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
  m.impl("rademacher_involution_", &rademacher_involution_cuda);
  m.impl("rademacher_sgd_", &rademacher_sgd_cuda);
}

}  // namespace zeroth
