// Argument checks shared by the CPU (zeroth_ops.cpp) and CUDA (cuda/zeroth_ops_cuda.cu)
// implementations: one function per op states its devices, dtypes, shapes and index ranges,
// and runs before any kernel reads memory. zeroth/ops/_checks.py mirrors each one for the
// PyTorch references (same exception type, same message), and tests/ops compares the two.
//
// Exception types, as Python sees them:
//   TypeError  (TORCH_CHECK_TYPE)  - a dtype the op does not take (e.g. bfloat16 into a kernel
//                                    that dispatches float32/float64 only: the caller declines);
//   IndexError (TORCH_CHECK_INDEX) - an index/target/channel outside its range;
//   ValueError (TORCH_CHECK_VALUE) - shapes, lengths, devices, or an unknown activation kind.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <initializer_list>
#include <sstream>
#include <string>

#include "zeroth_math.h"

namespace zeroth {
namespace checks {

// A tensor argument with its name in the op's schema (for the messages).
struct Arg {
  const at::Tensor& t;
  const char* name;
};

// Python's spelling of a dtype ("torch.float32"), so messages read the same from both sides.
inline std::string dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return "torch.float32";
    case at::kDouble:
      return "torch.float64";
    case at::kHalf:
      return "torch.float16";
    case at::kBFloat16:
      return "torch.bfloat16";
    case at::kLong:
      return "torch.int64";
    case at::kInt:
      return "torch.int32";
    case at::kShort:
      return "torch.int16";
    case at::kChar:
      return "torch.int8";
    case at::kByte:
      return "torch.uint8";
    case at::kBool:
      return "torch.bool";
    case at::kComplexFloat:
      return "torch.complex64";
    case at::kComplexDouble:
      return "torch.complex128";
    default:
      return std::string("torch.") + c10::toString(t);
  }
}

inline std::string device_name(const at::Device& d) {
  std::ostringstream s;
  s << d;
  return s.str();
}

// Every tensor on the device of the first one.
inline void same_device(const char* op, std::initializer_list<Arg> args) {
  const Arg* first = nullptr;
  for (const Arg& a : args) {
    if (first == nullptr) {
      first = &a;
      continue;
    }
    TORCH_CHECK_VALUE(a.t.device() == first->t.device(), op, ": ", a.name, " is on ", device_name(a.t.device()),
                      " but ", first->name, " is on ", device_name(first->t.device()),
                      " (all tensors must be on one device)");
  }
}

// float32 or float64: the dtypes the kernels dispatch.
inline void floating(const char* op, const Arg& a) {
  const auto st = a.t.scalar_type();
  TORCH_CHECK_TYPE(st == at::kFloat || st == at::kDouble, op, ": ", a.name, " must be torch.float32 or torch.float64",
                   " (got ", dtype_name(st), ")");
}

inline void same_dtype(const char* op, const Arg& a, const Arg& b) {
  TORCH_CHECK_TYPE(a.t.scalar_type() == b.t.scalar_type(), op, ": ", b.name, " must have the dtype of ", a.name, " (",
                   dtype_name(a.t.scalar_type()), "; got ", dtype_name(b.t.scalar_type()), ")");
}

// An integer index tensor (any integer dtype; bool is not one).
inline void integral(const char* op, const Arg& a) {
  TORCH_CHECK_TYPE(at::isIntegralType(a.t.scalar_type(), /*includeBool=*/false), op, ": ", a.name,
                   " must be an integer tensor (got ", dtype_name(a.t.scalar_type()), ")");
}

inline void dims(const char* op, const Arg& a, int64_t n, const char* shape) {
  TORCH_CHECK_VALUE(a.t.dim() == n, op, ": ", a.name, " must be ", shape, " (got ", a.t.dim(), " dimensions)");
}

// Every entry of the integer tensor lies in [0, n). (On CUDA this reads back two numbers.)
inline void in_range(const char* op, const Arg& a, int64_t n, const char* hint = "") {
  if (a.t.numel() == 0) return;
  auto bounds = at::aminmax(a.t);
  const int64_t lo = std::get<0>(bounds).item<int64_t>(), hi = std::get<1>(bounds).item<int64_t>();
  TORCH_CHECK_INDEX(lo >= 0 && hi < n, op, ": ", a.name, " out of range: entries must lie in [0, ", n, "), got [", lo,
                    ", ", hi, "]", hint);
}

inline void activation_kind(const char* op, int64_t kind) {
  TORCH_CHECK_VALUE(kind >= 0 && kind < kNumActivations, op, ": unknown activation kind ", kind, " (expected 0 to ",
                    kNumActivations - 1, ")");
}

// a (any shape), delta (K, *a.shape): same device, same float dtype.
inline void activation(const at::Tensor& a, const at::Tensor& delta, int64_t kind) {
  const char* op = "activation_difference";
  same_device(op, {{a, "a"}, {delta, "delta"}});
  floating(op, {a, "a"});
  same_dtype(op, {a, "a"}, {delta, "delta"});
  activation_kind(op, kind);
  TORCH_CHECK_VALUE(delta.dim() == a.dim() + 1 && delta.sizes().slice(1) == a.sizes(), op,
                    ": delta must be (K, *a.shape) (a ", a.sizes(), ", delta ", delta.sizes(), ")");
}

// a (B, C, S), channels (K) integer in [0, C), delta (K, B, S).
inline void activation_confined(const at::Tensor& a, const at::Tensor& channels, const at::Tensor& delta,
                                int64_t kind) {
  const char* op = "activation_difference_confined";
  same_device(op, {{a, "a"}, {channels, "channels"}, {delta, "delta"}});
  floating(op, {a, "a"});
  same_dtype(op, {a, "a"}, {delta, "delta"});
  integral(op, {channels, "channels"});
  activation_kind(op, kind);
  dims(op, {a, "a"}, 3, "(B, C, S)");
  dims(op, {channels, "channels"}, 1, "(K,)");
  dims(op, {delta, "delta"}, 3, "(K, B, S)");
  TORCH_CHECK_VALUE(delta.size(0) == channels.size(0) && delta.size(1) == a.size(0) && delta.size(2) == a.size(2), op,
                    ": delta must be (K, B, S) with K = len(channels) (a ", a.sizes(), ", channels ", channels.sizes(),
                    ", delta ", delta.sizes(), ")");
  in_range(op, {channels, "channels"}, a.size(1));
}

// a (B, C, S); delta dense (K, B, C, S), or confined (K, B, S) with channels (K) integer in
// [0, C); weight, bias (C) or empty. Returns true for the confined form.
inline bool batchnorm(const at::Tensor& a, const at::Tensor& delta, const at::Tensor& channels,
                      const at::Tensor& weight, const at::Tensor& bias) {
  const char* op = "batchnorm_difference";
  same_device(op, {{a, "a"}, {delta, "delta"}, {channels, "channels"}, {weight, "weight"}, {bias, "bias"}});
  floating(op, {a, "a"});
  same_dtype(op, {a, "a"}, {delta, "delta"});
  integral(op, {channels, "channels"});
  dims(op, {a, "a"}, 3, "(B, C, S)");
  const int64_t B = a.size(0), C = a.size(1), S = a.size(2);
  for (const Arg& p : {Arg{weight, "weight"}, Arg{bias, "bias"}}) {
    if (p.t.numel() == 0) continue;
    floating(op, p);
    TORCH_CHECK_VALUE(p.t.dim() == 1 && p.t.size(0) == C, op, ": ", p.name, " must be (C,) with C = ", C,
                      " or empty (got ", p.t.sizes(), ")");
  }
  const bool confined = channels.numel() > 0 || delta.dim() == 3;
  if (confined) {
    dims(op, {channels, "channels"}, 1, "(K,)");
    TORCH_CHECK_VALUE(delta.dim() == 3 && delta.size(0) == channels.size(0) && delta.size(1) == B && delta.size(2) == S,
                      op, ": confined delta must be (K, B, S) with K = len(channels) (a ", a.sizes(), ", channels ",
                      channels.sizes(), ", delta ", delta.sizes(), ")");
    in_range(op, {channels, "channels"}, C);
  } else {
    TORCH_CHECK_VALUE(delta.dim() == 4 && delta.size(1) == B && delta.size(2) == C && delta.size(3) == S, op,
                      ": dense delta must be (K, B, C, S) (a ", a.sizes(), ", delta ", delta.sizes(), ")");
  }
  return confined;
}

// Class-index targets (B) in [0, C): probabilities and ignore_index are the caller's to decline.
inline void targets(const char* op, const at::Tensor& t, int64_t B, int64_t C) {
  integral(op, {t, "targets"});
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == B, op, ": targets must be (B,) class indices with B = ", B, " (got ",
                    t.sizes(), ")");
  in_range(op, {t, "targets"}, C, " (class indices; ignore_index and probability targets are not supported)");
}

// logits (B, C) and delta float (each read in float64), targets (B) integer in [0, C); delta dense (K, B, C), or (K, B)
// with channels (K) integer in [0, C). Returns true for the confined form.
inline bool cross_entropy(const at::Tensor& logits, const at::Tensor& targets_, const at::Tensor& delta,
                          const at::Tensor& channels) {
  const char* op = "cross_entropy_difference";
  same_device(op, {{logits, "logits"}, {targets_, "targets"}, {delta, "delta"}, {channels, "channels"}});
  floating(op, {logits, "logits"});
  floating(op, {delta, "delta"});
  integral(op, {channels, "channels"});
  dims(op, {logits, "logits"}, 2, "(B, C)");
  const int64_t B = logits.size(0), C = logits.size(1);
  targets(op, targets_, B, C);
  const bool confined = channels.numel() > 0;
  if (confined) {
    dims(op, {channels, "channels"}, 1, "(K,)");
    TORCH_CHECK_VALUE(delta.dim() == 2 && delta.size(0) == channels.size(0) && delta.size(1) == B, op,
                      ": delta must be (K, B) with K = len(channels) (logits ", logits.sizes(), ", channels ",
                      channels.sizes(), ", delta ", delta.sizes(), ")");
    in_range(op, {channels, "channels"}, C);
  } else {
    TORCH_CHECK_VALUE(delta.dim() == 3 && delta.size(1) == B && delta.size(2) == C, op,
                      ": delta must be (K, B, C) (logits ", logits.sizes(), ", delta ", delta.sizes(), ")");
  }
  return confined;
}

// x (B, I) and logits (B, O) float (each read in float64), targets (B) integer in [0, O).
inline void head(const at::Tensor& x, const at::Tensor& logits, const at::Tensor& targets_) {
  const char* op = "head_cross_entropy_difference";
  same_device(op, {{x, "x"}, {logits, "logits"}, {targets_, "targets"}});
  floating(op, {x, "x"});
  floating(op, {logits, "logits"});
  dims(op, {x, "x"}, 2, "(B, I)");
  dims(op, {logits, "logits"}, 2, "(B, O)");
  TORCH_CHECK_VALUE(x.size(0) == logits.size(0), op, ": x and logits must have one row per sample (x ", x.sizes(),
                    ", logits ", logits.sizes(), ")");
  targets(op, targets_, logits.size(0), logits.size(1));
}

// x (B, C, H, W) float; c, i, j (K) integers: channel c in [0, C), and each kernel offset keeps
// the receptive field inside the zero-padded input (true of every coordinate of a Conv2d whose
// output is out_h x out_w); strides and dilations >= 1, paddings and output sizes >= 0.
inline void patches(const at::Tensor& x, const at::Tensor& c, const at::Tensor& i, const at::Tensor& j, int64_t out_h,
                    int64_t out_w, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw) {
  const char* op = "conv_weight_patches";
  same_device(op, {{x, "x"}, {c, "c"}, {i, "i"}, {j, "j"}});
  floating(op, {x, "x"});
  for (const Arg& a : {Arg{c, "c"}, Arg{i, "i"}, Arg{j, "j"}}) {
    integral(op, a);
    dims(op, a, 1, "(K,)");
  }
  TORCH_CHECK_VALUE(c.size(0) == i.size(0) && c.size(0) == j.size(0), op, ": c, i and j must have equal lengths (got ",
                    c.size(0), ", ", i.size(0), ", ", j.size(0), ")");
  dims(op, {x, "x"}, 4, "(B, C, H, W)");
  TORCH_CHECK_VALUE(sh >= 1 && sw >= 1 && dh >= 1 && dw >= 1 && ph >= 0 && pw >= 0 && out_h >= 0 && out_w >= 0, op,
                    ": strides and dilations must be >= 1, paddings and output sizes >= 0");
  in_range(op, {c, "c"}, x.size(1));
  // row (out_h - 1) * sh + i * dh of the padded input must exist: i * dh < H + 2 ph - (out_h - 1) sh
  const int64_t rows = x.size(2) + 2 * ph - (out_h > 0 ? (out_h - 1) * sh : 0);
  const int64_t cols = x.size(3) + 2 * pw - (out_w > 0 ? (out_w - 1) * sw : 0);
  in_range(op, {i, "i"}, rows > 0 ? (rows - 1) / dh + 1 : 0, " (kernel row offsets for this input and output size)");
  in_range(op, {j, "j"}, cols > 0 ? (cols - 1) / dw + 1 : 0, " (kernel column offsets for this input and output size)");
}

// grad flat, contiguous, float; indices (K) integer in [0, numel); coeffs (K) float.
inline void scatter(const at::Tensor& grad, const at::Tensor& indices, const at::Tensor& coeffs) {
  const char* op = "scatter_scaled_add";
  same_device(op, {{grad, "grad"}, {indices, "indices"}, {coeffs, "coeffs"}});
  floating(op, {grad, "grad"});
  floating(op, {coeffs, "coeffs"});
  integral(op, {indices, "indices"});
  TORCH_CHECK_VALUE(grad.dim() == 1 && grad.is_contiguous(), op, ": grad must be flat (1-D) and contiguous");
  TORCH_CHECK_VALUE(indices.dim() == 1 && coeffs.dim() == 1 && indices.size(0) == coeffs.size(0), op,
                    ": indices and coeffs must be (K,) with one coefficient per index (got ", indices.sizes(), " and ",
                    coeffs.sizes(), ")");
  in_range(op, {indices, "indices"}, grad.numel());
}

// Exact Rademacher ops: x flat (1-D), contiguous, float16/bfloat16/float32/float64.
inline void exact_x(const char* op, const at::Tensor& x) {
  const auto st = x.scalar_type();
  TORCH_CHECK_TYPE(st == at::kHalf || st == at::kBFloat16 || st == at::kFloat || st == at::kDouble, op,
                   ": x must be torch.float16, torch.bfloat16, torch.float32 or torch.float64 (got ", dtype_name(st),
                   ")");
  TORCH_CHECK_VALUE(x.dim() == 1 && x.is_contiguous(), op, ": x must be flat (1-D) and contiguous");
}

// words: (count, W) int64, contiguous, on x's device, W >= ceil(x.numel() / 64) when count > 0.
inline void exact_words(const char* op, const at::Tensor& x, const at::Tensor& words, const char* name, int64_t count,
                        const char* per) {
  same_device(op, {{x, "x"}, {words, name}});
  TORCH_CHECK_TYPE(words.scalar_type() == at::kLong, op, ": ", name, " must be an int64 tensor of packed bits (got ",
                   dtype_name(words.scalar_type()), ")");
  const int64_t need = (x.numel() + 63) / 64;
  TORCH_CHECK_VALUE(
      words.dim() == 2 && words.size(0) == count && (count == 0 || words.size(1) >= need) && words.is_contiguous(), op,
      ": ", name, " must be a contiguous (", count, ", W) int64 tensor, one row per ", per,
      ", with W >= ceil(x.numel() / 64) = ", need, " (got ", words.sizes(), ")");
}

inline void exact_signs(const char* op, c10::ArrayRef<double> signs, const char* name) {
  for (size_t k = 0; k < signs.size(); ++k)
    TORCH_CHECK_VALUE(signs[k] == 1.0 || signs[k] == -1.0, op, ": ", name, " must be +1 or -1 (entry ", k, " is not)");
}

// a = 2^k with lo <= k <= hi for x's dtype: a and 2a are values of the dtype, 1/a is finite in its
// opmath, Q = ulp(2a) and 1/Q are finite in the wide type (zeroth/ops/_checks.py EXACT_STEP_EXPONENTS).
inline void exact_a(const char* op, double a, at::ScalarType st) {
  const int lo = st == at::kHalf ? -24 : st == at::kBFloat16 ? -121 : st == at::kFloat ? -127 : -972;
  const int hi = st == at::kHalf ? 14 : st == at::kDouble ? 1022 : 126;
  int exponent = 0;
  const bool pow2 = std::isfinite(a) && a > 0 && std::frexp(a, &exponent) == 0.5;
  TORCH_CHECK_VALUE(pow2 && lo <= exponent - 1 && exponent - 1 <= hi, op, ": a must be a power of two 2^k with ", lo,
                    " <= k <= ", hi, " for x of dtype ", dtype_name(st));
}

inline void rademacher_involution(const at::Tensor& x, const at::Tensor& words, c10::ArrayRef<double> signs, double a) {
  const char* op = "rademacher_involution_";
  exact_x(op, x);
  exact_words(op, x, words, "words", static_cast<int64_t>(signs.size()), "sign");
  exact_signs(op, signs, "signs");
  exact_a(op, a, x.scalar_type());
}

inline void rademacher_sgd(const at::Tensor& x, const at::Tensor& undo_words, c10::ArrayRef<double> undo_signs,
                           const at::Tensor& words, c10::ArrayRef<double> weights, double a) {
  const char* op = "rademacher_sgd_";
  exact_x(op, x);
  exact_words(op, x, undo_words, "undo_words", static_cast<int64_t>(undo_signs.size()), "undo sign");
  exact_signs(op, undo_signs, "undo_signs");
  exact_words(op, x, words, "words", static_cast<int64_t>(weights.size()), "weight");
  exact_a(op, a, x.scalar_type());
}

}  // namespace checks
}  // namespace zeroth
