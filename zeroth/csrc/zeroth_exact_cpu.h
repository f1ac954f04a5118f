// Host loops of the exact Rademacher ops (zeroth_exact_cpu.cpp): torch-free, called by the
// bindings in zeroth_ops.cpp (which check the arguments and split the work over threads).
// Each function processes the 64-entry blocks [blk_lo, blk_hi) of a flat tensor of n entries
// (the last block may be short); word w of a row holds the random bits of block w.
#pragma once

#include <cstdint>

#include "zeroth_exact.h"  // exact::Dtype

namespace zeroth {
namespace exact_cpu {

using exact::Dtype;

// x <- S_{signs[M-1]·r_{M-1}}(... S_{signs[0]·r_0}(x)), r_m the bits of row m of words.
void involution_range(Dtype dtype, void* x, int64_t n, int64_t blk_lo, int64_t blk_hi, const int64_t* words,
                      int64_t stride, const double* signs, int64_t num_moves, double a);

struct SgdArgs {
  const int64_t* undo_words = nullptr;  // (num_undo, undo_stride)
  int64_t undo_stride = 0;
  const double* undo_signs = nullptr;
  int64_t num_undo = 0;
  const int64_t* words = nullptr;  // (num_directions, stride)
  int64_t stride = 0;
  const double* weights = nullptr;
  int64_t num_directions = 0;
  double a = 0, scale = 0, decay = 1;
  bool antithetic = true;
};

// Undo the moves, then x <- x·decay + scale·Σ_k w_k D_k(x)/a rounded once (values below 2a onto
// the lattice Q): zeroth_exact.h's update.
void sgd_range(Dtype dtype, void* x, int64_t n, int64_t blk_lo, int64_t blk_hi, const SgdArgs& args);

}  // namespace exact_cpu
}  // namespace zeroth
