// Sparse row updates of an embedding table: one SGD or AdamW step applied only to the rows an
// index tensor touches, from the gradient of the gathered rows (the gradient of
// embedding(weight, indices)'s output), so the table's full (V, D) gradient is never built.
// Meant for fine-tuning the unit embeddings of a new session, where a step touches a few hundred
// rows of a table that may hold many sessions.
//
// Semantics (both updates):
//  - Rows of equal indices have their gradient rows summed first, in position order (at f32
//    for f32/f16/bf16 tables, f64 for f64), exactly as embedding_backward sums them; every
//    distinct row then gets one update. Results are deterministic, on CUDA too (stable sort by
//    index, no atomics).
//  - Lazy, as torch.optim.SparseAdam: a row that is not in `indices` is left bitwise unchanged;
//    its weight is not decayed and its moments are not decayed either.
//  - A touched row gets exactly the arithmetic of the dense update (engine/optim/kernels.h:
//    torch.optim.SGD / torch.optim.AdamW, weight decay decoupled for AdamW, eps added after the
//    bias correction as AdamW does, not before it as SparseAdam does). So when every row is
//    touched, the sparse step equals the dense step on the scattered gradient; the step
//    restricted to the touched rows always does.
//  - AdamW's bias correction uses one step count for the whole table (`step`, the table's
//    number of updates including this one, as SparseAdam and the dense AdamW keep it), not a
//    count per row: a row first touched at step k starts its moments from zero but is corrected
//    as if it had seen k updates.
//
// Validation: weight (V, D) floating point and contiguous (it is written in place: a strided
// view is refused, not silently copied); indices i64 of any shape on the weight's device;
// grad_rows of shape indices.shape + (D,) and the weight's dtype (copied if not contiguous).
// On the CPU an index outside [0, V) is an error naming it; on a device the kernel traps (no
// host synchronisation). An empty index tensor is a no-op. Runs under NoGradGuard and bumps the
// storage versions of the tensors it writes, like Optimizer::step().
#pragma once

#include <cstdint>

#include "engine/core/tensor.h"
#include "engine/optim/adamw.h"
#include "engine/optim/sgd.h"

namespace mt::optim {

// One SGD step of the touched rows: g = sum of the rows' gradients (negated if maximize),
// g += weight_decay * w, w -= lr * g. options.momentum must be 0 (a momentum buffer per row is
// not kept by the sparse update; use the dense SGD for momentum).
void sparse_sgd_rows_(Tensor& weight, const Tensor& indices, const Tensor& grad_rows,
                      const SGDOptions& options);

// One AdamW step of the touched rows, `step` >= 1 being the table's step count including this
// update. exp_avg and exp_avg_sq have the weight's shape and are contiguous, of the weight's
// dtype (f32/f64 on the CPU; f32/f64/f16/bf16 on CUDA), or f32 for an f16/bf16 weight on CUDA
// (moments kept at f32 while the table is 16-bit). options.amsgrad must be false. Refused inside
// a CUDA-graph capture: `step` would be fixed at the capture's value for every replay.
void sparse_adamw_rows_(Tensor& weight, Tensor& exp_avg, Tensor& exp_avg_sq, int64_t step,
                        const Tensor& indices, const Tensor& grad_rows,
                        const AdamWOptions& options);

}  // namespace mt::optim
