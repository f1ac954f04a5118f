// zeroth.ops CPU kernels: the hot loops of feature reuse / difference propagation, and the
// bindings of the exact in-place (MeZO) step, rademacher_involution_ / rademacher_sgd_, whose
// loops live in zeroth_exact_cpu.cpp (per-entry math: zeroth_exact.h).
//
// Registered as PyTorch custom ops in the `zeroth` namespace (torch.ops.zeroth.*); the
// schemas are defined here, the CPU implementations follow, the CUDA ones live in
// csrc/cuda/. Every op has a pure-PyTorch twin in zeroth/ops/reference.py that the tests
// compare against. Float inputs are computed in double internally ("opmath"), so a
// difference such as sigma(a + d) - sigma(a) is formed without rounding a + d first.
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "zeroth_checks.h"
#include "zeroth_exact_cpu.h"
#include "zeroth_math.h"

namespace zeroth {

using at::Tensor;

namespace {

// sigma(a + d) - sigma(a) for delta (K, N) against base a (N), broadcast over the K copies.
Tensor activation_difference_cpu(const Tensor& a_in, const Tensor& delta_in, int64_t kind, double slope) {
  checks::activation(a_in, delta_in, kind);
  auto a = a_in.contiguous();
  auto delta = delta_in.contiguous();
  const int64_t n = a.numel();
  auto out = at::empty_like(delta);
  AT_DISPATCH_FLOATING_TYPES(delta.scalar_type(), "activation_difference", [&] {
    const scalar_t* pa = a.data_ptr<scalar_t>();
    const scalar_t* pd = delta.data_ptr<scalar_t>();
    scalar_t* po = out.data_ptr<scalar_t>();
    const scalar_t s = static_cast<scalar_t>(slope);
    at::parallel_for(0, delta.numel(), 4096, [&](int64_t lo, int64_t hi) {
      // runs of one copy at a time: the inner loops index a directly (no i % n) and vectorise
      for (int64_t i = lo; i < hi;) {
        const int64_t start = i % n, len = std::min(n - start, hi - i);
        const scalar_t* ra = pa + start;
        const scalar_t* rd = pd + i;
        scalar_t* ro = po + i;
        if (is_piecewise_linear(static_cast<int>(kind))) {
          for (int64_t j = 0; j < len; ++j) ro[j] = piecewise_linear_diff<scalar_t>(ra[j], rd[j], s);
        } else {
          for (int64_t j = 0; j < len; ++j)
            ro[j] = static_cast<scalar_t>(
                activation_diff(static_cast<int>(kind), static_cast<double>(ra[j]), static_cast<double>(rd[j]), slope));
        }
        i += len;
      }
    });
  });
  return out;
}

// Confined form: a (B, C, S), channels (K), delta (K, B, S) -> sigma(a[b, c_k] + d) - sigma(a[b, c_k]).
Tensor activation_difference_confined_cpu(const Tensor& a_in, const Tensor& channels_in, const Tensor& delta_in,
                                          int64_t kind, double slope) {
  checks::activation_confined(a_in, channels_in, delta_in, kind);
  auto channels = channels_in.to(at::kLong).contiguous();
  auto a = a_in.contiguous();
  auto delta = delta_in.contiguous();
  const int64_t B = a.size(0), C = a.size(1), S = a.size(2), K = delta.size(0);
  auto out = at::empty_like(delta);
  const int64_t* pc = channels.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(delta.scalar_type(), "activation_difference_confined", [&] {
    const scalar_t* pa = a.data_ptr<scalar_t>();
    const scalar_t* pd = delta.data_ptr<scalar_t>();
    scalar_t* po = out.data_ptr<scalar_t>();
    const scalar_t sl = static_cast<scalar_t>(slope);
    at::parallel_for(0, K * B, 16, [&](int64_t lo, int64_t hi) {
      for (int64_t kb = lo; kb < hi; ++kb) {
        const int64_t k = kb / B, b = kb % B, c = pc[k];
        const scalar_t* row_a = pa + (b * C + c) * S;
        if (is_piecewise_linear(static_cast<int>(kind))) {
          for (int64_t s = 0; s < S; ++s)
            po[kb * S + s] = piecewise_linear_diff<scalar_t>(row_a[s], pd[kb * S + s], sl);
          continue;
        }
        for (int64_t s = 0; s < S; ++s) {
          po[kb * S + s] = static_cast<scalar_t>(
              activation_diff(kind, static_cast<double>(row_a[s]), static_cast<double>(pd[kb * S + s]), slope));
        }
      }
    });
  });
  return out;
}

// Train-mode BatchNorm of x = base + d per copy minus BatchNorm of base, one channel:
// x, base are strided views given by (ptr, stride_b, stride_s). Statistics over (B, S).
template <typename scalar_t>
void bn_channel_difference(const scalar_t* base, int64_t base_sb, const scalar_t* d, int64_t d_sb, scalar_t* out,
                           int64_t B, int64_t S, double gamma, double beta, double eps) {
  double m0 = 0, m1 = 0;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t s = 0; s < S; ++s) {
      const double x0 = base[b * base_sb + s];
      m0 += x0;
      m1 += x0 + static_cast<double>(d[b * d_sb + s]);
    }
  const double count = static_cast<double>(B * S);
  m0 /= count;
  m1 /= count;
  double v0 = 0, v1 = 0;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t s = 0; s < S; ++s) {
      const double x0 = base[b * base_sb + s];
      const double x1 = x0 + static_cast<double>(d[b * d_sb + s]);
      v0 += (x0 - m0) * (x0 - m0);
      v1 += (x1 - m1) * (x1 - m1);
    }
  const double r0 = gamma / std::sqrt(v0 / count + eps), r1 = gamma / std::sqrt(v1 / count + eps);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t s = 0; s < S; ++s) {
      const double x0 = base[b * base_sb + s];
      const double x1 = x0 + static_cast<double>(d[b * d_sb + s]);
      out[b * d_sb + s] = static_cast<scalar_t>((x1 - m1) * r1 - (x0 - m0) * r0);  // beta cancels
    }
  (void)beta;
}

double affine_at(const Tensor& t, int64_t c, double fallback) {
  return t.defined() && t.numel() > 0 ? t.data_ptr<double>()[c] : fallback;
}

// Per-copy train-mode BatchNorm difference. a (B, C, S); delta dense (K, B, C, S) or, with
// channels (K), confined (K, B, S). weight/bias (C) may be empty (no affine).
Tensor batchnorm_difference_cpu(const Tensor& a_in, const Tensor& delta_in, const Tensor& channels_in,
                                const Tensor& weight_in, const Tensor& bias_in, double eps) {
  const bool confined = checks::batchnorm(a_in, delta_in, channels_in, weight_in, bias_in);
  auto channels = channels_in.to(at::kLong).contiguous();
  auto a = a_in.contiguous();
  auto delta = delta_in.contiguous();
  const int64_t B = a.size(0), C = a.size(1), S = a.size(2), K = delta.size(0);
  auto weight = weight_in.numel() ? weight_in.to(at::kDouble).contiguous() : weight_in;
  auto bias = bias_in.numel() ? bias_in.to(at::kDouble).contiguous() : bias_in;
  auto out = at::empty_like(delta);
  AT_DISPATCH_FLOATING_TYPES(delta.scalar_type(), "batchnorm_difference", [&] {
    const scalar_t* pa = a.data_ptr<scalar_t>();
    const scalar_t* pd = delta.data_ptr<scalar_t>();
    scalar_t* po = out.data_ptr<scalar_t>();
    if (confined) {
      const int64_t* pc = channels.data_ptr<int64_t>();
      at::parallel_for(0, K, 1, [&](int64_t lo, int64_t hi) {
        for (int64_t k = lo; k < hi; ++k) {
          const int64_t c = pc[k];
          bn_channel_difference<scalar_t>(pa + c * S, C * S, pd + k * B * S, S, po + k * B * S, B, S,
                                          affine_at(weight, c, 1.0), affine_at(bias, c, 0.0), eps);
        }
      });
    } else {
      at::parallel_for(0, K * C, 1, [&](int64_t lo, int64_t hi) {
        for (int64_t kc = lo; kc < hi; ++kc) {
          const int64_t k = kc / C, c = kc % C;
          const int64_t off = k * B * C * S + c * S;
          bn_channel_difference<scalar_t>(pa + c * S, C * S, pd + off, C * S, po + off, B, S, affine_at(weight, c, 1.0),
                                          affine_at(bias, c, 0.0), eps);
        }
      });
    }
  });
  return out;
}

// Softmax of logits (B, C) in double.
std::vector<double> softmax_rows(const Tensor& logits) {
  auto z = logits.to(at::kDouble).contiguous();
  const int64_t B = z.size(0), C = z.size(1);
  std::vector<double> p(B * C);
  const double* pz = z.data_ptr<double>();
  for (int64_t b = 0; b < B; ++b) {
    double m = pz[b * C];
    for (int64_t j = 1; j < C; ++j) m = std::max(m, pz[b * C + j]);
    double s = 0;
    for (int64_t j = 0; j < C; ++j) s += (p[b * C + j] = std::exp(pz[b * C + j] - m));
    for (int64_t j = 0; j < C; ++j) p[b * C + j] /= s;
  }
  return p;
}

// CE(z + d_k) - CE(z), mean over the batch, for every copy k (double). Dense delta (K, B, C);
// confined delta (K, B) with channels (K): copy k moves logit c_k only.
Tensor cross_entropy_difference_cpu(const Tensor& logits, const Tensor& targets_in, const Tensor& delta_in,
                                    const Tensor& channels_in) {
  const bool confined = checks::cross_entropy(logits, targets_in, delta_in, channels_in);
  auto channels = channels_in.to(at::kLong).contiguous();
  const int64_t B = logits.size(0), C = logits.size(1);
  auto targets = targets_in.to(at::kLong).contiguous();
  auto delta = delta_in.to(at::kDouble).contiguous();
  const int64_t K = delta.size(0);
  const std::vector<double> p = softmax_rows(logits);
  const int64_t* py = targets.data_ptr<int64_t>();
  const double* pd = delta.data_ptr<double>();
  const int64_t* pc = channels.data_ptr<int64_t>();
  auto out = at::empty({K}, logits.options().dtype(at::kDouble));
  double* po = out.data_ptr<double>();
  at::parallel_for(0, K, 4, [&](int64_t lo, int64_t hi) {
    for (int64_t k = lo; k < hi; ++k) {
      double acc = 0;
      for (int64_t b = 0; b < B; ++b) {
        const int64_t y = py[b];
        if (confined) {
          const double d = pd[k * B + b];
          acc += log_mix1(p[b * C + pc[k]], d) - (y == pc[k] ? d : 0.0);
        } else {
          const double* row = pd + (k * B + b) * C;
          double s = 0;
          for (int64_t j = 0; j < C; ++j) s += p[b * C + j] * expm1_small(row[j]);
          acc += log1p_small(s) - row[y];
        }
      }
      po[k] = acc / static_cast<double>(B);
    }
  });
  return out;
}

// Closed-form head: for the last Linear (logits = x W^T + b), weight coordinate (o, i) moved
// by mu changes logit o by mu * x[b, i]; its CE difference is O(B). Returns (O, I + bias).
Tensor head_cross_entropy_difference_cpu(const Tensor& x_in, const Tensor& logits, const Tensor& targets_in, double mu,
                                         bool with_bias) {
  checks::head(x_in, logits, targets_in);
  auto x = x_in.to(at::kDouble).contiguous();
  auto targets = targets_in.to(at::kLong).contiguous();
  const int64_t B = x.size(0), I = x.size(1), O = logits.size(1), cols = I + (with_bias ? 1 : 0);
  const std::vector<double> p = softmax_rows(logits);
  const double* px = x.data_ptr<double>();
  const int64_t* py = targets.data_ptr<int64_t>();
  auto out = at::empty({O, cols}, logits.options().dtype(at::kDouble));
  double* po = out.data_ptr<double>();
  at::parallel_for(0, O * cols, 64, [&](int64_t lo, int64_t hi) {
    for (int64_t oi = lo; oi < hi; ++oi) {
      const int64_t o = oi / cols, i = oi % cols;
      double acc = 0;
      for (int64_t b = 0; b < B; ++b) {
        const double d = mu * (i < I ? px[b * I + i] : 1.0);
        acc += log_mix1(p[b * O + o], d) - (py[b] == o ? d : 0.0);
      }
      po[oi] = acc / static_cast<double>(B);
    }
  });
  return out;
}

// For Conv2d weight coordinates (c_k, i_k, j_k): the input values multiplying them at every
// output position, (K, B, h, w) -- the perturbed channel's change divided by mu.
Tensor conv_weight_patches_cpu(const Tensor& x_in, const Tensor& c_in, const Tensor& i_in, const Tensor& j_in,
                               int64_t out_h, int64_t out_w, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh,
                               int64_t dw) {
  checks::patches(x_in, c_in, i_in, j_in, out_h, out_w, sh, sw, ph, pw, dh, dw);
  auto c = c_in.to(at::kLong).contiguous(), ki = i_in.to(at::kLong).contiguous(), kj = j_in.to(at::kLong).contiguous();
  auto x = x_in.contiguous();
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), K = c.numel();
  auto out = at::empty({K, B, out_h, out_w}, x.options());
  const int64_t *pc = c.data_ptr<int64_t>(), *pi = ki.data_ptr<int64_t>(), *pj = kj.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv_weight_patches", [&] {
    const scalar_t* px = x.data_ptr<scalar_t>();
    scalar_t* po = out.data_ptr<scalar_t>();
    at::parallel_for(0, K * B, 16, [&](int64_t lo, int64_t hi) {
      for (int64_t kb = lo; kb < hi; ++kb) {
        const int64_t k = kb / B, b = kb % B;
        const scalar_t* plane = px + (b * C + pc[k]) * H * W;
        scalar_t* dst = po + kb * out_h * out_w;
        for (int64_t y = 0; y < out_h; ++y) {
          const int64_t iy = y * sh - ph + pi[k] * dh;
          for (int64_t z = 0; z < out_w; ++z) {
            const int64_t ix = z * sw - pw + pj[k] * dw;
            dst[y * out_w + z] = (iy >= 0 && iy < H && ix >= 0 && ix < W) ? plane[iy * W + ix] : scalar_t(0);
          }
        }
      }
    });
  });
  return out;
}

// grad[indices[k]] += coeffs[k] * scale (in place; repeated indices accumulate).
Tensor scatter_scaled_add_cpu(Tensor grad, const Tensor& indices_in, const Tensor& coeffs_in, double scale) {
  checks::scatter(grad, indices_in, coeffs_in);
  auto indices = indices_in.to(at::kLong).contiguous();
  auto coeffs = coeffs_in.to(at::kDouble).contiguous();
  const int64_t* pi = indices.data_ptr<int64_t>();
  const double* pcf = coeffs.data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "scatter_scaled_add", [&] {
    scalar_t* pg = grad.data_ptr<scalar_t>();
    for (int64_t k = 0; k < indices.numel(); ++k) {
      pg[pi[k]] = static_cast<scalar_t>(static_cast<double>(pg[pi[k]]) + pcf[k] * scale);
    }
  });
  return grad;
}

// -- exact Rademacher involutions (zeroth_exact.h; host loops in zeroth_exact_cpu.cpp) ---------
exact_cpu::Dtype exact_dtype(const Tensor& x) {
  switch (x.scalar_type()) {
    case at::kHalf:
      return exact_cpu::Dtype::kHalf;
    case at::kBFloat16:
      return exact_cpu::Dtype::kBFloat16;
    case at::kFloat:
      return exact_cpu::Dtype::kFloat;
    default:
      return exact_cpu::Dtype::kDouble;  // the checks admit these four only
  }
}

constexpr int64_t kExactGrain = 1 << 14;  // entries per parallel_for task (a multiple of 64)

// Moves M (rows of words, one sign each), applied one after the other to every entry; each entry
// is read and written once.
Tensor rademacher_involution_cpu(Tensor x, const Tensor& words, c10::ArrayRef<double> signs, double a) {
  checks::rademacher_involution(x, words, signs, a);
  const int64_t n = x.numel();
  if (n == 0 || signs.empty()) return x;
  const exact_cpu::Dtype dt = exact_dtype(x);
  void* px = x.data_ptr();
  const int64_t* pw = words.data_ptr<int64_t>();
  const int64_t stride = words.size(1), blocks = (n + 63) / 64;
  at::parallel_for(0, blocks, kExactGrain / 64, [&](int64_t lo, int64_t hi) {
    exact_cpu::involution_range(dt, px, n, lo, hi, pw, stride, signs.data(), static_cast<int64_t>(signs.size()), a);
  });
  return x;
}

// Undo the moves, then x <- x·decay + scale·Σ_k w_k D_k(x)/a (W, rounded once), values below 2a
// onto the lattice Q: the restore and MeZO's SGD update in one pass.
Tensor rademacher_sgd_cpu(Tensor x, const Tensor& undo_words, c10::ArrayRef<double> undo_signs, const Tensor& words,
                          c10::ArrayRef<double> weights, double a, double scale, double decay, bool antithetic) {
  checks::rademacher_sgd(x, undo_words, undo_signs, words, weights, a);
  const int64_t n = x.numel();
  if (n == 0) return x;
  exact_cpu::SgdArgs args;
  args.undo_words = undo_signs.empty() ? nullptr : undo_words.data_ptr<int64_t>();
  args.undo_stride = undo_words.size(1);
  args.undo_signs = undo_signs.data();
  args.num_undo = static_cast<int64_t>(undo_signs.size());
  args.words = weights.empty() ? nullptr : words.data_ptr<int64_t>();
  args.stride = words.size(1);
  args.weights = weights.data();
  args.num_directions = static_cast<int64_t>(weights.size());
  args.a = a;
  args.scale = scale;
  args.decay = decay;
  args.antithetic = antithetic;
  const exact_cpu::Dtype dt = exact_dtype(x);
  void* px = x.data_ptr();
  at::parallel_for(0, (n + 63) / 64, kExactGrain / 64,
                   [&](int64_t lo, int64_t hi) { exact_cpu::sgd_range(dt, px, n, lo, hi, args); });
  return x;
}

}  // namespace

TORCH_LIBRARY(zeroth, m) {
  m.def("activation_difference(Tensor a, Tensor delta, int kind, float slope) -> Tensor");
  m.def("activation_difference_confined(Tensor a, Tensor channels, Tensor delta, int kind, float slope) -> Tensor");
  m.def(
      "batchnorm_difference(Tensor a, Tensor delta, Tensor channels, Tensor weight, Tensor bias, float eps) -> Tensor");
  m.def("cross_entropy_difference(Tensor logits, Tensor targets, Tensor delta, Tensor channels) -> Tensor");
  m.def("head_cross_entropy_difference(Tensor x, Tensor logits, Tensor targets, float mu, bool with_bias) -> Tensor");
  m.def(
      "conv_weight_patches(Tensor x, Tensor c, Tensor i, Tensor j, int out_h, int out_w, int sh, int sw, int ph, "
      "int pw, int dh, int dw) -> Tensor");
  m.def("scatter_scaled_add(Tensor(a!) grad, Tensor indices, Tensor coeffs, float scale) -> Tensor(a!)");
  m.def("rademacher_involution_(Tensor(a!) x, Tensor words, float[] signs, float a) -> Tensor(a!)");
  m.def(
      "rademacher_sgd_(Tensor(a!) x, Tensor undo_words, float[] undo_signs, Tensor words, float[] weights, float a, "
      "float scale, float decay, bool antithetic) -> Tensor(a!)");
}

TORCH_LIBRARY_IMPL(zeroth, CPU, m) {
  m.impl("activation_difference", &activation_difference_cpu);
  m.impl("activation_difference_confined", &activation_difference_confined_cpu);
  m.impl("batchnorm_difference", &batchnorm_difference_cpu);
  m.impl("cross_entropy_difference", &cross_entropy_difference_cpu);
  m.impl("head_cross_entropy_difference", &head_cross_entropy_difference_cpu);
  m.impl("conv_weight_patches", &conv_weight_patches_cpu);
  m.impl("scatter_scaled_add", &scatter_scaled_add_cpu);
  m.impl("rademacher_involution_", &rademacher_involution_cpu);
  m.impl("rademacher_sgd_", &rademacher_sgd_cpu);
}

}  // namespace zeroth
