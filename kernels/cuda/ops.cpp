// The CUDA launchers behind the engine's dispatch stubs: each turns its Tensors into raw pointers
// and a coalesced iteration space (launch.h), makes the device current and launches on the
// device's compute stream. register_kernels() fills the stubs' CUDA slots; kernels/README.md
// lists the stubs that have no CUDA kernel yet.
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <cmath>

#include "engine/autograd/grad_mode.h"
#include "engine/core/attention_settings.h"
#include "engine/core/backend.h"
#include "engine/core/matmul_settings.h"
#include "engine/cpu/loops.h"
#include "engine/ops/elementwise.h"
#include "engine/ops/kernels.h"
#include "engine/optim/kernels.h"
#include "kernels/cuda/allocator.h"
#include "kernels/cuda/check.h"
#include "kernels/cuda/describe.h"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/register.h"
#include "kernels/cuda/staging.h"
#include "kernels/cuda/stream.h"

namespace mt::gpu {
namespace {

static_assert(int(ScalarType::f32) == int(DType::f32) && int(ScalarType::f64) == int(DType::f64) &&
              int(ScalarType::f16) == int(DType::f16) && int(ScalarType::bf16) == int(DType::bf16) &&
              int(ScalarType::i64) == int(DType::i64));
static_assert(kMaxRank == mt::kMaxDims);

ScalarType scalar_type(DType t) { return ScalarType(int(t)); }

// The device of a launch: made current for the scope, with its stream and SM count.
struct Launch {
  explicit Launch(Device d) : guard(d.index), stream(gpu::stream(d.index)), sms(sm_count(d.index)) {}
  DeviceGuard guard;
  cudaStream_t stream;
  int sms;
};

// The iteration space of writing `out` (any strides) from inputs broadcast to its shape.
template <size_t N>
Iter make_iter(const Tensor& out, const std::array<const Tensor*, N>& ins) {
  Shape shape = out.shape();
  std::array<Shape, N + 1> strides;
  strides[0] = out.strides();
  for (size_t k = 0; k < N; ++k) strides[k + 1] = cpu::broadcast_strides(*ins[k], shape);
  cpu::coalesce<N + 1>(shape, strides);
  Iter it;
  it.num_operands = int(N + 1);
  it.numel = out.numel();
  it.rank = shape.size();
  for (int d = 0; d < it.rank; ++d) {
    it.sizes[d] = shape[d];
    for (size_t k = 0; k <= N; ++k) it.strides[k][d] = strides[k][d];
  }
  if (it.numel == 1) {
    it.rank = 0;  // one element: every operand is read at offset 0
    it.flat = true;
  } else if (it.rank == 1) {
    bool flat = it.strides[0][0] == 1;
    for (size_t k = 1; k <= N; ++k) flat = flat && (it.strides[k][0] == 1 || it.strides[k][0] == 0);
    it.flat = flat;
  }
  return it;
}

void check_float(const Tensor& t, const char* op) {
  MT_CHECK(is_floating(t.dtype()), "{}: dtype {} is not supported on CUDA (f32, f64, f16 and "
           "bf16 are); convert with .to()", op, dtype_name(t.dtype()));
}

// ---- elementwise ----
template <UnaryOp op>
void unary_cuda(const Tensor& x, Tensor& out) {
  check_float(out, "unary op");
  Launch l(out.device());
  unary(op, scalar_type(out.dtype()), make_iter<1>(out, {&x}), out.raw_data(), x.raw_data(), 0.0,
        0.0, l.stream, l.sms);
}

void clamp_cuda(const Tensor& x, double lo, double hi, Tensor& out) {
  check_float(out, "clamp");
  Launch l(out.device());
  unary(UnaryOp::clamp, scalar_type(out.dtype()), make_iter<1>(out, {&x}), out.raw_data(),
        x.raw_data(), lo, hi, l.stream, l.sms);
}

template <BinaryOp op>
void binary_cuda(const Tensor& a, const Tensor& b, Tensor& out) {
  check_float(out, "binary op");
  Launch l(out.device());
  binary(op, scalar_type(out.dtype()), make_iter<2>(out, {&a, &b}), out.raw_data(), a.raw_data(),
         b.raw_data(), 0.0, l.stream, l.sms);
}

void where_cuda(const Tensor& mask, const Tensor& a, const Tensor& b, Tensor& out) {
  check_float(out, "where");
  Launch l(out.device());
  where(scalar_type(out.dtype()), make_iter<3>(out, {&mask, &a, &b}), out.raw_data(),
        mask.raw_data(), a.raw_data(), b.raw_data(), l.stream, l.sms);
}

template <GegluOp op>
void geglu_cuda(const Tensor& g, const Tensor& h, const Tensor& t, Tensor& out) {
  check_float(out, "geglu");
  MT_CHECK(h.is_contiguous() && out.is_contiguous() && (!g.defined() || g.is_contiguous()) &&
               (!t.defined() || t.is_contiguous()),
           "geglu: the operands must be contiguous (internal error)");
  Launch l(out.device());
  const int64_t F = h.size(-1) / 2;
  const int64_t rows = F > 0 ? h.numel() / (2 * F) : 0;
  geglu(op, scalar_type(out.dtype()), rows, F, g.defined() ? g.raw_data() : nullptr,
        h.raw_data(), t.defined() ? t.raw_data() : nullptr, out.raw_data(), l.stream);
}

void add3_cuda(const Tensor& a, const Tensor& b, const Tensor& c, Tensor& out) {
  check_float(out, "add3");
  Launch l(out.device());
  add3(scalar_type(out.dtype()), make_iter<3>(out, {&a, &b, &c}), out.raw_data(), a.raw_data(),
       b.raw_data(), c.raw_data(), l.stream, l.sms);
}

void rotate_pairs_cuda(const Tensor& x, const Tensor& c, const Tensor& s, double sign,
                       Tensor& out) {
  check_float(out, "rotate_pairs");
  MT_CHECK(x.is_contiguous() && c.is_contiguous() && s.is_contiguous() && out.is_contiguous(),
           "rotate_pairs: x, the tables and out must be contiguous (internal error)");
  Launch l(out.device());
  rotate_pairs(scalar_type(out.dtype()), x.size(0), x.size(1), x.size(2) / 2, x.raw_data(),
               c.raw_data(), s.raw_data(), sign, out.raw_data(), l.stream);
}

// ---- in-place writes ----
void fill_cuda(Tensor& t, double value) {
  Launch l(t.device());
  fill(scalar_type(t.dtype()), make_iter<0>(t, {}), t.raw_data(), value, l.stream, l.sms);
}

void add_inplace_cuda(Tensor& t, const Tensor& other, double alpha) {
  check_float(t, "add_");
  Launch l(t.device());
  binary(BinaryOp::axpy, scalar_type(t.dtype()), make_iter<2>(t, {&t, &other}), t.raw_data(),
         t.raw_data(), other.raw_data(), alpha, l.stream, l.sms);
}

void mul_inplace_cuda(Tensor& t, double value) {
  check_float(t, "mul_");
  Launch l(t.device());
  unary(UnaryOp::scale, scalar_type(t.dtype()), make_iter<1>(t, {&t}), t.raw_data(), t.raw_data(),
        value, 0.0, l.stream, l.sms);
}

// ---- copies ----
void copy_cuda(const Tensor& src, Tensor& dst) {
  MT_CHECK(src.device() == dst.device(), "copy: source on {} and destination on {}; use to()",
           src.device().str(), dst.device().str());
  Launch l(dst.device());
  copy(scalar_type(dst.dtype()), scalar_type(src.dtype()), make_iter<1>(dst, {&src}),
       dst.raw_data(), src.raw_data(), l.stream, l.sms);
}

// Host <-> device (and device <-> device) copies of contiguous tensors of equal size. A copy to
// the host waits for it (the caller reads the values next); a copy to the device goes through a
// pinned staging buffer (staging.h), so it neither waits nor keeps the host tensor in use.
void transfer_cuda(const Tensor& src, Tensor& dst) {
  const size_t nbytes = size_t(src.numel()) * itemsize(src.dtype());
  MT_CHECK(src.is_contiguous() && dst.is_contiguous() && src.numel() == dst.numel() &&
               src.dtype() == dst.dtype(),
           "to_device: internal error: {} -> {}", src.str(), dst.str());
  if (nbytes == 0) return;
  const Device from = src.device(), to = dst.device();
  if (from.is_cpu()) {
    copy_host_to_device(dst.raw_data(), src.raw_data(), nbytes, to.index);
  } else if (to.is_cpu()) {
    MT_CHECK(current_capture_id(from.index) == 0,
             "reading {} on the host while {} is being captured into a CUDA graph: the captured "
             "kernels have not run yet, and waiting for them would abandon the capture; read "
             "values after CudaGraph::replay()",
             src.str(), from.str());
    Launch l(from);
    MT_CUDA_CHECK(cudaMemcpyAsync(dst.raw_data(), src.raw_data(), nbytes, cudaMemcpyDeviceToHost,
                                  l.stream));
    MT_CUDA_CHECK(cudaStreamSynchronize(l.stream));
  } else {
    // Between two GPUs: the destination's stream waits for the source's work, then copies; the
    // source's stream waits for the copy before it may reuse the source's memory. Those waits
    // join the two devices' streams, which a graph capture on either cannot take in.
    MT_CHECK(current_capture_id(from.index) == 0 && current_capture_id(to.index) == 0,
             "copying {} to {} while {} is being captured into a CUDA graph: a graph holds the "
             "work of one device; copy between devices outside the capture",
             src.str(), to.str(), current_capture_id(from.index) != 0 ? from.str() : to.str());
    cudaStream_t s_from = stream(from.index), s_to = stream(to.index);
    cudaEvent_t ready, done;
    {
      DeviceGuard g(from.index);
      MT_CUDA_CHECK(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming));
      MT_CUDA_CHECK(cudaEventRecord(ready, s_from));
    }
    {
      DeviceGuard g(to.index);
      MT_CUDA_CHECK(cudaEventCreateWithFlags(&done, cudaEventDisableTiming));
      MT_CUDA_CHECK(cudaStreamWaitEvent(s_to, ready, 0));
      MT_CUDA_CHECK(cudaMemcpyPeerAsync(dst.raw_data(), to.index, src.raw_data(), from.index,
                                        nbytes, s_to));
      MT_CUDA_CHECK(cudaEventRecord(done, s_to));
    }
    DeviceGuard g(from.index);
    MT_CUDA_CHECK(cudaStreamWaitEvent(s_from, done, 0));
    MT_CUDA_CHECK(cudaEventDestroy(ready));
    MT_CUDA_CHECK(cudaEventDestroy(done));
  }
}

// ---- reductions ----
template <ReduceOp op>
void reduce_cuda(const Tensor& x, Tensor& out) {
  check_float(x, op == ReduceOp::sum ? "sum" : "max");
  const ReduceDesc d = describe_reduction(x, out);
  Tensor workspace;
  if (d.splits > 1) {
    workspace = empty(Shape{d.outer * d.splits}, x.dtype() == DType::f64 ? DType::f64 : DType::f32,
                      x.device());
  }
  Launch l(out.device());
  reduce(op, scalar_type(x.dtype()), d, out.raw_data(), x.raw_data(),
         workspace.defined() ? workspace.raw_data() : nullptr, l.stream, l.sms);
  // The workspace returns to the cache here; the stream orders its next user after this kernel.
}


// ---- matmul ----
// Copies only where the layout cannot be expressed to cuBLAS (describe_matmul).
void matmul_cuda(const Tensor& a, const Tensor& b, Tensor& out) {
  check_float(out, "matmul");
  if (out.numel() == 0) return;
  if (a.shape()[a.dim() - 1] == 0) {  // K = 0: an empty sum, whatever the operands' layouts
    Launch l(out.device());
    fill(scalar_type(out.dtype()), make_iter<0>(out, {}), out.raw_data(), 0.0, l.stream, l.sms);
    return;
  }
  Tensor ac = a, bc = b;
  GemmPlan plan = describe_matmul(ac, bc, out);
  if (!plan.a_fits || !plan.b_fits) {
    NoGradGuard no_grad;
    if (!plan.a_fits) ac = contiguous(ac);
    if (!plan.b_fits) bc = contiguous(bc);
    plan = describe_matmul(ac, bc, out);
    // Still no single batch stride: materialise the operand over the full batch.
    Shape batch = out.shape();
    batch.resize(out.dim() - 2);
    auto full = [&](const Tensor& t) {
      Shape s = batch;
      s.push_back(t.shape()[t.dim() - 2]);
      s.push_back(t.shape()[t.dim() - 1]);
      return contiguous(expand(t, s));
    };
    if (!plan.a_fits) ac = full(ac);
    if (!plan.b_fits) bc = full(bc);
    plan = describe_matmul(ac, bc, out);
    MT_CHECK(plan.a_fits && plan.b_fits, "matmul: internal error: no GEMM layout for {} x {}",
             a.str(), b.str());
  }
  Tensor workspace = empty(Shape{int64_t(kGemmWorkspaceBytes / 8)}, DType::i64, out.device());
  Launch l(out.device());
  // cuBLAS's first operand is the engine's b (C^T = B^T A^T, see launch.h).
  gemm(plan.desc, bc.raw_data(), ac.raw_data(), out.raw_data(), cuda_matmul_allow_tf32(),
       workspace.raw_data(), kGemmWorkspaceBytes, out.device().index, l.stream);
}

// ---- linear: the GEMM with a bias / ReLU epilogue ----
// out (rows, O) = act(x w^T + bias) as one cuBLASLt call. Undefined (nothing launched) where the
// epilogue does not apply, so linear() runs the composite: f64 (cuBLAS's f64 GEMM has no
// epilogue), gelu (cuBLASLt's GELU is the tanh approximation, the engine's gelu is exact), no
// bias and no activation (a plain GEMM already), empty problems, a bias that is not contiguous
// and 16-byte aligned, a weight layout cuBLAS cannot take without a copy, and problems for
// which cuBLASLt's heuristic offers no algorithm with the epilogue.
Tensor linear_cuda(const Tensor& x, const Tensor& w, const Tensor& bias, Activation act) {
  const DType t = x.dtype();
  if (t != DType::f32 && t != DType::f16 && t != DType::bf16) return Tensor();
  if (act == Activation::gelu || (act == Activation::none && !bias.defined())) return Tensor();
  if (x.dim() != 2 || !x.is_contiguous() || w.dim() != 2) return Tensor();
  const int64_t rows = x.size(0), O = w.size(0), K = x.size(1);
  if (rows == 0 || O == 0 || K == 0) return Tensor();
  if (bias.defined() &&
      (!bias.is_contiguous() || reinterpret_cast<uintptr_t>(bias.raw_data()) % 16 != 0))
    return Tensor();
  Tensor out = empty(Shape{rows, O}, t, x.device());
  GemmPlan plan;
  {
    NoGradGuard no_grad;
    plan = describe_matmul(x, transpose(w, 0, 1), out);
  }
  if (!plan.a_fits || !plan.b_fits) return Tensor();
  plan.desc.epilogue = act == Activation::relu
                           ? (bias.defined() ? GemmEpilogue::relu_bias : GemmEpilogue::relu)
                           : GemmEpilogue::bias;
  Tensor workspace = empty(Shape{int64_t(kGemmWorkspaceBytes / 8)}, DType::i64, out.device());
  Launch l(out.device());
  // cuBLAS's first operand is the engine's b = w^T (C^T = B^T A^T, see launch.h); the bias runs
  // along cuBLAS's m = O, the output features.
  if (!gemm_epilogue(plan.desc, w.raw_data(), x.raw_data(),
                     bias.defined() ? bias.raw_data() : nullptr, out.raw_data(),
                     cuda_matmul_allow_tf32(), workspace.raw_data(), kGemmWorkspaceBytes,
                     out.device().index, l.stream))
    return Tensor();
  return out;
}

// ---- softmax, layer_norm ----
void softmax_cuda(const Tensor& x, Tensor& out, bool log) {
  check_float(x, log ? "log_softmax" : "softmax");
  const int64_t D = x.dim() == 0 ? 1 : x.shape()[x.dim() - 1];
  const int64_t rows = D == 0 ? 0 : x.numel() / D;
  Launch l(out.device());
  softmax(scalar_type(x.dtype()), rows, D, x.raw_data(), out.raw_data(), log, l.stream, l.sms);
}

const void* data_or_null(const Tensor& t) { return t.defined() ? t.raw_data() : nullptr; }
void* data_or_null(Tensor& t) { return t.defined() ? t.raw_data() : nullptr; }

void layer_norm_cuda(const Tensor& x, const Tensor& weight, const Tensor& bias, int64_t D,
                     double eps, Tensor& out) {
  check_float(x, "layer_norm");
  const int64_t rows = D == 0 ? 0 : x.numel() / D;
  Launch l(out.device());
  layer_norm(scalar_type(x.dtype()), rows, D, x.raw_data(), data_or_null(weight),
             data_or_null(bias), eps, out.raw_data(), l.stream, l.sms);
}

void layer_norm_backward_cuda(const Tensor& x, const Tensor& weight, const Tensor& g, int64_t D,
                              double eps, Tensor& dx, Tensor& dw, Tensor& db) {
  check_float(x, "layer_norm_backward");
  const int64_t rows = D == 0 ? 0 : x.numel() / D;
  const ScalarType t = scalar_type(x.dtype());
  Tensor workspace;
  if (dw.defined() || db.defined()) {
    const size_t bytes = layer_norm_backward_workspace(t, rows, D);
    workspace = empty(Shape{int64_t(bytes / 8 + 1)}, DType::i64, x.device());
  }
  Launch l(x.device());
  layer_norm_backward(t, rows, D, x.raw_data(), data_or_null(weight), g.raw_data(), eps,
                      data_or_null(dx), data_or_null(dw), data_or_null(db),
                      data_or_null(workspace), l.stream, l.sms);
}

void layer_norm_double_backward_cuda(const Tensor& x, const Tensor& weight, const Tensor& g,
                                     const Tensor& v, int64_t D, double eps, Tensor& gx,
                                     Tensor& gw, Tensor& gg) {
  check_float(x, "layer_norm_double_backward");
  MT_CHECK(x.is_contiguous() && g.is_contiguous() && v.is_contiguous() &&
               (!weight.defined() || weight.is_contiguous()) &&
               (!gx.defined() || gx.is_contiguous()) && (!gw.defined() || gw.is_contiguous()) &&
               (!gg.defined() || gg.is_contiguous()),
           "layer_norm_double_backward: the operands must be contiguous (internal error)");
  const int64_t rows = D == 0 ? 0 : x.numel() / D;
  const ScalarType t = scalar_type(x.dtype());
  Tensor workspace;
  if (gw.defined()) {
    const size_t bytes = layer_norm_double_backward_workspace(t, rows, D);
    workspace = empty(Shape{int64_t(bytes / 8 + 1)}, DType::i64, x.device());
  }
  Launch l(x.device());
  layer_norm_double_backward(t, rows, D, x.raw_data(), data_or_null(weight), g.raw_data(),
                             v.raw_data(), eps, data_or_null(gx), data_or_null(gw),
                             data_or_null(gg), data_or_null(workspace), l.stream, l.sms);
}

// ---- embedding ----
void embedding_cuda(const Tensor& weight, const Tensor& indices, Tensor& out) {
  check_float(weight, "embedding");
  Launch l(out.device());
  embedding(scalar_type(weight.dtype()), indices.numel(), weight.shape()[1], weight.shape()[0],
            weight.raw_data(), indices.data_ptr<int64_t>(), out.raw_data(), l.stream, l.sms);
}

void embedding_backward_cuda(const Tensor& rows, const Tensor& indices, Tensor& out) {
  check_float(rows, "embedding_backward");
  const int64_t n = indices.numel(), V = out.shape()[0], D = out.shape()[1];
  const size_t bytes = embedding_backward_workspace(n, V);
  Tensor workspace;
  if (bytes > 0) workspace = empty(Shape{int64_t(bytes / 8 + 1)}, DType::i64, out.device());
  Launch l(out.device());
  embedding_backward(scalar_type(rows.dtype()), n, D, V, rows.raw_data(),
                     indices.data_ptr<int64_t>(), out.raw_data(), data_or_null(workspace),
                     bytes, l.stream, l.sms);
}

// ---- random ----
void random_cuda(Tensor& out, Distribution dist, double a, double b, uint64_t seed,
                 uint64_t first_block) {
  check_float(out, "random");
  // The seed and offset are kernel arguments fixed at capture: every replay would draw the same
  // numbers (the same dropout mask each step), silently. Refused instead.
  MT_CHECK(current_capture_id(out.device().index) == 0,
           "random draws on {} while its stream is being captured into a CUDA graph: every "
           "replay would repeat the numbers of the capture (the same dropout mask each step); "
           "capture a step without dropout or random draws, or run it eagerly",
           out.device().str());
  const RandomDist d = dist == Distribution::normal    ? RandomDist::normal
                       : dist == Distribution::uniform ? RandomDist::uniform
                                                       : RandomDist::bernoulli;
  Launch l(out.device());
  random(scalar_type(out.dtype()), d, out.numel(), a, b, seed, first_block, out.raw_data(),
         l.stream, l.sms);
}

// ---- fused attention ----
// The offsets and the CTAs' (sample, first row) tables, built on the host from the host offsets
// and copied to the device in one buffer (no read back, no wait). The buffer returns to the
// cache when the launcher returns; the stream orders its next user after these kernels.
struct FlashTables {
  Tensor buffer;
  FlashDesc desc;
};
// Key splits per sample for the query-side kernels (FlashDesc::kv_splits): 1 with the simple
// kernels or when the grid of (query block, head) CTAs already gives 4 per SM (the seed shapes:
// 1024 CTAs); otherwise enough splits for about 8 CTAs per SM, each split keeping at least 128
// keys (two 64-key tiles) of the longest sample, at most 16. A forced count
// (cuda_flash_kv_splits) wins, for tests.
int64_t flash_kv_splits(int64_t ctas, int64_t max_keys, int sms) {
  if (cuda_flash_kernels() == FlashKernels::simple) return 1;
  if (const int forced = cuda_flash_kv_splits(); forced > 0) return std::min(forced, 64);
  if (ctas == 0) return 1;
  const int64_t target = 8 * int64_t(std::max(sms, 1));
  if (ctas >= target / 2) return 1;
  const int64_t by_grid = (target + ctas - 1) / ctas;
  const int64_t by_keys = std::max<int64_t>(1, max_keys / 128);
  return std::max<int64_t>(1, std::min({by_grid, by_keys, int64_t(16)}));
}

FlashTables flash_tables(const Tensor& q, const FlashAttentionLayout& layout, const char* op) {
  check_float(q, op);
  MT_CHECK(q.size(2) <= kFlashMaxHeadDim,
           "{}: head dim {} is larger than the CUDA kernels' {}; use varlen_attention's "
           "composite modes (padded, per_sample)",
           op, q.size(2), kFlashMaxHeadDim);
  MT_CHECK(q.size(1) <= 65535,
           "{}: {} heads; the CUDA kernels take at most 65535 (one grid row per head)", op,
           q.size(1));
  const std::vector<int64_t>& cq = *layout.cu_q;
  const std::vector<int64_t>& ck = *layout.cu_k;
  const int64_t B = int64_t(cq.size()) - 1;
  // Query-side and key-side CTAs: one per sample and block of kFlashBlockRows rows.
  auto block_count = [&](const std::vector<int64_t>& cu) {
    int64_t count = 0;
    for (int64_t b = 0; b < B; ++b)
      count += (cu[size_t(b) + 1] - cu[size_t(b)] + kFlashBlockRows - 1) / kFlashBlockRows;
    return count;
  };
  FlashTables t;
  t.desc.num_q_blocks = block_count(cq);
  t.desc.num_k_blocks = block_count(ck);
  const int64_t table_size = 2 * (B + 1) + 2 * (t.desc.num_q_blocks + t.desc.num_k_blocks);
  // One copy per attention call: the call's other kernels reuse it (same device, same capture
  // state; the tables depend on the offsets alone). The host tables are built only for a copy.
  FlashAttentionLayout::DeviceTables* cache = layout.device_tables;
  const unsigned long long capture = current_capture_id(q.device().index);
  if (cache != nullptr && cache->buffer.defined() && cache->buffer.device() == q.device() &&
      cache->capture_id == capture && cache->buffer.numel() == table_size) {
    t.buffer = cache->buffer;
  } else {
    // cu_q, cu_k, then (sample, first row) of every query-side CTA, then of every key-side one.
    std::vector<int64_t> host(cq.begin(), cq.end());
    host.insert(host.end(), ck.begin(), ck.end());
    for (const std::vector<int64_t>* cu : {&cq, &ck})
      for (int64_t b = 0; b < B; ++b)
        for (int64_t r = 0; r < (*cu)[size_t(b) + 1] - (*cu)[size_t(b)]; r += kFlashBlockRows) {
          host.push_back(b);
          host.push_back(r);
        }
    t.buffer = from_indices(host, Shape{table_size}).to(q.device());
    if (cache != nullptr) *cache = {t.buffer, capture};
  }
  const int64_t* base = t.buffer.data_ptr<int64_t>();
  t.desc.num_queries = q.size(0);
  t.desc.heads = q.size(1);
  t.desc.dh = q.size(2);
  t.desc.scale = layout.scale;
  t.desc.cu_q = base;
  t.desc.cu_k = base + (B + 1);
  t.desc.q_blocks = base + 2 * (B + 1);
  t.desc.k_blocks = t.desc.q_blocks + 2 * t.desc.num_q_blocks;
  int64_t max_keys = 0;
  for (int64_t b = 0; b < B; ++b) max_keys = std::max(max_keys, ck[size_t(b) + 1] - ck[size_t(b)]);
  t.desc.mma = cuda_flash_kernels() == FlashKernels::mma &&
               (q.dtype() != DType::f32 || cuda_flash_f32_tensor_cores());
  t.desc.tf32 = cuda_matmul_allow_tf32();  // f32 attention products as matmuls: 1xTF32 or 3xTF32
  t.desc.kv_splits = flash_kv_splits(t.desc.num_q_blocks * t.desc.heads, max_keys,
                                     sm_count(q.device().index));
  return t;
}

DType flash_acc_dtype(const Tensor& q) { return q.dtype() == DType::f64 ? DType::f64 : DType::f32; }

void flash_attention_cuda(const Tensor& q, const Tensor& k, const Tensor& v,
                          const FlashAttentionLayout& layout, Tensor& o, Tensor& lse) {
  const FlashTables t = flash_tables(q, layout, "flash_attention");
  // Split partials (acc, m, l), empty without splits.
  Tensor workspace = empty(Shape{flash_forward_workspace(t.desc)}, flash_acc_dtype(q), q.device());
  Launch l(q.device());
  const bool mma =
      flash_forward(scalar_type(q.dtype()), t.desc, q.raw_data(), k.raw_data(), v.raw_data(),
                    o.raw_data(), lse.raw_data(), workspace.raw_data(), l.stream);
  if (mma) note_cuda_flash_mma(FlashPass::forward);
}

void flash_attention_backward_cuda(const Tensor& q, const Tensor& k, const Tensor& v,
                                   const Tensor& o, const Tensor& dO, const Tensor& lse,
                                   const FlashAttentionLayout& layout, Tensor& dq, Tensor& dk,
                                   Tensor& dv) {
  const FlashTables t = flash_tables(q, layout, "flash_attention_backward");
  // D, then the split partials of dq.
  Tensor workspace = empty(Shape{flash_backward_workspace(t.desc)}, flash_acc_dtype(q), q.device());
  Launch l(q.device());
  const bool mma =
      flash_backward(scalar_type(q.dtype()), t.desc, q.raw_data(), k.raw_data(), v.raw_data(),
                     o.raw_data(), dO.raw_data(), lse.raw_data(), dq.raw_data(), dk.raw_data(),
                     dv.raw_data(), workspace.raw_data(), l.stream);
  if (mma) note_cuda_flash_mma(FlashPass::backward);
}

void flash_attention_double_backward_cuda(const Tensor& q, const Tensor& k, const Tensor& v,
                                          const Tensor& o, const Tensor& dO, const Tensor& lse,
                                          const Tensor& a, const Tensor& b, const Tensor& c,
                                          const FlashAttentionLayout& layout, Tensor& gq,
                                          Tensor& gk, Tensor& gv, Tensor& gdO) {
  const FlashTables t = flash_tables(q, layout, "flash_attention_double_backward");
  // D, r, E per query row and head, then the split partials.
  Tensor workspace =
      empty(Shape{flash_double_backward_workspace(t.desc)}, flash_acc_dtype(q), q.device());
  Launch l(q.device());
  const bool mma = flash_double_backward(
      scalar_type(q.dtype()), t.desc, q.raw_data(), k.raw_data(), v.raw_data(), o.raw_data(),
      dO.raw_data(), lse.raw_data(), a.raw_data(), b.raw_data(), c.raw_data(), gq.raw_data(),
      gk.raw_data(), gv.raw_data(), gdO.raw_data(), workspace.raw_data(), l.stream);
  if (mma) note_cuda_flash_mma(FlashPass::double_backward);
}

// ---- multi-tensor arithmetic: entries grouped by dtype, each group a few launches ----
namespace {
// The entries of `a` (and `b`, `out`) by storage type, in list order.
std::vector<std::pair<ScalarType, std::vector<ForeachEntry>>> foreach_groups(
    const TensorList& a, const TensorList* b, const TensorList* out, const char* op) {
  std::vector<std::pair<ScalarType, std::vector<ForeachEntry>>> groups;
  for (size_t i = 0; i < a.size(); ++i) {
    check_float(a[i], op);
    MT_CHECK(a[i].is_contiguous() && (!b || (*b)[i].is_contiguous()) &&
                 (!out || (*out)[i].is_contiguous()),
             "{}: entry {} is not contiguous (internal error)", op, i);
    const ScalarType t = scalar_type(a[i].dtype());
    auto it = std::find_if(groups.begin(), groups.end(), [&](const auto& g) { return g.first == t; });
    if (it == groups.end()) it = groups.insert(groups.end(), {t, {}});
    it->second.push_back(ForeachEntry{a[i].numel(), out ? (*out)[i].raw_data() : nullptr,
                                      a[i].raw_data(), b ? (*b)[i].raw_data() : nullptr});
  }
  return groups;
}
}  // namespace

void foreach_add_cuda(const TensorList& a, const TensorList& b, const TensorList& out) {
  Launch l(a[0].device());
  for (const auto& [t, e] : foreach_groups(a, &b, &out, "foreach_add")) foreach_add(t, e, l.stream);
}

void foreach_scale_cuda(const TensorList& a, double factor, const TensorList& out) {
  Launch l(a[0].device());
  for (const auto& [t, e] : foreach_groups(a, nullptr, &out, "foreach_mul_"))
    foreach_scale(t, e, factor, l.stream);
}

void foreach_mul_cuda(const TensorList& a, const Tensor& factor, const TensorList& out) {
  Launch l(a[0].device());
  for (const auto& [t, e] : foreach_groups(a, nullptr, &out, "foreach_mul"))
    foreach_mul(t, e, factor.data_ptr<double>(), l.stream);
}

void foreach_sum_squares_cuda(const TensorList& a, Tensor& out) {
  Launch l(a[0].device());
  const auto groups = foreach_groups(a, nullptr, nullptr, "foreach_sum_squares");
  int64_t chunks = 0;
  for (const auto& [t, e] : groups) chunks += foreach_chunks(e);
  // One partial per chunk (a zero-element list has none: the sum is then 0).
  Tensor partials = empty(Shape{std::max<int64_t>(chunks, 1)}, DType::f64, out.device());
  double* p = partials.data_ptr<double>();
  for (const auto& [t, e] : groups) {
    foreach_sum_squares(t, e, p, l.stream);
    p += foreach_chunks(e);
  }
  foreach_sum_partials(partials.data_ptr<double>(), chunks, out.data_ptr<double>(), l.stream);
}

// ---- optimizers: the scalars exactly as engine/optim's CPU kernels compute them ----
// The AdamW kernels index every tensor flat: all of them contiguous, with the parameter's size.
void check_adamw_layout(const Tensor& param, const Tensor& grad, const Tensor& exp_avg,
                        const Tensor& exp_avg_sq, const Tensor& max_exp_avg_sq, bool amsgrad) {
  bool ok = param.is_contiguous();
  for (const Tensor* t : {&grad, &exp_avg, &exp_avg_sq})
    ok = ok && t->is_contiguous() && t->numel() == param.numel();
  if (amsgrad) ok = ok && max_exp_avg_sq.is_contiguous() && max_exp_avg_sq.numel() == param.numel();
  MT_CHECK(ok,
           "adamw: the parameter {}, its gradient and its state must be contiguous tensors of its "
           "size (internal error)",
           param.str());
}

AdamWScalars adamw_scalars(int64_t step, const optim::AdamWHyper& h) {
  AdamWScalars s;
  s.decay = h.weight_decay != 0;
  s.decay_factor = 1 - h.lr * h.weight_decay;
  s.w = 1 - h.beta1;
  s.small_w = std::abs(1 - h.beta1) < 0.5;
  s.beta2 = h.beta2;
  s.one_minus_beta2 = 1 - h.beta2;
  const double bias_correction1 = 1 - std::pow(h.beta1, double(step));
  const double bias_correction2 = 1 - std::pow(h.beta2, double(step));
  s.neg_step_size = -(h.lr / bias_correction1);
  s.bias_correction2_sqrt = std::pow(bias_correction2, 0.5);
  s.eps = h.eps;
  s.amsgrad = h.amsgrad;
  s.maximize = h.maximize;
  return s;
}

void adamw_cuda(Tensor& param, const Tensor& grad, Tensor& exp_avg, Tensor& exp_avg_sq,
                Tensor& max_exp_avg_sq, int64_t step, const optim::AdamWHyper& h) {
  check_float(param, "adamw");
  check_adamw_layout(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, h.amsgrad);
  const AdamWScalars s = adamw_scalars(step, h);
  Launch l(param.device());
  adamw(scalar_type(param.dtype()), param.numel(), param.raw_data(), grad.raw_data(),
        exp_avg.raw_data(), exp_avg_sq.raw_data(), h.amsgrad ? max_exp_avg_sq.raw_data() : nullptr,
        s, l.stream, l.sms);
}

void adamw_device_step_cuda(Tensor& param, const Tensor& grad, Tensor& exp_avg,
                            Tensor& exp_avg_sq, Tensor& max_exp_avg_sq, Tensor& step,
                            const optim::AdamWHyper& h) {
  check_float(param, "adamw");
  check_adamw_layout(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, h.amsgrad);
  MT_CHECK(step.dtype() == DType::i64 && step.numel() == 1 && step.device() == param.device(),
           "adamw (capturable): the step count must be a 0-d i64 tensor on {}, got {}",
           param.device().str(), step.str());
  AdamWScalars s = adamw_scalars(1, h);  // the step-dependent two are computed on the device
  s.device_step = step.data_ptr<int64_t>();
  s.lr = h.lr;
  s.beta1 = h.beta1;
  Launch l(param.device());
  adamw(scalar_type(param.dtype()), param.numel(), param.raw_data(), grad.raw_data(),
        exp_avg.raw_data(), exp_avg_sq.raw_data(), h.amsgrad ? max_exp_avg_sq.raw_data() : nullptr,
        s, l.stream, l.sms);
  step.storage().bump_version();
}

void adamw_foreach_cuda(std::vector<optim::AdamWEntry>& entries, const optim::AdamWHyper& h) {
  AdamWScalars s = adamw_scalars(1, h);  // the step-independent scalars; lr, beta1 for counts
  s.lr = h.lr;
  s.beta1 = h.beta1;
  std::vector<std::pair<ScalarType, std::vector<AdamWForeachEntry>>> groups;
  for (optim::AdamWEntry& e : entries) {
    check_float(e.param, "adamw");
    check_adamw_layout(e.param, e.grad, e.exp_avg, e.exp_avg_sq, e.max_exp_avg_sq, h.amsgrad);
    AdamWForeachEntry x{};
    x.n = e.param.numel();
    x.param = e.param.raw_data();
    x.grad = e.grad.raw_data();
    x.exp_avg = e.exp_avg.raw_data();
    x.exp_avg_sq = e.exp_avg_sq.raw_data();
    x.max_exp_avg_sq = h.amsgrad ? e.max_exp_avg_sq.raw_data() : nullptr;
    if (e.device_step.defined()) {
      MT_CHECK(e.device_step.dtype() == DType::i64 && e.device_step.numel() == 1 &&
                   e.device_step.device() == e.param.device(),
               "adamw (capturable): the step count must be a 0-d i64 tensor on {}, got {}",
               e.param.device().str(), e.device_step.str());
      x.step = e.device_step.data_ptr<int64_t>();
    } else {
      const AdamWScalars own = adamw_scalars(e.step, h);
      x.neg_step_size = own.neg_step_size;
      x.bias_correction2_sqrt = own.bias_correction2_sqrt;
    }
    const ScalarType t = scalar_type(e.param.dtype());
    auto it = std::find_if(groups.begin(), groups.end(), [&](const auto& g) { return g.first == t; });
    if (it == groups.end()) it = groups.insert(groups.end(), {t, {}});
    it->second.push_back(x);
  }
  if (entries.empty()) return;
  Launch l(entries[0].param.device());
  for (const auto& [t, e] : groups) adamw_foreach(t, e, s, l.stream);
}

SgdScalars sgd_scalars(bool first, const optim::SgdHyper& h) {
  SgdScalars s;
  s.decay = h.weight_decay != 0;
  s.weight_decay = h.weight_decay;
  s.momentum = h.momentum;
  s.one_minus_dampening = 1 - h.dampening;
  s.neg_lr = -h.lr;
  s.nesterov = h.nesterov;
  s.maximize = h.maximize;
  s.first = first;
  return s;
}

void sgd_cuda(Tensor& param, const Tensor& grad, Tensor& momentum_buffer, bool first,
              const optim::SgdHyper& h) {
  check_float(param, "sgd");
  const SgdScalars s = sgd_scalars(first, h);
  Launch l(param.device());
  sgd(scalar_type(param.dtype()), param.numel(), param.raw_data(), grad.raw_data(),
      h.momentum != 0 ? momentum_buffer.raw_data() : nullptr, s, l.stream, l.sms);
}

// ---- sparse row updates of an embedding table: the sort's workspace from the allocator ----
Tensor index_sort_buffer(int64_t n, int64_t V, Device d, size_t& bytes) {
  bytes = index_sort_workspace(n, V);
  return bytes > 0 ? empty(Shape{int64_t(bytes / 8 + 1)}, DType::i64, d) : Tensor();
}

void sparse_sgd_rows_cuda(Tensor& weight, const Tensor& indices, const Tensor& grad_rows,
                          const optim::SgdHyper& h) {
  check_float(weight, "sparse_sgd_rows");
  const int64_t n = indices.numel(), V = weight.shape()[0], D = weight.shape()[1];
  size_t bytes = 0;
  Tensor workspace = index_sort_buffer(n, V, weight.device(), bytes);
  const SgdScalars s = sgd_scalars(false, h);
  Launch l(weight.device());
  sparse_sgd_rows(scalar_type(weight.dtype()), n, D, V, weight.raw_data(),
                  indices.data_ptr<int64_t>(), grad_rows.raw_data(), s,
                  data_or_null(workspace), bytes, l.stream, l.sms);
}

void sparse_adamw_rows_cuda(Tensor& weight, Tensor& exp_avg, Tensor& exp_avg_sq,
                            const Tensor& indices, const Tensor& grad_rows, int64_t step,
                            const optim::AdamWHyper& h) {
  check_float(weight, "sparse_adamw_rows");
  const int64_t n = indices.numel(), V = weight.shape()[0], D = weight.shape()[1];
  size_t bytes = 0;
  Tensor workspace = index_sort_buffer(n, V, weight.device(), bytes);
  const AdamWScalars s = adamw_scalars(step, h);
  Launch l(weight.device());
  sparse_adamw_rows(scalar_type(weight.dtype()), scalar_type(exp_avg.dtype()), n, D, V,
                    weight.raw_data(), exp_avg.raw_data(), exp_avg_sq.raw_data(),
                    indices.data_ptr<int64_t>(), grad_rows.raw_data(), s,
                    data_or_null(workspace), bytes, l.stream, l.sms);
}

}  // namespace

namespace {

// A (R x C) row-major-indexed matrix with strides (s0, s1) as a cuBLAS operand whose op is its
// transpose (C x R): stored column-major (C x R) untransposed when rows are unit-stride, or
// (R x C) transposed when columns are. Size-1 dims may have any stride. False: needs a copy.
bool matrix_layout(int64_t R, int64_t C, int64_t s0, int64_t s1, GemmOperand& o) {
  if ((s1 == 1 || C == 1) && (R == 1 || s0 >= std::max<int64_t>(C, 1))) {
    o.trans = false;
    o.ld = R == 1 ? std::max<int64_t>(C, 1) : s0;
    return true;
  }
  if ((s0 == 1 || R == 1) && (C == 1 || s1 >= std::max<int64_t>(R, 1))) {
    o.trans = true;
    o.ld = C == 1 ? std::max<int64_t>(R, 1) : s1;
    return true;
  }
  return false;
}

// Whether batch entry i (row-major over sizes) starts at i * stride for one stride; sets it.
bool single_batch_stride(const Shape& sizes, const Shape& strides, int64_t& stride) {
  int d = sizes.size() - 1;
  while (d >= 0 && sizes[d] == 1) --d;
  stride = d >= 0 ? strides[d] : 0;
  int64_t expected = stride;
  for (; d >= 0; --d) {
    if (sizes[d] == 1) continue;
    if (strides[d] != expected) return false;
    expected *= sizes[d];
  }
  return true;
}

}  // namespace

GemmPlan describe_matmul(const Tensor& a, const Tensor& b, const Tensor& out) {
  const int r = out.dim();
  const int64_t M = out.shape()[r - 2], N = out.shape()[r - 1], K = a.shape()[a.dim() - 1];
  Shape batch = out.shape();
  batch.resize(r - 2);
  auto operand = [&](const Tensor& t, int64_t R, int64_t C, GemmOperand& o) {
    if (!matrix_layout(R, C, t.strides()[t.dim() - 2], t.strides()[t.dim() - 1], o)) return false;
    // Batch strides as seen from the output's batch dims (0 where broadcast), as the CPU kernel.
    Shape s = Shape::filled(batch.size(), 0);
    const int lead = batch.size() - (t.dim() - 2);
    for (int i = 0; i < t.dim() - 2; ++i) s[lead + i] = t.shape()[i] == 1 ? 0 : t.strides()[i];
    return single_batch_stride(batch, s, o.batch_stride);
  };
  GemmPlan plan;
  GemmDesc& d = plan.desc;
  d.t = scalar_type(out.dtype());
  d.m = N;
  d.n = M;
  d.k = K;
  d.batch = batch.numel();
  plan.b_fits = operand(b, K, N, d.a);  // cuBLAS's a is the engine's b
  plan.a_fits = operand(a, M, K, d.b);
  d.ldc = std::max<int64_t>(N, 1);
  d.batch_stride_c = M * N;
  return plan;
}

ReduceDesc describe_reduction(const Tensor& x, const Tensor& out) {
  // Kept dims (out has x's size) iterate the outputs; reduced dims (out has 1) the elements.
  Shape outer, outer_x, outer_out, inner, inner_x;
  for (int d = 0; d < x.dim(); ++d) {
    if (x.shape()[d] == out.shape()[d]) {
      outer.push_back(x.shape()[d]);
      outer_x.push_back(x.strides()[d]);
      outer_out.push_back(out.strides()[d]);
    } else {
      inner.push_back(x.shape()[d]);
      inner_x.push_back(x.strides()[d]);
    }
  }
  std::array<Shape, 2> os{outer_x, outer_out};
  std::array<Shape, 1> is{inner_x};
  ReduceDesc d;
  d.outer = outer.numel();
  d.inner = inner.numel();
  cpu::coalesce<2>(outer, os);
  cpu::coalesce<1>(inner, is);
  d.outer_rank = outer.size();
  d.inner_rank = inner.size();
  for (int i = 0; i < d.outer_rank; ++i) {
    d.outer_sizes[i] = outer[i];
    d.outer_x_strides[i] = os[0][i];
    d.outer_out_strides[i] = os[1][i];
  }
  for (int i = 0; i < d.inner_rank; ++i) {
    d.inner_sizes[i] = inner[i];
    d.inner_x_strides[i] = is[0][i];
  }
  auto magnitude = [](int64_t v) { return v < 0 ? -v : v; };
  d.rows = d.inner_rank > 0 &&
           (d.outer_rank == 0 || magnitude(d.inner_x_strides[d.inner_rank - 1]) <=
                                     magnitude(d.outer_x_strides[d.outer_rank - 1]));
  d.splits = reduce_splits(d);
  return d;
}

Iter describe_elementwise(const Tensor& out, std::initializer_list<const Tensor*> ins) {
  const Tensor* const* p = ins.begin();
  switch (ins.size()) {
    case 0: return make_iter<0>(out, {});
    case 1: return make_iter<1>(out, {p[0]});
    case 2: return make_iter<2>(out, {p[0], p[1]});
    case 3: return make_iter<3>(out, {p[0], p[1], p[2]});
    default: MT_FAIL("describe_elementwise: {} inputs; at most 3 are supported", ins.size());
  }
}

void register_kernels() {
  constexpr DeviceType kCuda = DeviceType::CUDA;
  neg_kernel.set(kCuda, &unary_cuda<UnaryOp::neg>);
  exp_kernel.set(kCuda, &unary_cuda<UnaryOp::exp>);
  log_kernel.set(kCuda, &unary_cuda<UnaryOp::log>);
  sqrt_kernel.set(kCuda, &unary_cuda<UnaryOp::sqrt>);
  rsqrt_kernel.set(kCuda, &unary_cuda<UnaryOp::rsqrt>);
  abs_kernel.set(kCuda, &unary_cuda<UnaryOp::abs>);
  sign_kernel.set(kCuda, &unary_cuda<UnaryOp::sign>);
  tanh_kernel.set(kCuda, &unary_cuda<UnaryOp::tanh>);
  sigmoid_kernel.set(kCuda, &unary_cuda<UnaryOp::sigmoid>);
  relu_kernel.set(kCuda, &unary_cuda<UnaryOp::relu>);
  erf_kernel.set(kCuda, &unary_cuda<UnaryOp::erf>);
  sin_kernel.set(kCuda, &unary_cuda<UnaryOp::sin>);
  cos_kernel.set(kCuda, &unary_cuda<UnaryOp::cos>);
  gelu_kernel.set(kCuda, &unary_cuda<UnaryOp::gelu>);
  gelu_second_derivative_kernel.set(kCuda, &unary_cuda<UnaryOp::gelu_second_derivative>);
  clamp_kernel.set(kCuda, &clamp_cuda);

  add_kernel.set(kCuda, &binary_cuda<BinaryOp::add>);
  sub_kernel.set(kCuda, &binary_cuda<BinaryOp::sub>);
  mul_kernel.set(kCuda, &binary_cuda<BinaryOp::mul>);
  div_kernel.set(kCuda, &binary_cuda<BinaryOp::div>);
  pow_kernel.set(kCuda, &binary_cuda<BinaryOp::pow>);
  eq_kernel.set(kCuda, &binary_cuda<BinaryOp::eq>);
  ne_kernel.set(kCuda, &binary_cuda<BinaryOp::ne>);
  lt_kernel.set(kCuda, &binary_cuda<BinaryOp::lt>);
  le_kernel.set(kCuda, &binary_cuda<BinaryOp::le>);
  gt_kernel.set(kCuda, &binary_cuda<BinaryOp::gt>);
  ge_kernel.set(kCuda, &binary_cuda<BinaryOp::ge>);
  gelu_backward_kernel.set(kCuda, &binary_cuda<BinaryOp::gelu_backward>);
  add3_kernel.set(kCuda, &add3_cuda);
  rotate_pairs_kernel.set(kCuda, &rotate_pairs_cuda);
  geglu_kernel.set(kCuda, &geglu_cuda<GegluOp::forward>);
  geglu_backward_kernel.set(kCuda, &geglu_cuda<GegluOp::backward>);
  geglu_jvp_kernel.set(kCuda, &geglu_cuda<GegluOp::jvp>);
  geglu_hvp_kernel.set(kCuda, &geglu_cuda<GegluOp::hvp>);
  relu_backward_kernel.set(kCuda, &binary_cuda<BinaryOp::relu_backward>);
  where_kernel.set(kCuda, &where_cuda);

  sum_kernel.set(kCuda, &reduce_cuda<ReduceOp::sum>);
  max_kernel.set(kCuda, &reduce_cuda<ReduceOp::max>);

  copy_kernel.set(kCuda, &copy_cuda);
  transfer_kernel.set(kCuda, &transfer_cuda);
  fill_kernel.set(kCuda, &fill_cuda);
  add_inplace_kernel.set(kCuda, &add_inplace_cuda);
  mul_inplace_kernel.set(kCuda, &mul_inplace_cuda);

  matmul_kernel.set(kCuda, &matmul_cuda);
  linear_kernel.set(kCuda, &linear_cuda);
  softmax_kernel.set(kCuda, &softmax_cuda);
  layer_norm_kernel.set(kCuda, &layer_norm_cuda);
  layer_norm_backward_kernel.set(kCuda, &layer_norm_backward_cuda);
  layer_norm_double_backward_kernel.set(kCuda, &layer_norm_double_backward_cuda);
  embedding_kernel.set(kCuda, &embedding_cuda);
  embedding_backward_kernel.set(kCuda, &embedding_backward_cuda);
  random_kernel.set(kCuda, &random_cuda);
  flash_attention_kernel.set(kCuda, &flash_attention_cuda);
  flash_attention_backward_kernel.set(kCuda, &flash_attention_backward_cuda);
  flash_attention_double_backward_kernel.set(kCuda, &flash_attention_double_backward_cuda);
  optim::adamw_kernel.set(kCuda, &adamw_cuda);
  optim::adamw_device_step_kernel.set(kCuda, &adamw_device_step_cuda);
  optim::adamw_foreach_kernel.set(kCuda, &adamw_foreach_cuda);
  foreach_add_kernel.set(kCuda, &foreach_add_cuda);
  foreach_scale_kernel.set(kCuda, &foreach_scale_cuda);
  foreach_mul_kernel.set(kCuda, &foreach_mul_cuda);
  foreach_sum_squares_kernel.set(kCuda, &foreach_sum_squares_cuda);
  optim::sgd_kernel.set(kCuda, &sgd_cuda);
  optim::sparse_sgd_rows_kernel.set(kCuda, &sparse_sgd_rows_cuda);
  optim::sparse_adamw_rows_kernel.set(kCuda, &sparse_adamw_rows_cuda);
}

}  // namespace mt::gpu
