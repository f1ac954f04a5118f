// Argument checks shared by the CPU (zeroth_ops.cpp) and CUDA (cuda/zeroth_ops_cuda.cu)
// implementations: one place states each op's shapes, before any kernel reads memory.
#pragma once

#include <ATen/ATen.h>

#include "zeroth_math.h"

namespace zeroth {
namespace checks {

// Every entry of the integer tensor idx lies in [0, n). (On CUDA this reads back two numbers.)
inline void in_range(const at::Tensor& idx, int64_t n, const char* message) {
  if (idx.numel() == 0) return;
  auto bounds = at::aminmax(idx);
  TORCH_CHECK(std::get<0>(bounds).item<int64_t>() >= 0 && std::get<1>(bounds).item<int64_t>() < n, message);
}

inline void activation_kind(int64_t kind, const char* op) {
  TORCH_CHECK(kind >= 0 && kind < kNumActivations, op, ": unknown kind ", kind);
}

inline void activation(const at::Tensor& a, const at::Tensor& delta, int64_t kind) {
  activation_kind(kind, "activation_difference");
  TORCH_CHECK(a.numel() > 0 && delta.numel() % a.numel() == 0, "activation_difference: delta must be K copies of a");
}

// a (B, C, S), channels (K) long, delta (K, B, S).
inline void activation_confined(const at::Tensor& a, const at::Tensor& channels, const at::Tensor& delta,
                                int64_t kind) {
  activation_kind(kind, "activation_difference_confined");
  TORCH_CHECK(a.dim() == 3 && delta.dim() == 3, "activation_difference_confined: a (B, C, S), delta (K, B, S)");
  TORCH_CHECK(delta.size(1) == a.size(0) && delta.size(2) == a.size(2) && channels.numel() == delta.size(0),
              "activation_difference_confined: shapes do not match");
  in_range(channels, a.size(1), "activation_difference_confined: channel out of range");
}

// Returns true for the confined form: delta (K, B, S) with channels (K) long; else (K, B, C, S).
inline bool batchnorm(const at::Tensor& a, const at::Tensor& delta, const at::Tensor& channels) {
  TORCH_CHECK(a.dim() == 3, "batchnorm_difference: a must be (B, C, S)");
  const int64_t B = a.size(0), C = a.size(1), S = a.size(2);
  const bool confined = channels.numel() > 0 || delta.dim() == 3;
  if (confined) {
    TORCH_CHECK(delta.dim() == 3 && delta.size(1) == B && delta.size(2) == S && channels.numel() == delta.size(0),
                "batchnorm_difference: confined delta must be (K, B, S) with K channels");
    in_range(channels, C, "batchnorm_difference: channel out of range");
  } else {
    TORCH_CHECK(delta.dim() == 4 && delta.size(1) == B && delta.size(2) == C && delta.size(3) == S,
                "batchnorm_difference: dense delta must be (K, B, C, S)");
  }
  return confined;
}

// Returns true for the confined form: delta (K, B) with channels (K) long; else (K, B, C).
inline bool cross_entropy(const at::Tensor& logits, const at::Tensor& delta, const at::Tensor& channels) {
  TORCH_CHECK(logits.dim() == 2, "cross_entropy_difference: logits must be (B, C)");
  const int64_t B = logits.size(0), C = logits.size(1);
  const bool confined = channels.numel() > 0;
  TORCH_CHECK(confined ? (delta.dim() == 2 && delta.size(1) == B && channels.numel() == delta.size(0))
                       : (delta.dim() == 3 && delta.size(1) == B && delta.size(2) == C),
              "cross_entropy_difference: delta must be (K, B, C), or (K, B) with K channels");
  in_range(channels, C, "cross_entropy_difference: channel out of range");
  return confined;
}

inline void head(const at::Tensor& x, const at::Tensor& logits) {
  TORCH_CHECK(x.dim() == 2 && logits.dim() == 2 && x.size(0) == logits.size(0),
              "head_cross_entropy_difference: x (B, I) and logits (B, O)");
}

inline void patches(const at::Tensor& x, const at::Tensor& c) {
  TORCH_CHECK(x.dim() == 4, "conv_weight_patches: x must be (B, C, H, W)");
  in_range(c, x.size(1), "conv_weight_patches: channel out of range");
}

inline void scatter(const at::Tensor& grad, const at::Tensor& indices, const at::Tensor& coeffs) {
  TORCH_CHECK(grad.dim() == 1 && grad.is_contiguous(), "scatter_scaled_add: grad must be flat and contiguous");
  TORCH_CHECK(indices.numel() == coeffs.numel(), "scatter_scaled_add: one coefficient per index");
  in_range(indices, grad.numel(), "scatter_scaled_add: index out of range");
}

}  // namespace checks
}  // namespace zeroth
