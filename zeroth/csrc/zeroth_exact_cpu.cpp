// Host loops of the exact Rademacher ops (declared in zeroth_exact_cpu.h; per-entry math in
// zeroth_exact.h). Torch-free, so that they compile in a second and their vectorisation can be
// read alone (g++ -O3 -fopt-info-vec). Loops run over blocks of 64 entries -- one word of random
// bits, unpacked once into integers of the entries' width -- with branch-free, call-free bodies,
// and each entry point is cloned for AVX2 (picked at load time where the CPU has it) and for the
// baseline; IEEE arithmetic is the same in both (no contraction: -ffp-contract=off). 16-bit
// values are staged a block at a time into 32-bit lanes (the formats of zeroth_exact.h), so
// that every lane of a loop has one width.
#include "zeroth_exact_cpu.h"

#include <algorithm>
#include <type_traits>

namespace zeroth {
namespace exact_cpu {
namespace {

constexpr int kBlock = 64;

// bits[b] = bit b of the word (shifts of the lanes' own width, so the loops vectorise).
inline void unpack_word(int64_t word, int32_t* bits) {
  const uint32_t lo = static_cast<uint32_t>(static_cast<uint64_t>(word)),
                 hi = static_cast<uint32_t>(static_cast<uint64_t>(word) >> 32);
  for (uint32_t b = 0; b < 32; ++b) bits[b] = static_cast<int32_t>((lo >> b) & 1u);
  for (uint32_t b = 0; b < 32; ++b) bits[32 + b] = static_cast<int32_t>((hi >> b) & 1u);
}
inline void unpack_word(int64_t word, int64_t* bits) {
  const uint64_t w = static_cast<uint64_t>(word);
  for (uint64_t b = 0; b < 64; ++b) bits[b] = static_cast<int64_t>((w >> b) & 1u);
}

// A block in T lanes: the entries themselves, or (16-bit formats) a staged 32-bit copy.
template <class F>
struct Lanes {
  typename F::Storage* dst;
  int64_t len;
  alignas(64) typename F::T copy[kBlock];
  typename F::T* v;

  Lanes(typename F::Storage* x, int64_t n) : dst(x), len(n) {
    if constexpr (std::is_same<typename F::Storage, typename F::T>::value) {
      v = x;
    } else {
      for (int64_t b = 0; b < len; ++b) copy[b] = x[b];
      v = copy;
    }
  }
  void store() {
    if constexpr (!std::is_same<typename F::Storage, typename F::T>::value)
      for (int64_t b = 0; b < len; ++b) dst[b] = static_cast<typename F::Storage>(copy[b]);
  }
};

template <class F>
inline void involution_block(typename F::T* __restrict x, int64_t len, const exact::Involution<F> s,
                             const typename F::Int* __restrict bits) {
  for (int64_t b = 0; b < len; ++b) x[b] = exact::involution<F>(x[b], s, bits[b]);
}

template <class F>
inline void involution_loop(void* xv, int64_t n, int64_t blk_lo, int64_t blk_hi, const int64_t* words, int64_t stride,
                            const double* signs, int64_t num_moves, double a) {
  auto* x = static_cast<typename F::Storage*>(xv);
  alignas(64) typename F::Int bits[kBlock];
  for (int64_t blk = blk_lo; blk < blk_hi; ++blk) {
    const int64_t start = blk * kBlock;
    Lanes<F> lanes(x + start, std::min<int64_t>(kBlock, n - start));
    for (int64_t m = 0; m < num_moves; ++m) {  // the block stays in L1 between the moves
      unpack_word(words[m * stride + blk], bits);
      involution_block<F>(lanes.v, lanes.len, exact::Involution<F>(signs[m], a), bits);
    }
    lanes.store();
  }
}

template <class F, bool Antithetic>
inline void sgd_loop(void* xv, int64_t n, int64_t blk_lo, int64_t blk_hi, const SgdArgs& g) {
  using W = typename F::W;
  auto* x = static_cast<typename F::Storage*>(xv);
  const exact::Involution<F> plus(1.0, g.a), minus(-1.0, g.a);
  const exact::Update<F> upd(g.a, F::kPrecision, g.scale, g.decay);
  alignas(64) typename F::Int bits[kBlock];
  alignas(64) W total[kBlock];
  for (int64_t blk = blk_lo; blk < blk_hi; ++blk) {
    const int64_t start = blk * kBlock;
    Lanes<F> lanes(x + start, std::min<int64_t>(kBlock, n - start));
    typename F::T* __restrict xb = lanes.v;
    const int64_t len = lanes.len;
    for (int64_t m = 0; m < g.num_undo; ++m) {
      unpack_word(g.undo_words[m * g.undo_stride + blk], bits);
      involution_block<F>(xb, len, exact::Involution<F>(g.undo_signs[m], g.a), bits);
    }
    if (g.num_directions == 0) {
      for (int64_t b = 0; b < len; ++b) xb[b] = exact::update<F>(xb[b], upd, false, W(0));
      lanes.store();
      continue;
    }
    for (int64_t k = 0; k < g.num_directions; ++k) {
      unpack_word(g.words[k * g.stride + blk], bits);
      const W wk = static_cast<W>(g.weights[k]);  // a scalar operand is cast to W
      if (k == 0) {
        for (int64_t b = 0; b < len; ++b)
          total[b] = exact::mul_rn(exact::applied<F>(xb[b], plus, minus, bits[b], Antithetic), wk);
      } else {
        for (int64_t b = 0; b < len; ++b)
          total[b] =
              exact::add_rn(total[b], exact::mul_rn(exact::applied<F>(xb[b], plus, minus, bits[b], Antithetic), wk));
      }
    }
    for (int64_t b = 0; b < len; ++b) xb[b] = exact::update<F>(xb[b], upd, true, exact::mul_rn(total[b], upd.scale));
    lanes.store();
  }
}

template <class F>
inline void sgd_dispatch(void* x, int64_t n, int64_t lo, int64_t hi, const SgdArgs& g) {
  if (g.antithetic)
    sgd_loop<F, true>(x, n, lo, hi, g);
  else
    sgd_loop<F, false>(x, n, lo, hi, g);
}

}  // namespace

#if defined(__GNUC__) && !defined(__clang__) && (defined(__x86_64__) || defined(__i386__))
#define ZEROTH_CLONES __attribute__((flatten, target_clones("avx2", "default")))
#else
#define ZEROTH_CLONES
#endif

ZEROTH_CLONES void involution_range(Dtype dtype, void* x, int64_t n, int64_t blk_lo, int64_t blk_hi,
                                    const int64_t* words, int64_t stride, const double* signs, int64_t num_moves,
                                    double a) {
  switch (dtype) {
    case exact::Dtype::kHalf:
      return involution_loop<exact::HalfFormat>(x, n, blk_lo, blk_hi, words, stride, signs, num_moves, a);
    case exact::Dtype::kBFloat16:
      return involution_loop<exact::BFloat16Format>(x, n, blk_lo, blk_hi, words, stride, signs, num_moves, a);
    case exact::Dtype::kFloat:
      return involution_loop<exact::FloatFormat>(x, n, blk_lo, blk_hi, words, stride, signs, num_moves, a);
    case exact::Dtype::kDouble:
      return involution_loop<exact::DoubleFormat>(x, n, blk_lo, blk_hi, words, stride, signs, num_moves, a);
  }
}

ZEROTH_CLONES void sgd_range(Dtype dtype, void* x, int64_t n, int64_t blk_lo, int64_t blk_hi, const SgdArgs& args) {
  switch (dtype) {
    case exact::Dtype::kHalf:
      return sgd_dispatch<exact::HalfFormat>(x, n, blk_lo, blk_hi, args);
    case exact::Dtype::kBFloat16:
      return sgd_dispatch<exact::BFloat16Format>(x, n, blk_lo, blk_hi, args);
    case exact::Dtype::kFloat:
      return sgd_dispatch<exact::FloatFormat>(x, n, blk_lo, blk_hi, args);
    case exact::Dtype::kDouble:
      return sgd_dispatch<exact::DoubleFormat>(x, n, blk_lo, blk_hi, args);
  }
}

}  // namespace exact_cpu
}  // namespace zeroth
