// Batched GEMMs through cuBLASLt (f32, f16, bf16; cuBLAS's strided-batched GEMM for f64, and
// as the fallback when cuBLASLt's heuristic offers no algorithm), on the device's compute
// stream. Handles are created once per device; the descriptors and the algorithm chosen for a
// problem (dtype, sizes, transposes, leading dims, batch strides, pointer alignments, TF32) are
// cached, so a repeated shape costs one map lookup on the host. gemm_epilogue adds a bias and
// ReLU epilogue (part of the cached problem; the bias pointer is set on the cached descriptor
// per call) and reports, instead of falling back itself, when no algorithm has it. Workspace:
// a per-call block from the caching allocator (the launcher in ops.cpp), returned to the cache
// when the call is queued; the stream orders its reuse.
#include <cublasLt.h>
#include <cublas_v2.h>

#include <array>
#include <atomic>
#include <map>
#include <memory>
#include <mutex>

#include "engine/core/matmul_settings.h"
#include "engine/core/error.h"
#include "kernels/cuda/check.h"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/stream.h"

#define MT_CUBLAS_CHECK(call)                                                               \
  do {                                                                                      \
    cublasStatus_t mt_cublas_status_ = (call);                                              \
    MT_CHECK(mt_cublas_status_ == CUBLAS_STATUS_SUCCESS, "cuBLAS error {} ({}) in {}",      \
             cublasGetStatusName(mt_cublas_status_), cublasGetStatusString(mt_cublas_status_), \
             #call);                                                                        \
  } while (0)

namespace mt {

namespace {
std::atomic<bool> allow_tf32{false};
}
void set_cuda_matmul_allow_tf32(bool allow) { allow_tf32.store(allow); }
bool cuda_matmul_allow_tf32() { return allow_tf32.load(); }

namespace gpu {
namespace {

// cuBLASLt calls that applied an epilogue (cuda_linear_epilogue_calls()).
std::atomic<unsigned long long> epilogue_calls{0};

constexpr int kMaxDevices = 64;

struct Handles {
  cublasLtHandle_t lt = nullptr;
  cublasHandle_t blas = nullptr;
};

// Created on first use and never destroyed (like the streams: they outlive every tensor).
Handles& handles(int device) {
  static std::mutex mutex;
  static std::array<Handles, kMaxDevices> all;
  MT_CHECK(device >= 0 && device < kMaxDevices, "gemm: device index {} out of range", device);
  std::lock_guard<std::mutex> lock(mutex);
  Handles& h = all[size_t(device)];
  if (h.lt == nullptr) {
    DeviceGuard guard(device);
    MT_CUBLAS_CHECK(cublasLtCreate(&h.lt));
    MT_CUBLAS_CHECK(cublasCreate(&h.blas));
    MT_CUBLAS_CHECK(cublasSetStream(h.blas, stream(device)));
  }
  return h;
}

cudaDataType data_type(ScalarType t) {
  switch (t) {
    case ScalarType::f32: return CUDA_R_32F;
    case ScalarType::f64: return CUDA_R_64F;
    case ScalarType::f16: return CUDA_R_16F;
    case ScalarType::bf16: return CUDA_R_16BF;
    default: MT_FAIL("gemm: dtype is not a float type");
  }
}

size_t element_size(ScalarType t) {
  switch (t) {
    case ScalarType::f64: return 8;
    case ScalarType::f16:
    case ScalarType::bf16: return 2;
    default: return 4;
  }
}

// The largest power of two (<= 256) dividing the address: the alignment cuBLASLt may assume.
uint32_t alignment(const void* p) {
  const auto v = reinterpret_cast<uintptr_t>(p);
  uint32_t a = 256;
  while (a > 1 && v % a != 0) a /= 2;
  return a;
}

cublasOperation_t op(bool trans) { return trans ? CUBLAS_OP_T : CUBLAS_OP_N; }

// The leading dims of the stored (not transposed) matrices.
int64_t stored_rows(const GemmOperand& o, int64_t rows, int64_t cols) {
  return o.trans ? cols : rows;
}

void gemm_f64(const GemmDesc& d, const void* a, const void* b, void* c, void* ws, size_t ws_bytes,
              int device, cudaStream_t s) {
  cublasHandle_t h = handles(device).blas;
  MT_CUBLAS_CHECK(cublasSetStream(h, s));
  MT_CUBLAS_CHECK(cublasSetWorkspace(h, ws, ws_bytes));
  const double alpha = 1, beta = 0;
  MT_CUBLAS_CHECK(cublasDgemmStridedBatched_64(
      h, op(d.a.trans), op(d.b.trans), d.m, d.n, d.k, &alpha, static_cast<const double*>(a),
      d.a.ld, d.a.batch_stride, static_cast<const double*>(b), d.b.ld, d.b.batch_stride, &beta,
      static_cast<double*>(c), d.ldc, d.batch_stride_c, d.batch));
}

// cuBLAS's generic GEMM: the fallback for layouts cuBLASLt has no algorithm for.
void gemm_ex(const GemmDesc& d, const void* a, const void* b, void* c, bool tf32, void* ws,
             size_t ws_bytes, int device, cudaStream_t s) {
  cublasHandle_t h = handles(device).blas;
  MT_CUBLAS_CHECK(cublasSetStream(h, s));
  MT_CUBLAS_CHECK(cublasSetWorkspace(h, ws, ws_bytes));
  const float alpha = 1, beta = 0;
  const cudaDataType t = data_type(d.t);
  MT_CUBLAS_CHECK(cublasGemmStridedBatchedEx_64(
      h, op(d.a.trans), op(d.b.trans), d.m, d.n, d.k, &alpha, a, t, d.a.ld, d.a.batch_stride, b,
      t, d.b.ld, d.b.batch_stride, &beta, c, t, d.ldc, d.batch_stride_c, d.batch,
      tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

// cuBLASLt descriptors of one problem, destroyed with the object.
struct LtProblem {
  cublasLtMatmulDesc_t op_desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulPreference_t pref = nullptr;

  LtProblem(const GemmDesc& d, bool tf32, uint32_t align_a, uint32_t align_b, uint32_t align_c,
            size_t ws_bytes, const void* bias) {
    const cudaDataType t = data_type(d.t);
    MT_CUBLAS_CHECK(cublasLtMatmulDescCreate(
        &op_desc, tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t ta = op(d.a.trans), tb = op(d.b.trans);
    MT_CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(op_desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
    MT_CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(op_desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
    if (d.epilogue != GemmEpilogue::none) {
      const cublasLtEpilogue_t e = lt_epilogue(d.epilogue);
      MT_CUBLAS_CHECK(
          cublasLtMatmulDescSetAttribute(op_desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &e, sizeof(e)));
      // The pointer of the first call; gemm_epilogue sets each call's own before launching.
      if (bias != nullptr) set_bias(bias);
    }
    layout(&a, t, stored_rows(d.a, d.m, d.k), stored_rows(d.a, d.k, d.m), d.a.ld, d.batch,
           d.a.batch_stride);
    layout(&b, t, stored_rows(d.b, d.k, d.n), stored_rows(d.b, d.n, d.k), d.b.ld, d.batch,
           d.b.batch_stride);
    layout(&c, t, d.m, d.n, d.ldc, d.batch, d.batch_stride_c);
    MT_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    MT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
        pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_bytes, sizeof(ws_bytes)));
    MT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
        pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a, sizeof(align_a)));
    MT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
        pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_b, sizeof(align_b)));
    MT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
        pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_c, sizeof(align_c)));
    MT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
        pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_c, sizeof(align_c)));
  }
  ~LtProblem() {
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (c) cublasLtMatrixLayoutDestroy(c);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (op_desc) cublasLtMatmulDescDestroy(op_desc);
  }
  LtProblem(const LtProblem&) = delete;
  LtProblem& operator=(const LtProblem&) = delete;

  void set_bias(const void* bias) const {
    MT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op_desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                                   &bias, sizeof(bias)));
  }

  static cublasLtEpilogue_t lt_epilogue(GemmEpilogue e) {
    switch (e) {
      case GemmEpilogue::bias: return CUBLASLT_EPILOGUE_BIAS;
      // cuBLASLt's ReLU may map NaN to 0 where the engine's relu keeps NaN (unverified on a
      // GPU): only a NaN pre-activation, already a diverged value, can tell them apart.
      case GemmEpilogue::relu: return CUBLASLT_EPILOGUE_RELU;
      case GemmEpilogue::relu_bias: return CUBLASLT_EPILOGUE_RELU_BIAS;
      default: return CUBLASLT_EPILOGUE_DEFAULT;
    }
  }

  static void layout(cublasLtMatrixLayout_t* l, cudaDataType t, int64_t rows, int64_t cols,
                     int64_t ld, int64_t batch, int64_t batch_stride) {
    MT_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(l, t, uint64_t(rows), uint64_t(cols), ld));
    const int32_t count = int32_t(batch);
    MT_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT,
                                                     &count, sizeof(count)));
    MT_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(
        *l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &batch_stride, sizeof(batch_stride)));
  }
};

// The cache of planned problems (descriptors and the chosen algorithm): one heuristic query and
// no descriptor creation for a repeated problem. Entries live as long as the process.
using PlanKey = std::array<int64_t, 18>;
struct LtPlan {
  std::unique_ptr<LtProblem> problem;
  bool found = false;
  cublasLtMatmulAlgo_t algo{};
  // Held from setting an epilogue plan's bias pointer until cublasLtMatmul has read it, so two
  // threads running the same problem cannot swap each other's bias.
  std::mutex call_mutex;
};

PlanKey key_of(const GemmDesc& d, bool tf32, uint32_t aa, uint32_t ab, uint32_t ac,
               size_t ws_bytes, int device) {
  return {int64_t(d.t), d.m,        d.n,           d.k,  d.batch, d.a.trans, d.a.ld,
          d.a.batch_stride,         d.b.trans,     d.b.ld, d.b.batch_stride, d.ldc,
          d.batch_stride_c,         int64_t(tf32), int64_t(aa) << 20 | int64_t(ab) << 10 | ac,
          int64_t(ws_bytes),        int64_t(device), int64_t(d.epilogue)};
}

LtPlan& plan_for(const GemmDesc& d, bool tf32, uint32_t aa, uint32_t ab, uint32_t ac,
                 size_t ws_bytes, int device, const void* bias = nullptr) {
  static std::mutex mutex;
  // Never destroyed, like the handles: no descriptor outlives the library at exit.
  static auto* cache = new std::map<PlanKey, std::unique_ptr<LtPlan>>();
  const PlanKey key = key_of(d, tf32, aa, ab, ac, ws_bytes, device);
  std::lock_guard<std::mutex> lock(mutex);
  std::unique_ptr<LtPlan>& entry = (*cache)[key];
  if (!entry) {
    auto plan = std::make_unique<LtPlan>();
    plan->problem = std::make_unique<LtProblem>(d, tf32, aa, ab, ac, ws_bytes, bias);
    const LtProblem& p = *plan->problem;
    cublasLtMatmulHeuristicResult_t result{};
    int count = 0;
    const cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(
        handles(device).lt, p.op_desc, p.a, p.b, p.c, p.c, p.pref, 1, &result, &count);
    plan->found = status == CUBLAS_STATUS_SUCCESS && count > 0;
    if (plan->found) plan->algo = result.algo;
    entry = std::move(plan);
  }
  return *entry;
}

}  // namespace

void gemm(const GemmDesc& d, const void* a, const void* b, void* c, bool allow_tf32,
          void* workspace, size_t workspace_bytes, int device, cudaStream_t stream) {
  if (d.m == 0 || d.n == 0 || d.batch == 0) return;
  if (d.k == 0) {  // an empty sum: zeros (c is contiguous batches of ldc x n)
    MT_CUDA_CHECK(cudaMemsetAsync(c, 0, size_t(d.batch * d.ldc * d.n) * element_size(d.t), stream));
    return;
  }
  if (d.t == ScalarType::f64) {
    gemm_f64(d, a, b, c, workspace, workspace_bytes, device, stream);
    return;
  }
  MT_CHECK(d.batch <= 0x7fffffff, "gemm: batch {} exceeds cuBLASLt's 32-bit batch count", d.batch);
  const bool tf32 = allow_tf32 && d.t == ScalarType::f32;
  const uint32_t aa = alignment(a), ab = alignment(b), ac = alignment(c);
  const size_t ws_bytes = workspace ? workspace_bytes : 0;
  GemmDesc plain = d;
  plain.epilogue = GemmEpilogue::none;
  const LtPlan& plan = plan_for(plain, tf32, aa, ab, ac, ws_bytes, device);
  if (!plan.found) {
    gemm_ex(d, a, b, c, tf32, workspace, workspace_bytes, device, stream);
    return;
  }
  const float alpha = 1, beta = 0;
  const LtProblem& p = *plan.problem;
  MT_CUBLAS_CHECK(cublasLtMatmul(handles(device).lt, p.op_desc, &alpha, a, p.a, b, p.b, &beta, c,
                                 p.c, c, p.c, &plan.algo, workspace, ws_bytes, stream));
}

bool gemm_epilogue(const GemmDesc& d, const void* a, const void* b, const void* bias, void* c,
                   bool allow_tf32, void* workspace, size_t workspace_bytes, int device,
                   cudaStream_t stream) {
  if (d.t == ScalarType::f64 || d.t == ScalarType::i64 || d.k == 0 || d.m == 0 || d.n == 0 ||
      d.batch == 0 || d.batch > 0x7fffffff)
    return false;
  const bool with_bias = d.epilogue == GemmEpilogue::bias || d.epilogue == GemmEpilogue::relu_bias;
  MT_CHECK(!with_bias || bias != nullptr, "gemm_epilogue: a bias epilogue needs a bias pointer");
  const bool tf32 = allow_tf32 && d.t == ScalarType::f32;
  const uint32_t aa = alignment(a), ab = alignment(b), ac = alignment(c);
  const size_t ws_bytes = workspace ? workspace_bytes : 0;
  LtPlan& plan = plan_for(d, tf32, aa, ab, ac, ws_bytes, device, with_bias ? bias : nullptr);
  if (!plan.found) return false;
  const float alpha = 1, beta = 0;
  const LtProblem& p = *plan.problem;
  {
    std::lock_guard<std::mutex> lock(plan.call_mutex);
    if (with_bias) p.set_bias(bias);
    MT_CUBLAS_CHECK(cublasLtMatmul(handles(device).lt, p.op_desc, &alpha, a, p.a, b, p.b, &beta,
                                   c, p.c, c, p.c, &plan.algo, workspace, ws_bytes, stream));
  }
  epilogue_calls.fetch_add(1, std::memory_order_relaxed);
  return true;
}

}  // namespace gpu

unsigned long long cuda_linear_epilogue_calls() {
  return gpu::epilogue_calls.load(std::memory_order_relaxed);
}

}  // namespace mt
