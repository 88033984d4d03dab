// The engine's differentiable ops. Each family lives in one file under engine/ops/ holding its
// forward dispatch, backward rule and CPU kernel; CUDA kernels fill the same dispatch slots from
// kernels/. Every op broadcasts by numpy rules where it takes several tensors, requires equal
// dtypes (convert with .to()), and records itself on the tape when grad mode is on and an input
// requires grad. Backward rules call these same ops, so gradients of any order work.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "engine/core/tensor.h"

namespace mt {

class Generator;

// ---- elementwise binary (engine/ops/binary.cpp) ----
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);
Tensor pow(const Tensor& a, const Tensor& b);
Tensor pow(const Tensor& a, double exponent);
// Scalar second operands (a 0-d tensor of a's dtype and device).
Tensor add(const Tensor& a, double b);
Tensor sub(const Tensor& a, double b);
Tensor mul(const Tensor& a, double b);
Tensor div(const Tensor& a, double b);
// Comparisons return masks of 1 and 0 in the inputs' dtype; they carry no gradient.
Tensor eq(const Tensor& a, const Tensor& b);
Tensor ne(const Tensor& a, const Tensor& b);
Tensor lt(const Tensor& a, const Tensor& b);
Tensor le(const Tensor& a, const Tensor& b);
Tensor gt(const Tensor& a, const Tensor& b);
Tensor ge(const Tensor& a, const Tensor& b);
// (a + b) + c in one pass: the additions and rounding of add(add(a, b), c), one kernel and no
// intermediate tensor (the autograd engine sums three incoming gradients with it).
Tensor add3(const Tensor& a, const Tensor& b, const Tensor& c);
// where(mask, a, b): a where mask != 0, else b; the mask gets no gradient.
Tensor where(const Tensor& mask, const Tensor& a, const Tensor& b);

// ---- elementwise unary (engine/ops/unary.cpp) ----
Tensor neg(const Tensor& x);
Tensor exp(const Tensor& x);
Tensor log(const Tensor& x);
Tensor sqrt(const Tensor& x);
Tensor rsqrt(const Tensor& x);
Tensor abs(const Tensor& x);
Tensor sign(const Tensor& x);  // no gradient (zero almost everywhere)
Tensor tanh(const Tensor& x);
Tensor sigmoid(const Tensor& x);
Tensor relu(const Tensor& x);
Tensor erf(const Tensor& x);
Tensor sin(const Tensor& x);
Tensor cos(const Tensor& x);
Tensor gelu(const Tensor& x);  // exact: x * Phi(x) with the normal CDF via erf
// g * gelu'(x) in one pass: gelu's backward, itself differentiable (in g and x).
Tensor gelu_backward(const Tensor& g, const Tensor& x);
// gelu''(x) = phi(x) (2 - x^2) in one pass (gelu_backward's derivative in x); differentiable.
Tensor gelu_second_derivative(const Tensor& x);
// GEGLU of a fused projection h (..., 2F) = [v | u] (value features, then gate features):
// v * gelu(u), (..., F). Its backward and the terms of its double backward are fused ops too,
// each differentiable (engine/ops/geglu.cpp derives them): with J and H the per-element
// Jacobian and Hessian of geglu, t and the result of geglu_backward / geglu_hvp (..., 2F),
//   geglu_backward(g, h) = J^T g,  geglu_jvp(h, t) = J t,  geglu_hvp(g, h, t) = g H t.
Tensor geglu(const Tensor& h);
Tensor geglu_backward(const Tensor& g, const Tensor& h);
Tensor geglu_jvp(const Tensor& h, const Tensor& t);
Tensor geglu_hvp(const Tensor& g, const Tensor& h, const Tensor& t);
// g * step(x), step(x) = 1 where x > 0, else 0 (torch's threshold_backward): relu's backward in
// one pass. Differentiable in g (the mask is constant; no gradient flows to x).
Tensor relu_backward(const Tensor& g, const Tensor& x);
Tensor clamp(const Tensor& x, std::optional<double> lo, std::optional<double> hi);

// ---- reductions (engine/ops/reduce.cpp); empty dims = all dims ----
Tensor sum(const Tensor& x, std::vector<int64_t> dims = {}, bool keepdim = false);
Tensor mean(const Tensor& x, std::vector<int64_t> dims = {}, bool keepdim = false);
// Max over dims; the gradient is split evenly between tied maxima.
Tensor max(const Tensor& x, std::vector<int64_t> dims = {}, bool keepdim = false);
// Variance with Bessel's correction (correction = 1) by default, as torch.var.
Tensor var(const Tensor& x, std::vector<int64_t> dims = {}, bool keepdim = false,
           int64_t correction = 1);
// Sums a broadcast tensor down to `shape` (the reverse of expand).
Tensor sum_to(const Tensor& x, const Shape& shape);

// ---- views and copies (engine/ops/view.cpp) ----
Tensor reshape(const Tensor& x, const Shape& shape);  // one dim may be -1
Tensor permute(const Tensor& x, const Shape& dims);
Tensor transpose(const Tensor& x, int64_t d0, int64_t d1);
Tensor narrow(const Tensor& x, int64_t dim, int64_t start, int64_t length);
Tensor expand(const Tensor& x, const Shape& shape);
Tensor unsqueeze(const Tensor& x, int64_t dim);
Tensor squeeze(const Tensor& x, int64_t dim);
Tensor contiguous(const Tensor& x);
Tensor clone(const Tensor& x);
Tensor to_dtype(const Tensor& x, DType dtype);
// An explicit copy to another device (x itself when already there); differentiable: the
// gradient is copied back. Copying to the CPU waits for the device (a host read point);
// copying to a device does not wait for the copy to finish.
Tensor to_device(const Tensor& x, Device device);
// Zeros of `shape` with x written at [start, start + x.size(dim)) along dim: the backward of
// narrow, itself differentiable (its backward is narrow).
Tensor narrow_scatter(const Tensor& x, const Shape& shape, int64_t dim, int64_t start);

// ---- joins (engine/ops/join.cpp) ----
Tensor cat(const TensorList& xs, int64_t dim);
Tensor stack(const TensorList& xs, int64_t dim);
TensorList split(const Tensor& x, const std::vector<int64_t>& sizes, int64_t dim);
TensorList split(const Tensor& x, int64_t chunk, int64_t dim);

// ---- matmul (engine/ops/matmul.cpp) ----
// torch.matmul semantics: 1-D operands are promoted and the added dim removed; batch dims
// broadcast.
Tensor matmul(const Tensor& a, const Tensor& b);

// ---- linear layer (engine/ops/linear.cpp) ----
enum class Activation { none, relu, gelu };
// activation(x W^T + b): x (..., in), weight (out, in) as nn::Linear stores it, bias (out) or
// undefined -> (..., out). The CPU computes the composite matmul + add + activation (the
// reference). On CUDA (f32, f16, bf16, x and weight contiguous, bias 16-byte aligned) the
// product, the bias and a ReLU run as one cuBLASLt call with a bias epilogue; gelu stays a
// separate op (cuBLASLt's GELU epilogue is the tanh approximation, the engine's gelu is exact).
// The fused node's backward rule is made of differentiable ops (the ReLU mask read from the
// output), so gradients of any order work. Falls back to the composite where cuBLASLt offers no
// algorithm for the epilogue (cuda_linear_epilogue_calls() in matmul_settings.h counts fused
// calls).
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias = Tensor(),
              Activation activation = Activation::none);

// ---- softmax family (engine/ops/softmax.cpp) ----
Tensor softmax(const Tensor& x, int64_t dim);
Tensor log_softmax(const Tensor& x, int64_t dim);

// ---- normalisation (engine/ops/layer_norm.cpp) ----
// Normalises over the last normalized_rank dims; weight and bias (optional) have those dims.
Tensor layer_norm(const Tensor& x, int normalized_rank, const Tensor& weight, const Tensor& bias,
                  double eps = 1e-5);
// The input gradient of layer_norm as one op: for an output gradient g (x's shape),
// rstd (gh - mean(gh) - xhat mean(gh xhat)) with gh = g * weight (weight optional). layer_norm's
// rule uses it when it is recorded (create_graph); its own backward (layer_norm's double
// backward) is written with differentiable ops, so every order works.
Tensor layer_norm_input_grad(const Tensor& x, int normalized_rank, const Tensor& weight,
                             const Tensor& g, double eps = 1e-5);

// ---- embedding (engine/ops/embedding.cpp) ----
// weight (V, D), indices i64 of any shape -> (indices.shape..., D). The backward is a
// scatter-add into a (V, D) gradient; the indices get no gradient.
Tensor embedding(const Tensor& weight, const Tensor& indices);
// rows (indices.shape..., D) summed into zeros (num_rows, D) at indices (deterministic).
Tensor embedding_backward(const Tensor& rows, const Tensor& indices, int64_t num_rows);

// ---- attention (engine/ops/attention.cpp) ----
// Rotary time embedding of x (n, heads, dh) at times (n): pair k = (2k, 2k+1) of every head is
// rotated by the angle times[i] * inv_freq[k]; inv_freq (dh/2) may hold zeros for pairs that are
// not rotated. Differentiable in x (times and frequencies are data).
Tensor rotary(const Tensor& x, const Tensor& times, const Tensor& inv_freq);
// cos and sin of the rotary angles times[i] * inv_freq[k], (n, dh/2) each in `dtype` (the angles
// in f32 at least): constants of the graph, for times that several rotary calls share (a batch's
// layout: keys and values, queries and the output). times and inv_freq must not require grad.
struct RotaryTables {
  Tensor cos, sin;
  bool defined() const { return cos.defined(); }
};
RotaryTables rotary_tables(const Tensor& times, const Tensor& inv_freq, DType dtype);
// x (n, heads, dh) rotated by precomputed tables (n, dh/2); sign -1 rotates by the opposite
// angles. Differentiable in x.
Tensor rotary(const Tensor& x, const RotaryTables& tables, double sign = 1.0);
// Frequencies of POYO/POCO's rotary embedding: 2 pi / (t_min (t_max/t_min)^(2k/(dh/2))) for the
// first dh/4 pairs, zero for the rest (half of the head dims are not rotated), t_min = t_max/1000.
Tensor rotary_inv_freq(int64_t dim_head, double t_max, DType dtype = DType::f32);

struct VarlenAttention {
  int64_t heads = 1;
  std::vector<int64_t> q_lengths;  // (B) queries per sample; sum = q.size(0)
  std::vector<int64_t> k_lengths;  // (B) keys per sample; sum = k.size(0)
  Tensor q_times, k_times;         // (Nq), (Nk) rotary times; undefined = no rotary
  Tensor inv_freq;                 // (dh/2) rotary frequencies
  // Optional: rotary_tables of q_times / k_times (q's dtype), when the caller keeps them for
  // several calls; otherwise each call builds them once per side (if the times are constants).
  RotaryTables q_tables, k_tables;
  bool rotate_value = false;       // rotate v by key time and the output back by query time
  // How the batch is evaluated; all compute the same function. padded: samples gathered into
  // (B, max_len) blocks with masked padding, one batched attention (big GEMMs; gradients stay
  // O(batch) because gathers scatter back); per_sample: one attention per sample; fused: the
  // flash_attention op below (no score matrix in memory); automatic: fused for CUDA tensors
  // with dh <= 128, otherwise padded unless padding would more than quadruple the score
  // entries. The CPU's automatic choice stays composite: it is the oracle for the fused kernels.
  enum class Mode { automatic, padded, per_sample, fused };
  Mode mode = Mode::automatic;
};
// Block-diagonal multi-head attention: q (Nq, heads*dh), k and v (Nk, heads*dh); sample b's
// queries attend only to sample b's keys. softmax(q k^T / sqrt(dh)) v per sample and head.
// Composed from differentiable ops: the reference for fused kernels, correct to any order.
Tensor varlen_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                        const VarlenAttention& spec);

// ---- fused attention core (engine/ops/flash_attention.cpp) ----
// The per-sample, per-head core of varlen_attention on already-rotated q (Nq, H, dh), k and v
// (Nk, H, dh): o = softmax(scale q k^T) v, sample b's queries [cu_q[b], cu_q[b+1]) attending to
// its keys [cu_k[b], cu_k[b+1]) (host offsets, B+1 each; a sample with queries needs a key).
// One kernel with an online softmax; it keeps the row log-sum-exp (Nq, H) (f32, f64 for f64),
// written to *lse when given. Which orders are fused:
//   forward                    fused kernel (CPU: loops, the reference)
//   first-order backward       flash_attention_backward, a fused op (recorded when the
//                              backward is, so its result can be differentiated again)
//   second order (backward of  fused double-backward kernel when that backward is not itself
//   the backward)              recorded (create_graph = false: the meta-gradient's outer pass);
//                              with create_graph = true, the closed-form composite below, made
//                              of differentiable ops, so third and higher orders are right too.
// dh <= 128 on CUDA (varlen_attention falls back to the composite beyond); f32, f64, f16, bf16
// on CUDA (16-bit computed in f32), f32 and f64 on the CPU.
Tensor flash_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                       const std::vector<int64_t>& cu_q, const std::vector<int64_t>& cu_k,
                       double scale, Tensor* lse = nullptr);
// {dq, dk, dv} of flash_attention given dO (the gradient of o), its output o and its lse (both
// treated as saved values: the rule below accounts for their dependence on q, k and v).
// Differentiable in q, k, v and dO.
TensorList flash_attention_backward(const Tensor& q, const Tensor& k, const Tensor& v,
                                    const Tensor& o, const Tensor& dO, const Tensor& lse,
                                    const std::vector<int64_t>& cu_q,
                                    const std::vector<int64_t>& cu_k, double scale);
// {gq, gk, gv, gdO}: the gradients of <a, dq> + <b, dk> + <c, dv> (dq, dk, dv as above) with
// respect to q, k, v and dO, in closed form from differentiable ops (per sample, P recomputed
// from q and k), so it can be differentiated to any order. The CPU check of the fused
// double-backward kernel's derivation (kernels/cuda/flash_attention.md).
TensorList flash_attention_double_backward_composite(
    const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& dO, const Tensor& a,
    const Tensor& b, const Tensor& c, const std::vector<int64_t>& cu_q,
    const std::vector<int64_t>& cu_k, double scale);

// ---- multi-tensor arithmetic (engine/ops/foreach.cpp) ----
// One call for a whole list of tensors: a device backend runs a few kernels for dozens of
// tensors where the single-tensor ops launch one each (optimizer steps, gradient clipping and
// averaging: a few kernels per step instead of a few per parameter). Outside autograd: no
// operand may require grad while grad mode is on. Every tensor on one device with a float dtype;
// entry i of each list has the shape and dtype of a[i] (entries may differ from each other).
// Each entry is bitwise what the single-tensor op gives (noted where not).
TensorList foreach_add(const TensorList& a, const TensorList& b);  // a[i] + b[i]
void foreach_add_(const TensorList& a, const TensorList& b);       // a[i] += b[i] (a contiguous)
void foreach_mul_(const TensorList& a, double factor);  // a[i].mul_(factor) (a contiguous)
// a[i] * factor.to(a[i].dtype()), factor a 0-d f64 tensor on the operands' device (e.g. a
// clipping coefficient computed there).
TensorList foreach_mul(const TensorList& a, const Tensor& factor);
// The sum over every element of every tensor of x^2, accumulated in f64: a 0-d f64 tensor on the
// operands' device (0 on the CPU for an empty list). Equal to summing each entry's
// sum(mul(x64, x64)) to rounding: the order of the additions is the backend's (fixed for given
// shapes, so reproducible).
Tensor foreach_sum_squares(const TensorList& a);

// ---- losses (engine/ops/loss.cpp) ----
Tensor mse_loss(const Tensor& prediction, const Tensor& target);  // mean of squared error

// ---- randomness (engine/ops/random.cpp; see engine/core/generator.h) ----
Tensor dropout(const Tensor& x, double p, bool training, Generator& gen);
// Draws land on `device`; every backend gives the same numbers for the same generator state.
Tensor normal(const Shape& shape, double mean, double std, Generator& gen,
              DType dtype = DType::f32, Device device = kCPU);
Tensor uniform(const Shape& shape, double lo, double hi, Generator& gen, DType dtype = DType::f32,
               Device device = kCPU);
// Mask of 1 with probability keep_prob, else 0.
Tensor bernoulli_mask(const Shape& shape, double keep_prob, Generator& gen,
                      DType dtype = DType::f32, Device device = kCPU);

// ---- operators ----
Tensor operator+(const Tensor& a, const Tensor& b);
Tensor operator-(const Tensor& a, const Tensor& b);
Tensor operator*(const Tensor& a, const Tensor& b);
Tensor operator/(const Tensor& a, const Tensor& b);
Tensor operator-(const Tensor& x);
Tensor operator+(const Tensor& a, double b);
Tensor operator-(const Tensor& a, double b);
Tensor operator*(const Tensor& a, double b);
Tensor operator/(const Tensor& a, double b);
Tensor operator+(double a, const Tensor& b);
Tensor operator-(double a, const Tensor& b);
Tensor operator*(double a, const Tensor& b);
Tensor operator/(double a, const Tensor& b);

// A 0-d tensor holding value with t's dtype and device (scalar operands of binary ops). Shared
// and read-only: the same constant is returned for the same device, dtype and value; write into
// a copy (clone()) instead.
Tensor scalar_like(const Tensor& t, double value);

}  // namespace mt
