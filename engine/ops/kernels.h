// Dispatch stubs of the ops whose CPU kernels live beside them in engine/ops/*.cpp (matmul,
// softmax, layer_norm, embedding, random, flash attention), declared here so a device backend can fill its slot
// (kernels/cuda/ops.cpp). The elementwise and reduction stubs are in elementwise.h.
// matmul.cpp declares MatmulKernel itself (the same alias; its stub links against this
// declaration, and a mismatch of the function type is a link error).
#pragma once

#include <cstdint>
#include <vector>

#include "engine/core/dispatch.h"
#include "engine/core/tensor.h"
#include "engine/ops.h"

namespace mt {

// a (..., M, K), b (..., K, N), out (batch..., M, N) contiguous.
using MatmulKernel = void(const Tensor& a, const Tensor& b, Tensor& out);
extern DispatchStub<MatmulKernel> matmul_kernel;

// activation(x w^T + bias) (rows, O) in one kernel: x (rows, in) contiguous, w (O, in), bias (O)
// or undefined, activation none or relu. Returns an undefined tensor, having allocated and
// launched nothing, where the backend has no fused kernel for these operands (the CPU never
// has: linear() then runs the composite).
using LinearKernel = Tensor(const Tensor& x, const Tensor& w, const Tensor& bias,
                            Activation activation);
extern DispatchStub<LinearKernel> linear_kernel;

// x contiguous (rows, D) viewed; out contiguous same shape.
using SoftmaxKernel = void(const Tensor& x, Tensor& out, bool log);
extern DispatchStub<SoftmaxKernel> softmax_kernel;

// x contiguous (rows, D); weight, bias contiguous (D) or undefined; out (rows, D).
using LayerNormKernel = void(const Tensor& x, const Tensor& weight, const Tensor& bias, int64_t D,
                             double eps, Tensor& out);
extern DispatchStub<LayerNormKernel> layer_norm_kernel;
// First-order backward in one pass over the rows: x, g contiguous (rows, D); weight (D) or
// undefined; dx (rows, D); dw, db (D) (undefined when not wanted). Used by layer_norm's
// backward when it is not recorded, and as the forward of layer_norm_input_grad (dx only), whose
// own backward is composed of other ops.
using LayerNormBackwardKernel = void(const Tensor& x, const Tensor& weight, const Tensor& g,
                                     int64_t D, double eps, Tensor& dx, Tensor& dw, Tensor& db);
extern DispatchStub<LayerNormBackwardKernel> layer_norm_backward_kernel;
// layer_norm_input_grad's backward when it is not recorded (layer norm's double backward), in one
// pass over the rows: x, g, v contiguous (rows, D), v the gradient arriving at the input
// gradient; weight (D) or undefined. Outputs, each undefined when not wanted: gx, gg (rows, D),
// the gradients of x and of g; gw (D), of the weight, summed over the rows in row order. The
// formulas are in engine/ops/layer_norm.cpp.
using LayerNormDoubleBackwardKernel = void(const Tensor& x, const Tensor& weight, const Tensor& g,
                                           const Tensor& v, int64_t D, double eps, Tensor& gx,
                                           Tensor& gw, Tensor& gg);
extern DispatchStub<LayerNormDoubleBackwardKernel> layer_norm_double_backward_kernel;

// Multi-tensor arithmetic (engine/ops/foreach.cpp): lists of equal length, entry i of each with
// a[i]'s shape and dtype, every tensor contiguous and on one device; out[i] may be a[i].
//   foreach_add:   out[i] = a[i] + b[i]
//   foreach_scale: out[i] = T(double(a[i]) * factor)              (Tensor::mul_'s arithmetic)
//   foreach_mul:   out[i] = a[i] * T(device_factor) in a[i]'s     (mul's, by a converted 0-d
//                  accumulation type                                 f64 tensor on the device)
//   foreach_sum_squares: out (0-d f64) = sum of x^2 over every element, in f64
using ForeachAddKernel = void(const TensorList& a, const TensorList& b, const TensorList& out);
using ForeachScaleKernel = void(const TensorList& a, double factor, const TensorList& out);
using ForeachMulKernel = void(const TensorList& a, const Tensor& device_factor,
                              const TensorList& out);
using ForeachSumSquaresKernel = void(const TensorList& a, Tensor& out);
extern DispatchStub<ForeachAddKernel> foreach_add_kernel;
extern DispatchStub<ForeachScaleKernel> foreach_scale_kernel;
extern DispatchStub<ForeachMulKernel> foreach_mul_kernel;
extern DispatchStub<ForeachSumSquaresKernel> foreach_sum_squares_kernel;

// GEGLU and its derivatives (engine/ops/geglu.cpp): every operand contiguous; h and t
// (rows, 2F), g (rows, F) (undefined where the op has none), out (rows, F) for geglu and
// geglu_jvp, (rows, 2F) for geglu_backward and geglu_hvp.
using GegluKernel = void(const Tensor& g, const Tensor& h, const Tensor& t, Tensor& out);
extern DispatchStub<GegluKernel> geglu_kernel, geglu_backward_kernel, geglu_jvp_kernel,
    geglu_hvp_kernel;

// rotate_pairs (engine/ops/attention.cpp): x (n, heads, 2 half) contiguous, c and s (n, half)
// contiguous, out like x: each pair (x[2k], x[2k+1]) of row i rotated by (c[i, k], sign s[i, k]).
using RotatePairsKernel = void(const Tensor& x, const Tensor& c, const Tensor& s, double sign,
                               Tensor& out);
extern DispatchStub<RotatePairsKernel> rotate_pairs_kernel;

// weight (V, D) contiguous, indices contiguous i64 (n), out (n, D).
using GatherKernel = void(const Tensor& weight, const Tensor& indices, Tensor& out);
// rows (n, D) contiguous, indices (n), out (V, D) zero-initialised; adds in index order, which
// makes the result deterministic.
using ScatterAddKernel = void(const Tensor& rows, const Tensor& indices, Tensor& out);
extern DispatchStub<GatherKernel> embedding_kernel;
extern DispatchStub<ScatterAddKernel> embedding_backward_kernel;

enum class Distribution { normal, uniform, bernoulli };
// out contiguous; (a, b) = (mean, std), (lo, hi) or (keep_prob, value when kept). Element i comes
// from Philox block first_block + i / lanes, lane i % lanes (lanes = 2 for f64, else 4).
using RandomKernel = void(Tensor& out, Distribution dist, double a, double b, uint64_t seed,
                          uint64_t first_block);
extern DispatchStub<RandomKernel> random_kernel;

// ---- fused variable-length attention (engine/ops/flash_attention.cpp) ----
// The block-diagonal layout: sample b owns query rows [cu_q[b], cu_q[b+1]) and key rows
// [cu_k[b], cu_k[b+1]) (host offsets, B+1 each, validated by the op). q (Nq, H, dh), k and v
// (Nk, H, dh), o and every gradient contiguous; lse, the row log-sum-exp of the scaled scores,
// is (Nq, H) in the accumulation dtype (f32 for f32/f16/bf16, f64 for f64).
struct FlashAttentionLayout {
  const std::vector<int64_t>* cu_q = nullptr;
  const std::vector<int64_t>* cu_k = nullptr;
  double scale = 1.0;
  // Optional: where a device backend keeps its copy of tables built from the offsets for the
  // other kernels of the same attention call (forward, backward, double backward), so they are
  // copied to the device once per call, not once per kernel. Owned by the op's shared offsets;
  // `capture_id` records the CUDA-graph capture the copy was made in (0: none); a copy is reused
  // only in the same one (a graph must not read eager memory, nor eager code or another graph
  // a graph's, which only that graph's replays fill).
  struct DeviceTables {
    Tensor buffer;
    unsigned long long capture_id = 0;
  };
  DeviceTables* device_tables = nullptr;
};
// o = softmax(scale q k^T) v per sample and head; lse as above.
using FlashForwardKernel = void(const Tensor& q, const Tensor& k, const Tensor& v,
                                const FlashAttentionLayout& layout, Tensor& o, Tensor& lse);
// dq, dk, dv from dO (the gradient of o), recomputing P from lse; D = rowsum(dO o).
using FlashBackwardKernel = void(const Tensor& q, const Tensor& k, const Tensor& v,
                                 const Tensor& o, const Tensor& dO, const Tensor& lse,
                                 const FlashAttentionLayout& layout, Tensor& dq, Tensor& dk,
                                 Tensor& dv);
// The backward of the backward: given the cotangents a, b, c of (dq, dk, dv), the gradients of
// <a, dq> + <b, dk> + <c, dv> with respect to q, k, v and dO (kernels/cuda/flash_attention.md).
using FlashDoubleBackwardKernel = void(const Tensor& q, const Tensor& k, const Tensor& v,
                                       const Tensor& o, const Tensor& dO, const Tensor& lse,
                                       const Tensor& a, const Tensor& b, const Tensor& c,
                                       const FlashAttentionLayout& layout, Tensor& gq,
                                       Tensor& gk, Tensor& gv, Tensor& gdO);
extern DispatchStub<FlashForwardKernel> flash_attention_kernel;
extern DispatchStub<FlashBackwardKernel> flash_attention_backward_kernel;
extern DispatchStub<FlashDoubleBackwardKernel> flash_attention_double_backward_kernel;

}  // namespace mt
