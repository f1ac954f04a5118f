// Exact Rademacher involutions (zeroth/estimators/exact_perturbation.py): the per-entry math of
// the ops rademacher_involution_ and rademacher_sgd_, shared by the CPU (zeroth_ops.cpp) and
// CUDA (cuda/kernels.cu) kernels. Torch-free: each side supplies a number format F (below).
//
// The PyTorch reference (zeroth/ops/reference.py) computes the same chain of roundings one
// tensor op at a time, and the kernels reproduce every one of them, so the two agree bitwise:
//   * an op on tensors of dtype T computes in O = opmath(T) (float for float16/bfloat16/float32,
//     double for float64) and rounds to T; a Python scalar operand is first cast to O;
//   * the SGD update is formed in W (float for float16/bfloat16, double for float32/float64)
//     and rounded to T once;
//   * no fused multiply-add: a product is rounded before it is added (mul_rn/add_rn here, and
//     -ffp-contract=off for the host compiler, zeroth/ops/_build.py).
//
// A number format F (below) provides: types Storage (in memory), T (in a register: Storage, or a
// 16-bit pattern in 32 bits), O, W, Bits (T's bit pattern), Int (a signed integer of O's width, for
// the random bits); up(T) -> O, down(O) -> T and narrow(W) -> T (round to nearest even, as torch's
// conversions), widen(T) -> W, bits(T) -> Bits, flip_sign(T, Int k) (negated when k = 1), and
// kPrecision (significand bits).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "zeroth_math.h"  // ZEROTH_HD

namespace zeroth {
namespace exact {

#ifdef __CUDA_ARCH__
ZEROTH_HD float floor_(float v) { return floorf(v); }
ZEROTH_HD double floor_(double v) { return floor(v); }
ZEROTH_HD float round_even(float v) { return nearbyintf(v); }  // torch.round: halves to even
ZEROTH_HD double round_even(double v) { return nearbyint(v); }
#else
// floor and round-half-even without a library call, so that host loops vectorise; exact for every
// value (signed zeros, infinities and NaN included): below `big` (= 2^(digits-1), above which every
// value is an integer) |v| + big - big rounds |v| to an integer, halves to even (the default
// rounding mode; no -ffast-math, so the sum is not folded away).
template <typename R>
inline R round_even_host(R v, R big) {
  const R a = std::fabs(v);
  return a < big ? std::copysign((a + big) - big, v) : v;
}
template <typename R>
inline R floor_host(R v, R big) {
  const R t = round_even_host(v, big);
  return t > v ? t - R(1) : t;
}
inline float floor_(float v) { return floor_host(v, 8388608.0f); }
inline double floor_(double v) { return floor_host(v, 4503599627370496.0); }
inline float round_even(float v) { return round_even_host(v, 8388608.0f); }
inline double round_even(double v) { return round_even_host(v, 4503599627370496.0); }
#endif
ZEROTH_HD float abs_(float v) { return fabsf(v); }
ZEROTH_HD double abs_(double v) { return fabs(v); }
#ifdef __CUDA_ARCH__
ZEROTH_HD float mul_rn(float a, float b) { return __fmul_rn(a, b); }  // never contracted into an FMA
ZEROTH_HD double mul_rn(double a, double b) { return __dmul_rn(a, b); }
ZEROTH_HD float add_rn(float a, float b) { return __fadd_rn(a, b); }
ZEROTH_HD double add_rn(double a, double b) { return __dadd_rn(a, b); }
#else
ZEROTH_HD float mul_rn(float a, float b) { return a * b; }
ZEROTH_HD double mul_rn(double a, double b) { return a * b; }
ZEROTH_HD float add_rn(float a, float b) { return a + b; }
ZEROTH_HD double add_rn(double a, double b) { return a + b; }
#endif

// -- number formats ---------------------------------------------------------------------------
// The four dtypes (the code the bindings pass) and their significand bits.
enum class Dtype { kHalf = 0, kBFloat16 = 1, kFloat = 2, kDouble = 3 };

ZEROTH_HD uint32_t f32_bits(float v) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(v);
#else
  uint32_t b;
  std::memcpy(&b, &v, sizeof b);
  return b;
#endif
}
ZEROTH_HD float f32_from(uint32_t b) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(b);
#else
  float v;
  std::memcpy(&v, &b, sizeof v);
  return v;
#endif
}
ZEROTH_HD uint64_t f64_bits(double v) {
#ifdef __CUDA_ARCH__
  return static_cast<uint64_t>(__double_as_longlong(v));
#else
  uint64_t b;
  std::memcpy(&b, &v, sizeof b);
  return b;
#endif
}
ZEROTH_HD double f64_from(uint64_t b) {
#ifdef __CUDA_ARCH__
  return __longlong_as_double(static_cast<long long>(b));
#else
  double v;
  std::memcpy(&v, &b, sizeof v);
  return v;
#endif
}

struct FloatFormat {
  using Storage = float;
  using T = float;
  using O = float;
  using W = double;
  using Bits = uint32_t;
  using Int = int32_t;
  static constexpr int kPrecision = 24;
  ZEROTH_HD static O up(T v) { return v; }
  ZEROTH_HD static T down(O v) { return v; }
  ZEROTH_HD static W widen(T v) { return static_cast<W>(v); }
  ZEROTH_HD static T narrow(W v) { return static_cast<T>(v); }  // round to nearest even
  ZEROTH_HD static Bits bits(T v) { return f32_bits(v); }
  ZEROTH_HD static T flip_sign(T v, Int k) { return f32_from(f32_bits(v) ^ (static_cast<uint32_t>(k) << 31)); }
};

struct DoubleFormat {
  using Storage = double;
  using T = double;
  using O = double;
  using W = double;
  using Bits = uint64_t;
  using Int = int64_t;
  static constexpr int kPrecision = 53;
  ZEROTH_HD static O up(T v) { return v; }
  ZEROTH_HD static T down(O v) { return v; }
  ZEROTH_HD static W widen(T v) { return v; }
  ZEROTH_HD static T narrow(W v) { return v; }
  ZEROTH_HD static Bits bits(T v) { return f64_bits(v); }
  ZEROTH_HD static T flip_sign(T v, Int k) { return f64_from(f64_bits(v) ^ (static_cast<uint64_t>(k) << 63)); }
};

// All ones where the float with bits u is a NaN, else 0 (integer arithmetic, no compare: on the
// host a select on a NaN test is distributed into later comparisons and stops the vectoriser).
ZEROTH_HD uint32_t nan_mask(uint32_t u) { return 0u - ((0x7F800000u - (u & 0x7FFFFFFFu)) >> 31); }

// 16-bit formats: T is the bit pattern in a 32-bit lane (every lane of a host loop one width),
// converted as c10 converts on the host (what torch's .to() computes; torch's vectorised and
// CUDA conversions may give a NaN another payload, the one difference from the reference).
struct BFloat16Format {
  using Storage = uint16_t;
  using T = uint32_t;
  using O = float;
  using W = float;
  using Bits = uint32_t;
  using Int = int32_t;
  static constexpr int kPrecision = 8;
  ZEROTH_HD static O up(T v) { return f32_from(v << 16); }
  ZEROTH_HD static T down(O v) {  // c10::detail::round_to_nearest_even
    const uint32_t u = f32_bits(v);
    const uint32_t rounded = (u + ((u >> 16) & 1u) + 0x7FFFu) >> 16, nan = nan_mask(u);
    return (rounded & ~nan) | (0x7FC0u & nan);
  }
  ZEROTH_HD static W widen(T v) { return up(v); }
  ZEROTH_HD static T narrow(W v) { return down(v); }
  ZEROTH_HD static Bits bits(T v) { return v; }
  ZEROTH_HD static T flip_sign(T v, Int k) { return v ^ (static_cast<uint32_t>(k) << 15); }
};

struct HalfFormat {
  using Storage = uint16_t;
  using T = uint32_t;
  using O = float;
  using W = float;
  using Bits = uint32_t;
  using Int = int32_t;
  static constexpr int kPrecision = 11;
  ZEROTH_HD static O up(T h) {  // c10::detail::fp16_ieee_to_fp32_value, without selects
    const uint32_t w = h << 16;
    const uint32_t sign = w & 0x80000000u;
    const uint32_t two_w = w + w;
    const float normalized = f32_from((two_w >> 4) + (0xE0u << 23)) * f32_from(15u << 23);
    const float denormalized = f32_from((two_w >> 17) | (126u << 23)) - 0.5f;
    const uint32_t denormal = 0u - (((two_w >> 27) - 1u) >> 31);  // all ones where two_w < 2^27
    return f32_from(sign | (f32_bits(denormalized) & denormal) | (f32_bits(normalized) & ~denormal));
  }
  ZEROTH_HD static T down(O f) {  // c10::detail::fp16_ieee_from_fp32_value, without selects
    float base = (fabsf(f) * f32_from(239u << 23)) * f32_from(17u << 23);
    const uint32_t w = f32_bits(f);
    const uint32_t shl1_w = w + w;
    const uint32_t sign = w & 0x80000000u;
    const uint32_t bias0 = shl1_w & 0xFF000000u;
    const uint32_t bias = bias0 < 0x71000000u ? 0x71000000u : bias0;  // a max, not a select on a mask
    base = f32_from((bias >> 1) + 0x07800000u) + base;
    const uint32_t b = f32_bits(base);
    const uint32_t nonsign = ((b >> 13) & 0x00007C00u) + (b & 0x00000FFFu), nan = nan_mask(w);
    return (sign >> 16) | (0x7E00u & nan) | (nonsign & ~nan);
  }
  ZEROTH_HD static W widen(T v) { return up(v); }
  ZEROTH_HD static T narrow(W v) { return down(v); }
  ZEROTH_HD static Bits bits(T v) { return v; }
  ZEROTH_HD static T flip_sign(T v, Int k) { return v ^ (static_cast<uint32_t>(k) << 15); }
};

// -- the involutions and the update ------------------------------------------------------------
// One involution S_{sign·r} on one parameter: x -> x + step where that sum is exact (else x
// stays), step = -sign·a for k = 0 and +sign·a for k = 1, k = r-bit XOR parity(floor(x / a)).
// step0 is formed as the reference forms the k = 0 step (k.to(T).mul_(2·sign·a).sub_(sign·a));
// the k = 1 step is its negation (bitwise: a and 2a are values of T, zeroth/ops/_checks.py), chosen
// by flipping the sign bit (F::flip_sign) so that the loops stay free of selects on booleans.
template <class F>
struct Involution {
  typename F::T step0;
  typename F::O inv_a;

  ZEROTH_HD Involution(double sign, double a) {
    using O = typename F::O;
    const O two = static_cast<O>(2.0 * sign * a), one = static_cast<O>(sign * a);
    step0 = F::down(F::up(F::down(O(0) * two)) - one);
    inv_a = static_cast<O>(1.0 / a);
  }
};

// k = bit XOR (floor(x·(1/a)) is odd): x·(1/a) rounded to T (exact, a power of two, unless it
// overflows T), floored, and its parity read as floor(f/2) != f/2 (NaN counts as odd; an
// infinite or huge f as even: such values never have an exact partner, so k does not matter).
template <class F>
ZEROTH_HD typename F::Int unit_bit(typename F::T x, typename F::O inv_a, typename F::Int bit) {
  using O = typename F::O;
  using Int = typename F::Int;
  const O f = floor_(F::up(x) * inv_a);
  const O h = f * O(0.5);
  return (h != floor_(h) ? Int(1) : Int(0)) ^ bit;
}

// y = fl(x + step) and whether it is exact: fl(y - x) == step and fl(y - step) has x's bits
// (so -0.0, whose partner would come back as +0.0, never moves).
template <class F>
ZEROTH_HD bool partner(typename F::T x, typename F::T step, typename F::T& y) {
  y = F::down(F::up(x) + F::up(step));
  const bool forward = F::up(F::down(F::up(y) - F::up(x))) == F::up(step);
  const bool back = F::bits(F::down(F::up(y) - F::up(step))) == F::bits(x);
  return forward & back;  // both formed (no short circuit: the loops stay branch-free)
}

// x <- S(x): an involution (applying it twice gives x back bitwise).
template <class F>
ZEROTH_HD typename F::T involution(typename F::T x, const Involution<F>& s, typename F::Int bit) {
  const typename F::Int k = unit_bit<F>(x, s.inv_a, bit);
  typename F::T y;
  return partner<F>(x, F::flip_sign(s.step0, k), y) ? y : x;
}

// D/a at x (in W): the displacement actually applied, u = 2k - 1 times (ok+ + ok-)/2 (two-sided)
// or ok+ (one-sided), as the reference forms it (a signed zero where nothing moves).
template <class F>
ZEROTH_HD typename F::W applied(typename F::T x, const Involution<F>& plus, const Involution<F>& minus,
                                typename F::Int bit, bool antithetic) {
  using W = typename F::W;
  const typename F::Int k = unit_bit<F>(x, plus.inv_a, bit);
  typename F::T y;
  const W u = k ? W(1) : W(-1);  // selects, not int -> float conversions: the loops vectorise
  const W ok_plus = partner<F>(x, F::flip_sign(plus.step0, k), y) ? W(1) : W(0);
  if (!antithetic) return u * ok_plus;
  const W ok_minus = partner<F>(x, F::flip_sign(minus.step0, k), y) ? W(1) : W(0);
  return u * ((ok_plus + ok_minus) * W(0.5));
}

// The update's constants: decay = 1 - lr·wd (applied when != 1), 2a, and the lattice Q = ulp(2a)
// of T that values below 2a are rounded to.
template <class F>
struct Update {
  typename F::W decay, scale, two_a, q, inv_q;
  double a;
  bool has_decay;

  ZEROTH_HD Update(double a_, int precision_bits, double scale_, double decay_) : a(a_) {
    using W = typename F::W;
    const double q_ = a * ldexp(1.0, 2 - precision_bits);
    decay = static_cast<W>(decay_);
    has_decay = decay_ != 1.0;
    scale = static_cast<W>(scale_);
    two_a = static_cast<W>(2.0 * a);
    q = static_cast<W>(q_);
    inv_q = static_cast<W>(1.0 / q_);
  }
};

// x(1 - lr·wd) + step rounded once to T; a value below 2a (in W) goes to the nearest multiple of Q.
template <class F>
ZEROTH_HD typename F::T update(typename F::T x, const Update<F>& u, bool has_step, typename F::W step) {
  typename F::W xw = F::widen(x);
  xw = u.has_decay ? mul_rn(xw, u.decay) : xw;  // selected, not branched (x·1 would quieten a NaN)
  xw = has_step ? add_rn(xw, step) : xw;
  const typename F::W on_lattice = mul_rn(round_even(mul_rn(xw, u.inv_q)), u.q);
  return F::narrow(abs_(xw) < u.two_a ? on_lattice : xw);  // both formed, one selected: no branch
}

// Bit `t` of a row of packed words (bit b of word w is entry 64w + b).
ZEROTH_HD int64_t word_bit(const int64_t* row, int64_t t) {
  return static_cast<int64_t>((static_cast<uint64_t>(row[t >> 6]) >> (t & 63)) & 1u);
}

}  // namespace exact
}  // namespace zeroth
