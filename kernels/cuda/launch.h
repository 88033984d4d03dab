// The interface between the tensor-level launchers (ops.cpp, which sees Tensors) and the device
// code (*.cu, which must not include the engine's headers: they pull in fmt, which nvcc cannot
// compile). Operands arrive as raw pointers (already offset to the tensor's first element) plus
// plain descriptors of the iteration space.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

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
  clamp,  // p0 = lower bound, p1 = upper bound; NaN = none
  scale,  // x * p0, computed in double (Tensor::mul_)
};
enum class BinaryOp : uint8_t {
  add, sub, mul, div, pow, eq, ne, lt, le, gt, ge,
  gelu_backward,  // a = incoming gradient, b = x
  axpy,           // a + p0 * b (Tensor::add_, out aliases a)
};

// f32, f64, f16 and bf16 (16-bit types computed in f32).
void unary(UnaryOp op, ScalarType t, const Iter& it, void* out, const void* x, double p0,
           double p1, cudaStream_t stream, int sm_count);
void binary(BinaryOp op, ScalarType t, const Iter& it, void* out, const void* a, const void* b,
            double p0, cudaStream_t stream, int sm_count);
// out = mask != 0 ? a : b
void where(ScalarType t, const Iter& it, void* out, const void* mask, const void* a,
           const void* b, cudaStream_t stream, int sm_count);
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

}  // namespace mt::gpu
