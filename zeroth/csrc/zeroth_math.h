// Scalar math shared by the CPU (zeroth_ops.cpp) and CUDA (cuda/kernels.cu) kernels.
// Smooth functions are computed in double: the differences formed here are tiny next to their
// operands, so rounding a + d to float first would throw the difference away (the
// piecewise-linear activations have an exact form, piecewise_linear_diff).
#pragma once

#include <cmath>

#ifdef __CUDACC__
#define ZEROTH_HD __host__ __device__ __forceinline__
#else
#define ZEROTH_HD inline
#endif

namespace zeroth {

// The activation kinds of the kernels: the one definition of the enum shared by the CPU and CUDA
// code; zeroth.ops.Activation (zeroth/ops/activations.py) is its Python spelling, and
// tests/ops/test_checks.py fails when the two differ in a name or a value.
enum Activation { kReLU = 0, kLeakyReLU = 1, kGELU = 2, kSiLU = 3, kTanh = 4, kSigmoid = 5, kNumActivations = 6 };

ZEROTH_HD double activation(int kind, double x, double slope) {
  switch (kind) {
    case kReLU:
      return x > 0 ? x : 0.0;
    case kLeakyReLU:
      return x > 0 ? x : slope * x;
    case kGELU:
      return 0.5 * x * (1.0 + erf(x * 0.70710678118654752440));
    case kSiLU:
      return x / (1.0 + exp(-x));
    case kTanh:
      return tanh(x);
    default:
      return 1.0 / (1.0 + exp(-x));  // kSigmoid
  }
}

// sigma(a + d) - sigma(a), an exact finite difference (not a linearisation).
ZEROTH_HD double activation_diff(int kind, double a, double d, double slope) {
  return activation(kind, a + d, slope) - activation(kind, a, slope);
}

// The same difference for the piecewise-linear kinds (ReLU: slope 0, LeakyReLU), in the
// operands' own precision: on one side of 0 it is d or slope*d exactly, and crossing 0 needs
// |a| < |d|, so no term is larger than d and nothing cancels. a + d <= 0 is tested (not > 0)
// so that a NaN in d reaches the result.
// (Both branches are computed and then selected: no data-dependent jump, so loops vectorise.)
template <typename T>
ZEROTH_HD T piecewise_linear_diff(T a, T d, T slope) {
  const T x1 = a + d;
  const bool pos0 = a > T(0);
  const T down = pos0 ? slope * x1 - a : slope * d;  // a + d ends at or below 0
  const T up = pos0 ? d : x1 - slope * a;            // a + d ends above 0
  return x1 <= T(0) ? down : up;
}

ZEROTH_HD bool is_piecewise_linear(int kind) { return kind == kReLU || kind == kLeakyReLU; }

// expm1 and log1p of the small arguments finite differences produce, by their Taylor series
// (Horner), else the library call: for |x| <= 1/64 the first omitted term is below 1e-17 of
// the result, so this is the library value to double rounding at a fraction of its cost.
ZEROTH_HD double expm1_small(double d) {
  if (fabs(d) > 0.015625 || d != d) return expm1(d);
  return d *
         (1.0 + d * (1.0 / 2 + d * (1.0 / 6 + d * (1.0 / 24 + d * (1.0 / 120 + d * (1.0 / 720 + d * (1.0 / 5040)))))));
}

ZEROTH_HD double log1p_small(double s) {
  if (fabs(s) > 0.015625 || s != s) return log1p(s);
  return s *
         (1.0 -
          s * (1.0 / 2 -
               s * (1.0 / 3 -
                    s * (1.0 / 4 - s * (1.0 / 5 - s * (1.0 / 6 - s * (1.0 / 7 - s * (1.0 / 8 - s * (1.0 / 9)))))))));
}

// log(1 - p + p e^d) = log sum_j p_j e^{d_j} when only one logit (probability p) moves by d:
// the per-row cross-entropy change is this minus d (if that logit is the target).
ZEROTH_HD double log_mix1(double p, double d) {
  if (d < 30.0) return log1p_small(p * expm1_small(d));
  return d + log1p((1.0 - p) * expm1(-d));  // large d: no overflow of e^d
}

}  // namespace zeroth
