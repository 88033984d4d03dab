// The interface between the tensor-level launchers (ops.cpp, which sees Tensors) and the device
// code (*.cu, which must not include the engine's headers: they pull in fmt, which nvcc cannot
// compile). Operands arrive as raw pointers (already offset to the tensor's first element) plus
// plain descriptors of the iteration space.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "kernels/cuda/foreach_plan.h"

namespace mt::gpu {

// The element types, in mt::DType's order (ops.cpp checks that they agree).
enum class ScalarType : uint8_t { f32, f64, f16, bf16, i64 };

inline constexpr int kMaxRank = 8;
inline constexpr int kMaxOperands = 4;  // the output and up to three inputs

// An elementwise iteration space after dropping size-1 dims and merging dims that every operand
// steps through as one. Operand 0 is the output; strides are in elements, 0 on broadcast dims.
// flat: rank <= 1 and every operand has stride 1 or 0 (contiguous, or one broadcast element),
// which is the vectorised path.
struct Iter {
  int rank = 0;
  int num_operands = 0;
  int64_t numel = 0;
  bool flat = false;
  int64_t sizes[kMaxRank] = {};
  int64_t strides[kMaxOperands][kMaxRank] = {};
};

enum class UnaryOp : uint8_t {
  neg, exp, log, sqrt, rsqrt, abs, sign, tanh, sigmoid, relu, erf, sin, cos, gelu,
  gelu_second_derivative,  // phi(x) (2 - x^2)
  clamp,  // p0 = lower bound, p1 = upper bound; NaN = none
  scale,  // x * p0, computed in double (Tensor::mul_)
};
enum class BinaryOp : uint8_t {
  add, sub, mul, div, pow, eq, ne, lt, le, gt, ge,
  gelu_backward,  // a = incoming gradient, b = x
  relu_backward,  // a = incoming gradient, b = x: a where b > 0, else 0
  axpy,           // a + p0 * b (Tensor::add_, out aliases a)
};

// rotate_pairs: x (n, heads, 2 half), c and s (n, half), out like x; all contiguous.
void rotate_pairs(ScalarType t, int64_t n, int64_t heads, int64_t half, const void* x,
                  const void* c, const void* s, double sign, void* out, cudaStream_t stream);

// GEGLU of h (rows, 2F) = [value | gate] and its fused derivatives (engine/ops/geglu.cpp):
// forward out (rows, F) = v gelu(u); backward out (rows, 2F) = J^T g; jvp out (rows, F) = J t;
// hvp out (rows, 2F) = g H t. Contiguous operands; g (rows, F), t (rows, 2F), null where unused.
enum class GegluOp : uint8_t { forward, backward, jvp, hvp };
void geglu(GegluOp op, ScalarType t, int64_t rows, int64_t F, const void* g, const void* h,
           const void* tangent, void* out, cudaStream_t stream);

// f32, f64, f16 and bf16 (16-bit types computed in f32).
void unary(UnaryOp op, ScalarType t, const Iter& it, void* out, const void* x, double p0,
           double p1, cudaStream_t stream, int sm_count);
void binary(BinaryOp op, ScalarType t, const Iter& it, void* out, const void* a, const void* b,
            double p0, cudaStream_t stream, int sm_count);
// out = mask != 0 ? a : b
void where(ScalarType t, const Iter& it, void* out, const void* mask, const void* a,
           const void* b, cudaStream_t stream, int sm_count);
// out = (a + b) + c (16-bit: rounded after each addition, as two adds)
void add3(ScalarType t, const Iter& it, void* out, const void* a, const void* b, const void* c,
          cudaStream_t stream, int sm_count);
// Every dtype. it has one operand (the output).
void fill(ScalarType t, const Iter& it, void* out, double value, cudaStream_t stream,
          int sm_count);
// dst = src converted, every pair of dtypes (conversions round as the CPU backend does:
// 16-bit types through f32, round to nearest even).
void copy(ScalarType dst_t, ScalarType src_t, const Iter& it, void* dst, const void* src,
          cudaStream_t stream, int sm_count);

// A reduction of x into out: each of the `outer` outputs reduces `inner` elements. Offsets
// follow two iteration spaces: over the kept dims (x and out strides) and over the reduced dims
// (x strides), both coalesced.
struct ReduceDesc {
  int64_t outer = 0, inner = 0;
  int outer_rank = 0, inner_rank = 0;
  int64_t outer_sizes[kMaxRank] = {};
  int64_t outer_x_strides[kMaxRank] = {};
  int64_t outer_out_strides[kMaxRank] = {};
  int64_t inner_sizes[kMaxRank] = {};
  int64_t inner_x_strides[kMaxRank] = {};
  // The reduced dims hold x's unit stride: threads of a block walk one output's elements
  // (row reduction). Otherwise neighbouring threads take neighbouring outputs (column
  // reduction).
  bool rows = true;
  int splits = 1;  // blocks sharing one output's elements; > 1 needs the workspace
};
enum class ReduceOp : uint8_t { sum, max };

// Accumulates in f32 (f64 for f64). Deterministic: the order of the additions depends only on
// the shape. workspace: outer * splits accumulators (f32, or f64 for f64), when splits > 1.
void reduce(ReduceOp op, ScalarType t, const ReduceDesc& d, void* out, const void* x,
            void* workspace, cudaStream_t stream, int sm_count);
// How many blocks share one output, from the shape only (so results do not depend on the GPU).
int reduce_splits(const ReduceDesc& d);


// ---- row kernels over the last dim (softmax.cu, layer_norm.cu) ----
// x, out contiguous (rows, D). One warp per row for D <= 1024, one block per row beyond;
// accumulation in f32 (f64 for f64). log: log_softmax.
void softmax(ScalarType t, int64_t rows, int64_t D, const void* x, void* out, bool log,
             cudaStream_t stream, int sm_count);
// x, out contiguous (rows, D); weight, bias (D) or nullptr. Mean and variance in f32 (f64 for
// f64), two passes over the row held in registers/shared memory.
void layer_norm(ScalarType t, int64_t rows, int64_t D, const void* x, const void* weight,
                const void* bias, double eps, void* out, cudaStream_t stream, int sm_count);
// dx (rows, D); dw, db (D) or nullptr. Each row's mean and rstd go to `workspace`; the
// (D)-sized sums run over rows in a fixed order: each of layer_norm_partials(rows) row chunks
// writes partial sums, then one pass adds the chunks in chunk order (deterministic).
// workspace: layer_norm_backward_workspace(t, rows, D) bytes.
int64_t layer_norm_partials(int64_t rows);
size_t layer_norm_backward_workspace(ScalarType t, int64_t rows, int64_t D);
void layer_norm_backward(ScalarType t, int64_t rows, int64_t D, const void* x,
                         const void* weight, const void* g, double eps, void* dx, void* dw,
                         void* db, void* workspace, cudaStream_t stream, int sm_count);
// Layer norm's double backward (engine/ops/kernels.h, layer_norm_double_backward_kernel): v
// (rows, D) is the gradient arriving at the input gradient; gx, gg (rows, D) and gw (D) or
// nullptr. gw is summed like dw above. workspace: layer_norm_double_backward_workspace bytes.
size_t layer_norm_double_backward_workspace(ScalarType t, int64_t rows, int64_t D);
void layer_norm_double_backward(ScalarType t, int64_t rows, int64_t D, const void* x,
                                const void* weight, const void* g, const void* v, double eps,
                                void* gx, void* gw, void* gg, void* workspace,
                                cudaStream_t stream, int sm_count);

// ---- embedding (embedding.cu) ----
// out (n, D) = weight (V, D) rows at indices (n). An index outside [0, V) stops the kernel
// with a device trap (a sticky error reported by the next CUDA call), as the CPU's range check
// would stop the op; the host never reads the indices.
void embedding(ScalarType t, int64_t n, int64_t D, int64_t V, const void* weight,
               const int64_t* indices, void* out, cudaStream_t stream, int sm_count);
// out (V, D) += rows (n, D) scattered to indices (n), deterministically: the positions are
// stably sorted by index (cub radix sort), then each run of equal indices is summed in position
// order by one thread per column, so the additions happen in the CPU's order, never in atomic
// order. workspace: embedding_backward_workspace(n, V) bytes.
size_t embedding_backward_workspace(int64_t n, int64_t V);
void embedding_backward(ScalarType t, int64_t n, int64_t D, int64_t V, const void* rows,
                        const int64_t* indices, void* out, void* workspace,
                        size_t workspace_bytes, cudaStream_t stream, int sm_count);
// The sort both the scatter-add and the sparse row updates start from: positions 0..n-1 stably
// radix-sorted by index (indices read as uint64 over the low bits covering [0, V), so an index
// outside [0, V), negative included, lands somewhere in the order and is caught by the kernel
// that reads the runs). workspace: index_sort_workspace(n, V) bytes; the sorted keys and
// positions are returned inside it.
struct IndexSort {
  const uint64_t* keys = nullptr;       // (n) indices in increasing order
  const int64_t* positions = nullptr;   // (n) their positions, equal keys in position order
};
size_t index_sort_workspace(int64_t n, int64_t V);
IndexSort sort_by_index(int64_t n, int64_t V, const int64_t* indices, void* workspace,
                        size_t workspace_bytes, cudaStream_t stream, int sm_count);

// ---- sparse row updates of an embedding table (embedding_update.cu) ----
// weight (V, D); indices (n); grad_rows (n, D), the weight's type t. The gradient rows of equal
// indices are summed in position order (f32 accumulation, f64 for f64), then every distinct
// row gets one fused update, one warp per row, 16-byte accesses when D and the pointers allow
// it; rows not in `indices` are not read or written. An index outside [0, V) traps. workspace:
// index_sort_workspace(n, V) bytes. Scalars as for the dense updates (AdamWScalars below; the
// launcher in ops.cpp computes them as the CPU kernel does; amsgrad must be false).
struct AdamWScalars;
struct SgdScalars;
// SGD without momentum.
void sparse_sgd_rows(ScalarType t, int64_t n, int64_t D, int64_t V, void* weight,
                     const int64_t* indices, const void* grad_rows, const SgdScalars& s,
                     void* workspace, size_t workspace_bytes, cudaStream_t stream, int sm_count);
// exp_avg, exp_avg_sq (V, D) of type moment_t: t, or f32 when t is f16/bf16.
void sparse_adamw_rows(ScalarType t, ScalarType moment_t, int64_t n, int64_t D, int64_t V,
                       void* weight, void* exp_avg, void* exp_avg_sq, const int64_t* indices,
                       const void* grad_rows, const AdamWScalars& s, void* workspace,
                       size_t workspace_bytes, cudaStream_t stream, int sm_count);

// ---- random numbers (random.cu) ----
// Philox4x32-10 with the CPU generator's stream layout (engine/core/generator.h): element i of
// out (contiguous, n elements) comes from block first_block + i / lanes, lane i % lanes, lanes
// = 2 for f64 (53-bit uniforms from word pairs), 4 otherwise.
enum class RandomDist : uint8_t { normal, uniform, bernoulli };
void random(ScalarType t, RandomDist dist, int64_t n, double a, double b, uint64_t seed,
            uint64_t first_block, void* out, cudaStream_t stream, int sm_count);

// ---- optimizer updates (optim.cu) ----
// Scalars precomputed on the host in double, exactly as engine/optim's CPU kernels do.
struct AdamWScalars {
  double decay_factor;            // 1 - lr * weight_decay (used when decay)
  double w;                       // 1 - beta1 (lerp weight)
  double beta2, one_minus_beta2;
  double neg_step_size;           // -(lr / bias_correction1)
  double bias_correction2_sqrt;
  double eps;
  bool decay, small_w, amsgrad, maximize;
  // AdamWOptions::capturable: the step count on the device. adamw() then first adds one to it
  // (a one-thread kernel) and the update takes neg_step_size and bias_correction2_sqrt from the
  // new count, computed in double from lr, beta1 and beta2 as the host does.
  int64_t* device_step = nullptr;
  double lr = 0, beta1 = 0;
};
// param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq (amsgrad only, else nullptr): n elements.
void adamw(ScalarType t, int64_t n, void* param, const void* grad, void* exp_avg,
           void* exp_avg_sq, void* max_exp_avg_sq, const AdamWScalars& s, cudaStream_t stream,
           int sm_count);
struct SgdScalars {
  double weight_decay, momentum, one_minus_dampening, neg_lr;
  bool decay, nesterov, maximize, first;
};
// momentum_buffer: nullptr when momentum is 0.
void sgd(ScalarType t, int64_t n, void* param, const void* grad, void* momentum_buffer,
         const SgdScalars& s, cudaStream_t stream, int sm_count);
// AdamW over a list of parameters of one storage type (AdamWOptions::foreach): each element as
// adamw() computes it. Per parameter: its tensors (max_exp_avg_sq only with amsgrad) and either
// its step-dependent scalars (computed on the host from its count, step = nullptr) or its count
// on the device (capturable: the update takes the scalars from count + 1, in double, and one
// more kernel then adds one to every count of the list: the same values as adamw()'s
// increment-then-update). `s` holds the step-independent scalars (and lr, beta1).
struct AdamWForeachEntry {
  int64_t n;
  void *param;
  const void* grad;
  void *exp_avg, *exp_avg_sq, *max_exp_avg_sq;
  int64_t* step;
  double neg_step_size, bias_correction2_sqrt;
};
void adamw_foreach(ScalarType t, const std::vector<AdamWForeachEntry>& e, const AdamWScalars& s,
                   cudaStream_t stream);

// ---- multi-tensor kernels (foreach.cu) ----
// Lists of contiguous tensors of one storage type: each kernel launch covers up to
// kForeachMaxTensors tensors in chunks of kForeachChunk elements (one CTA per chunk, at most
// kForeachMaxBlocks chunks), the table of tensors and chunks passed by value (no copy to the
// device, nothing to keep alive: a captured launch keeps its table). Longer lists take several
// launches. Each element is computed as the single-tensor kernel computes it (noted per kernel).
struct ForeachEntry {
  int64_t n;        // elements
  void* out;        // may equal a (in place)
  const void* a;
  const void* b;    // foreach_add only
};
// out = a + b, in the accumulation type (binary.cu's AddF).
void foreach_add(ScalarType t, const std::vector<ForeachEntry>& e, cudaStream_t stream);
// out = T(double(a) * factor) (unary.cu's ScaleF: Tensor::mul_).
void foreach_scale(ScalarType t, const std::vector<ForeachEntry>& e, double factor,
                   cudaStream_t stream);
// out = a * c in the accumulation type, c = *factor (f64 on the device) converted to T as copy.cu
// converts (binary.cu's MulF after factor.to(dtype)).
void foreach_mul(ScalarType t, const std::vector<ForeachEntry>& e, const double* factor,
                 cudaStream_t stream);
// The chunks the entries make: the length of the partials buffer foreach_sum_squares fills.
int64_t foreach_chunks(const std::vector<ForeachEntry>& e);
// partials[k] = sum of double(x)^2 over chunk k of the entries (in entry order), then, with
// foreach_sum_partials, out = the partials summed in order by one CTA: reproducible.
void foreach_sum_squares(ScalarType t, const std::vector<ForeachEntry>& e, double* partials,
                         cudaStream_t stream);
void foreach_sum_partials(const double* partials, int64_t count, double* out, cudaStream_t stream);

// ---- fused variable-length attention (flash_attention.cu; kernels/cuda/flash_attention.md) ----
// q, o, dO, a, dq, gq, gdO: (Nq, heads, dh) contiguous; k, v, b, c, dk, dv, gk, gv: (Nk, heads,
// dh); lse and the workspaces: (Nq, heads) in the accumulation type (f32, f64 for f64). Each CTA
// takes kFlashBlockRows rows of one sample and one head (grid = blocks x heads); the block
// tables hold (sample, first row within the sample) pairs built on the host from the offsets.
inline constexpr int kFlashBlockRows = 16;
inline constexpr int kFlashMaxHeadDim = 128;
struct FlashDesc {
  int64_t num_queries = 0, heads = 0, dh = 0;
  double scale = 1.0;
  const int64_t* cu_q = nullptr;      // device, (B+1) query offsets
  const int64_t* cu_k = nullptr;      // device, (B+1) key offsets
  const int64_t* q_blocks = nullptr;  // device, (num_q_blocks, 2)
  const int64_t* k_blocks = nullptr;  // device, (num_k_blocks, 2)
  int64_t num_q_blocks = 0, num_k_blocks = 0;
  // Key splits per sample of the query-side kernels (flash-decoding style): 1 runs the one-pass
  // kernels; S > 1 gives each (block, head) S CTAs over disjoint key ranges whose partials, in the
  // workspace, a combine kernel sums in a fixed order (deterministic, no atomics).
  int64_t kv_splits = 1;
  // FlashKernels::mma: the forward, the first-order and the double backward run the tensor-core
  // kernels for 16-bit and f32 storage and dh 32, 64, 128 (16-byte aligned q, k, v, dO, and a,
  // b, c); everything else (f64, other head dims) runs the split kernels.
  bool mma = false;
  // f32 on tensor cores: false computes each product as three TF32 products (3xTF32, about f32
  // accuracy); true (cuda_matmul_allow_tf32) as one, with inputs rounded to TF32.
  bool tf32 = false;
};
// Workspace of each launcher, in accumulation-type elements.
inline int64_t flash_forward_workspace(const FlashDesc& d) {  // (S, Nq, H, dh + 2) when split
  const int64_t nh = d.num_queries * d.heads;
  return d.kv_splits > 1 ? d.kv_splits * nh * (d.dh + 2) : 0;
}
inline int64_t flash_backward_workspace(const FlashDesc& d) {  // D, then (S, Nq, H, dh)
  const int64_t nh = d.num_queries * d.heads;
  return nh + (d.kv_splits > 1 ? d.kv_splits * nh * d.dh : 0);
}
inline int64_t flash_double_backward_workspace(const FlashDesc& d) {  // D, r, E, then partials
  const int64_t nh = d.num_queries * d.heads;
  return 3 * nh + (d.kv_splits > 1 ? d.kv_splits * nh * (3 + 2 * d.dh) : 0);
}
// o and lse from q, k, v (online softmax over key tiles). True when the tensor-core kernels ran
// (head dims 32, 64 and 128 in every dtype; flash_double_backward's take f32 up to 64), false
// for the SIMT kernels.
bool flash_forward(ScalarType t, const FlashDesc& d, const void* q, const void* k, const void* v,
                   void* o, void* lse, void* workspace, cudaStream_t stream);
// dq (query-side kernel, which also writes D = rowsum(dO o) to workspace (Nq, heads)), then dk
// and dv (key-side kernel): no atomics, so the result is deterministic. True when the
// tensor-core kernels ran.
bool flash_backward(ScalarType t, const FlashDesc& d, const void* q, const void* k,
                    const void* v, const void* o, const void* dO, const void* lse, void* dq,
                    void* dk, void* dv, void* workspace, cudaStream_t stream);
// gq and gdO (query side: row statistics D, r, E to workspace (3, Nq, heads), then the outputs),
// then gk and gv (key side). True when the tensor-core kernels ran (FlashDesc::mma, 16-bit or
// f32 storage, dh 32/64/128, 16-byte aligned inputs), false for the SIMT kernels.
bool flash_double_backward(ScalarType t, const FlashDesc& d, const void* q, const void* k,
                           const void* v, const void* o, const void* dO, const void* lse,
                           const void* a, const void* b, const void* c, void* gq, void* gk,
                           void* gv, void* gdO, void* workspace, cudaStream_t stream);

// ---- GEMM (gemm.cpp: cuBLASLt, cuBLAS for f64) ----
// A batched product in cuBLAS's column-major terms. The engine's row-major C (M, N) = A B is
// computed as C^T (N x M) = B^T A^T: cuBLAS's first operand `a` is the engine's b and its
// second `b` the engine's a. Each operand is stored column-major with leading dimension ld and
// used transposed or not, so transposed views need no copy; batch entry i of an operand starts
// at i * batch_stride (0: broadcast).
struct GemmOperand {
  bool trans = false;
  int64_t ld = 1;
  int64_t batch_stride = 0;
};
// What cuBLASLt applies to the product before writing c (gemm_epilogue). The bias has one entry
// per row of the column-major c (m entries): in the engine's C^T = B^T A^T formulation that is
// one per column of the row-major result, i.e. per output feature of x W^T.
enum class GemmEpilogue : uint8_t { none, bias, relu, relu_bias };
struct GemmDesc {
  ScalarType t = ScalarType::f32;
  int64_t m = 0, n = 0, k = 0, batch = 1;
  GemmOperand a, b;         // op(a) is (m x k), op(b) is (k x n)
  int64_t ldc = 1, batch_stride_c = 0;  // c (m x n) column-major, contiguous batches
  GemmEpilogue epilogue = GemmEpilogue::none;  // gemm_epilogue only; gemm() ignores it
};
// c = op(a) op(b) on `device`'s compute stream. k == 0 writes zeros. f32 uses TF32 tensor cores
// only when allow_tf32; f16/bf16 accumulate in f32; f64 goes through cublasDgemmStridedBatched.
// workspace: cuBLAS(Lt)'s scratch (kGemmWorkspaceBytes from the caching allocator), or nullptr.
inline constexpr size_t kGemmWorkspaceBytes = size_t(32) << 20;
void gemm(const GemmDesc& d, const void* a, const void* b, void* c, bool allow_tf32,
          void* workspace, size_t workspace_bytes, int device, cudaStream_t stream);
// c = epilogue(op(a) op(b) [+ bias]) as one cuBLASLt call, for f32, f16 and bf16 with k > 0:
// bias (m entries of d.t, 16-byte aligned) for GemmEpilogue::bias and relu_bias, else ignored.
// Returns false, launching nothing, where cuBLASLt's heuristic has no algorithm for the
// epilogue (or for f64 and k == 0): the caller then runs gemm() and separate ops.
bool gemm_epilogue(const GemmDesc& d, const void* a, const void* b, const void* bias, void* c,
                   bool allow_tf32, void* workspace, size_t workspace_bytes, int device,
                   cudaStream_t stream);

}  // namespace mt::gpu
