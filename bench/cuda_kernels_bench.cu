// metatape-bench-cuda-kernels: bandwidth of the hand-written CUDA kernels (kernels/cuda) at the
// shapes POCO uses, rows 1e3..1e6 x hidden 128 / 512 (elementwise, reductions, softmax,
// layer_norm), and the linear layer's GEMM (rows x hidden) x (hidden x hidden) through
// metatape's gemm() against cuBLASLt called directly in the same binary (TFLOP/s and the ratio),
// and the same GEMM with a bias / ReLU / GELU epilogue (linear+bias, +relu, +gelu) against
// cuBLASLt with that epilogue and against the unfused gemm-then-bias-add path.
// Each kernel is called through the same launch functions the engine's ops use
// (kernels/cuda/launch.h), on raw device buffers, so the figure is the kernel's alone (no op
// dispatch, no allocation).
//
// Timing (bench/cuda_bench.h): 3 warm-up runs, then `--repeats` runs, each preceded by an L2
// flush and timed with its own pair of CUDA events; the median is reported.
// GB/s counts the bytes the kernel must move (inputs read once, outputs written once); the
// fraction is against the device's theoretical DRAM bandwidth, 2 x memory clock x bus width.
// The smallest size of every kernel is checked against a host computation first.
//
// Usage: metatape-bench-cuda-kernels [--json FILE] [--commit SHA] [--repeats N] [--quick]
// Exits with status 2 and a message when no CUDA device is present.
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "bench/bench_io.h"
#include "bench/cuda_bench.h"
#include "kernels/cuda/launch.h"

#include "metatape_git_commit.h"  // METATAPE_GIT_COMMIT

namespace {

using namespace mt::gpu;
using mt::bench::Bench;
using mt::bench::BenchArgs;
using mt::bench::parse_args;

struct Result {
  std::string kernel, dtype;
  int64_t rows = 0, hidden = 0;
  double bytes = 0, median_us = 0, gbps = 0, fraction = 0;
};

Iter flat_iter(int64_t n, int operands) {
  Iter it;
  it.rank = 1;
  it.num_operands = operands;
  it.numel = n;
  it.flat = true;
  it.sizes[0] = n;
  for (int k = 0; k < operands; ++k) it.strides[k][0] = 1;
  return it;
}

// (rows, hidden) + (hidden): the bias broadcast, on the strided path.
Iter bias_iter(int64_t rows, int64_t hidden) {
  Iter it;
  it.rank = 2;
  it.num_operands = 3;
  it.numel = rows * hidden;
  it.sizes[0] = rows;
  it.sizes[1] = hidden;
  it.strides[0][0] = it.strides[1][0] = hidden;
  it.strides[0][1] = it.strides[1][1] = 1;
  it.strides[2][0] = 0;
  it.strides[2][1] = 1;
  return it;
}

ReduceDesc reduce_desc(int64_t rows, int64_t hidden, bool over_hidden) {
  ReduceDesc d;
  d.outer_rank = d.inner_rank = 1;
  if (over_hidden) {  // (rows, hidden) -> (rows): one row per output
    d.outer = d.outer_sizes[0] = rows;
    d.outer_x_strides[0] = hidden;
    d.inner = d.inner_sizes[0] = hidden;
    d.inner_x_strides[0] = 1;
    d.rows = true;
  } else {  // (rows, hidden) -> (hidden): the bias gradient
    d.outer = d.outer_sizes[0] = hidden;
    d.outer_x_strides[0] = 1;
    d.inner = d.inner_sizes[0] = rows;
    d.inner_x_strides[0] = hidden;
    d.rows = false;
  }
  d.outer_out_strides[0] = 1;
  d.splits = reduce_splits(d);
  return d;
}

struct GemmResult {
  std::string op = "linear", dtype;
  int64_t rows = 0, hidden = 0;
  double ours_us = 0, direct_us = 0, tflops = 0, ratio = 0;
  double unfused_us = 0;  // epilogue rows: gemm() then separate bias add (and activation)
};

#define BENCH_CUBLAS(call)                                                                   \
  do {                                                                                       \
    cublasStatus_t status_ = (call);                                                         \
    if (status_ != CUBLAS_STATUS_SUCCESS) {                                                  \
      std::fprintf(stderr, "%s:%d: %s failed: %s\n", __FILE__, __LINE__, #call,              \
                   cublasGetStatusString(status_));                                          \
      std::exit(1);                                                                          \
    }                                                                                        \
  } while (0)

// The peer: the same (non-batched, untransposed) problem planned once with cuBLASLt directly.
struct DirectLt {
  cublasLtHandle_t handle = nullptr;
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t la = nullptr, lb = nullptr, lc = nullptr;
  cublasLtMatmulAlgo_t algo{};
  size_t ws_bytes = 0;

  // epilogue: CUBLASLT_EPILOGUE_DEFAULT, or a bias epilogue reading `bias` (m entries).
  DirectLt(const GemmDesc& d, bool tf32, size_t workspace_bytes,
           cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_DEFAULT, const void* bias = nullptr)
      : ws_bytes(workspace_bytes) {
    const cudaDataType t = d.t == ScalarType::bf16 ? CUDA_R_16BF : CUDA_R_32F;
    BENCH_CUBLAS(cublasLtCreate(&handle));
    BENCH_CUBLAS(cublasLtMatmulDescCreate(
        &op, tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F, CUDA_R_32F));
    if (epilogue != CUBLASLT_EPILOGUE_DEFAULT) {
      BENCH_CUBLAS(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue,
                                                  sizeof(epilogue)));
      BENCH_CUBLAS(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias,
                                                  sizeof(bias)));
    }
    BENCH_CUBLAS(cublasLtMatrixLayoutCreate(&la, t, uint64_t(d.m), uint64_t(d.k), d.a.ld));
    BENCH_CUBLAS(cublasLtMatrixLayoutCreate(&lb, t, uint64_t(d.k), uint64_t(d.n), d.b.ld));
    BENCH_CUBLAS(cublasLtMatrixLayoutCreate(&lc, t, uint64_t(d.m), uint64_t(d.n), d.ldc));
    cublasLtMatmulPreference_t pref;
    BENCH_CUBLAS(cublasLtMatmulPreferenceCreate(&pref));
    BENCH_CUBLAS(cublasLtMatmulPreferenceSetAttribute(
        pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_bytes, sizeof(ws_bytes)));
    cublasLtMatmulHeuristicResult_t result{};
    int count = 0;
    BENCH_CUBLAS(cublasLtMatmulAlgoGetHeuristic(handle, op, la, lb, lc, lc, pref, 1, &result,
                                                &count));
    if (count == 0) {
      std::fprintf(stderr, "cuBLASLt offers no algorithm for the benchmark's GEMM\n");
      std::exit(1);
    }
    algo = result.algo;
    BENCH_CUBLAS(cublasLtMatmulPreferenceDestroy(pref));
  }
  ~DirectLt() {
    cublasLtMatrixLayoutDestroy(lc);
    cublasLtMatrixLayoutDestroy(lb);
    cublasLtMatrixLayoutDestroy(la);
    cublasLtMatmulDescDestroy(op);
    cublasLtDestroy(handle);
  }
  DirectLt(const DirectLt&) = delete;
  DirectLt& operator=(const DirectLt&) = delete;

  void run(const void* a, const void* b, void* c, void* ws, cudaStream_t s) {
    const float alpha = 1, beta = 0;
    BENCH_CUBLAS(cublasLtMatmul(handle, op, &alpha, a, la, b, lb, &beta, c, lc, c, lc, &algo, ws,
                                ws_bytes, s));
  }
};

bool near(double got, double want, double tol) { return std::abs(got - want) <= tol * (1 + std::abs(want)); }

// Element `index` of a device array of bf16 (bf16 = true) or f32 values, read back as a double.
double device_value(const void* p, int64_t index, bool bf16) {
  if (bf16) {
    __nv_bfloat16 v;
    BENCH_CHECK(cudaMemcpy(&v, static_cast<const __nv_bfloat16*>(p) + index, sizeof v,
                           cudaMemcpyDeviceToHost));
    return double(__bfloat162float(v));
  }
  float v;
  BENCH_CHECK(cudaMemcpy(&v, static_cast<const float*>(p) + index, sizeof v,
                         cudaMemcpyDeviceToHost));
  return double(v);
}

}  // namespace

int main(int argc, char** argv) {
  Bench b;
  BenchArgs args;
  if (!parse_args(argc, argv, METATAPE_GIT_COMMIT, b, args)) return 2;
  const std::string& json_path = args.json_path;
  const std::string& commit = args.commit;
  const bool quick = args.quick;
  if (!b.open("metatape-bench-cuda-kernels")) return 2;
  const cudaDeviceProp& prop = b.prop;
  std::printf("commit %s, median of %d L2-flushed runs\n\n", commit.c_str(), b.repeats);
  std::printf("%-22s %-5s %9s %6s %10s %10s %8s %7s\n", "kernel", "dtype", "rows", "hidden",
              "MiB moved", "time us", "GB/s", "of peak");

  const std::vector<int64_t> rows_list =
      quick ? std::vector<int64_t>{1000, 100000} : std::vector<int64_t>{1000, 10000, 100000, 1000000};
  const std::vector<int64_t> hidden_list{128, 512};
  const int64_t max_n = rows_list.back() * hidden_list.back();
  float *x = nullptr, *y = nullptr, *out = nullptr, *bias = nullptr, *ws = nullptr;
  __nv_bfloat16* out16 = nullptr;
  BENCH_CHECK(cudaMalloc(&x, size_t(max_n) * 4));
  BENCH_CHECK(cudaMalloc(&y, size_t(max_n) * 4));
  BENCH_CHECK(cudaMalloc(&out, size_t(max_n) * 4));
  BENCH_CHECK(cudaMalloc(&out16, size_t(max_n) * 2));
  BENCH_CHECK(cudaMalloc(&bias, 512 * 4));
  BENCH_CHECK(cudaMalloc(&ws, size_t(1) << 24));
  {  // inputs: x[i] = (i % 97) / 97 - 0.5, y[i] = (i % 89) / 89, bias[j] = j / 512
    std::vector<float> hx(static_cast<size_t>(max_n)), hy(static_cast<size_t>(max_n)), hb(512);
    for (int64_t i = 0; i < max_n; ++i) {
      hx[size_t(i)] = float(i % 97) / 97.f - 0.5f;
      hy[size_t(i)] = float(i % 89) / 89.f;
    }
    for (int j = 0; j < 512; ++j) hb[size_t(j)] = float(j) / 512.f;
    BENCH_CHECK(cudaMemcpy(x, hx.data(), hx.size() * 4, cudaMemcpyHostToDevice));
    BENCH_CHECK(cudaMemcpy(y, hy.data(), hy.size() * 4, cudaMemcpyHostToDevice));
    BENCH_CHECK(cudaMemcpy(bias, hb.data(), hb.size() * 4, cudaMemcpyHostToDevice));
  }
  auto hx = [](int64_t i) { return double(float(i % 97) / 97.f - 0.5f); };
  auto hy = [](int64_t i) { return double(float(i % 89) / 89.f); };

  struct Kernel {
    const char* name;
    const char* dtype;
    std::function<double(int64_t, int64_t)> bytes;  // moved per call
    std::function<void(int64_t, int64_t)> run;
    std::function<bool(int64_t, int64_t)> check;  // on the output after run
  };
  auto read_out = [&](int64_t n) {
    std::vector<float> h(static_cast<size_t>(n));
    BENCH_CHECK(cudaMemcpy(h.data(), out, size_t(n) * 4, cudaMemcpyDeviceToHost));
    return h;
  };
  const std::vector<Kernel> kernels{
      // The ceiling any streaming kernel is measured against: the driver's device-to-device copy
      // of the same bytes (read once, written once), timed the same way.
      {"memcpy d2d (ceiling)", "f32",
       [](int64_t r, int64_t h) { return 2.0 * double(r * h) * 4; },
       [&](int64_t r, int64_t h) {
         BENCH_CHECK(
             cudaMemcpyAsync(out, x, size_t(r * h) * 4, cudaMemcpyDeviceToDevice, b.stream));
       },
       [&](int64_t r, int64_t h) {
         auto o = read_out(r * h);
         for (int64_t i = 0; i < r * h; ++i)
           if (!near(o[size_t(i)], hx(i), 0)) return false;
         return true;
       }},
      {"add", "f32", [](int64_t r, int64_t h) { return 3.0 * double(r * h) * 4; },
       [&](int64_t r, int64_t h) {
         binary(BinaryOp::add, ScalarType::f32, flat_iter(r * h, 3), out, x, y, 0, b.stream, b.sms);
       },
       [&](int64_t r, int64_t h) {
         auto o = read_out(r * h);
         for (int64_t i = 0; i < r * h; ++i)
           if (!near(o[size_t(i)], hx(i) + hy(i), 1e-6)) return false;
         return true;
       }},
      {"gelu", "f32", [](int64_t r, int64_t h) { return 2.0 * double(r * h) * 4; },
       [&](int64_t r, int64_t h) {
         unary(UnaryOp::gelu, ScalarType::f32, flat_iter(r * h, 2), out, x, 0, 0, b.stream, b.sms);
       },
       [&](int64_t r, int64_t h) {
         auto o = read_out(r * h);
         for (int64_t i = 0; i < r * h; ++i) {
           const double v = hx(i), want = 0.5 * v * (1 + std::erf(v / std::sqrt(2.0)));
           if (!near(o[size_t(i)], want, 1e-5)) return false;
         }
         return true;
       }},
      {"add bias (broadcast)", "f32",
       [](int64_t r, int64_t h) { return 2.0 * double(r * h) * 4 + double(h) * 4; },
       [&](int64_t r, int64_t h) {
         binary(BinaryOp::add, ScalarType::f32, bias_iter(r, h), out, x, bias, 0, b.stream, b.sms);
       },
       [&](int64_t r, int64_t h) {
         auto o = read_out(r * h);
         for (int64_t i = 0; i < r * h; ++i)
           if (!near(o[size_t(i)], hx(i) + double(float(i % h) / 512.f), 1e-6)) return false;
         return true;
       }},
      {"to bf16", "f32>bf16", [](int64_t r, int64_t h) { return double(r * h) * 6; },
       [&](int64_t r, int64_t h) {
         copy(ScalarType::bf16, ScalarType::f32, flat_iter(r * h, 2), out16, x, b.stream, b.sms);
       },
       [&](int64_t r, int64_t h) {
         std::vector<__nv_bfloat16> o(static_cast<size_t>(r * h));
         BENCH_CHECK(cudaMemcpy(o.data(), out16, o.size() * 2, cudaMemcpyDeviceToHost));
         for (int64_t i = 0; i < r * h; ++i)
           if (!near(double(__bfloat162float(o[size_t(i)])), hx(i), 1.0 / 128)) return false;
         return true;
       }},
      {"sum over hidden", "f32", [](int64_t r, int64_t h) { return double(r * h + r) * 4; },
       [&](int64_t r, int64_t h) {
         ReduceDesc d = reduce_desc(r, h, true);
         reduce(ReduceOp::sum, ScalarType::f32, d, out, x, ws, b.stream, b.sms);
       },
       [&](int64_t r, int64_t h) {
         auto o = read_out(r);
         for (int64_t i = 0; i < r; ++i) {
           double want = 0;
           for (int64_t j = 0; j < h; ++j) want += hx(i * h + j);
           if (!near(o[size_t(i)], want, 1e-4)) return false;
         }
         return true;
       }},
      {"sum over rows", "f32", [](int64_t r, int64_t h) { return double(r * h + h) * 4; },
       [&](int64_t r, int64_t h) {
         ReduceDesc d = reduce_desc(r, h, false);
         reduce(ReduceOp::sum, ScalarType::f32, d, out, x, ws, b.stream, b.sms);
       },
       [&](int64_t r, int64_t h) {
         auto o = read_out(h);
         for (int64_t j = 0; j < h; ++j) {
           double want = 0;
           for (int64_t i = 0; i < r; ++i) want += hx(i * h + j);
           if (!near(o[size_t(j)], want, 1e-4)) return false;
         }
         return true;
       }},
      {"softmax", "f32", [](int64_t r, int64_t h) { return 2.0 * double(r * h) * 4; },
       [&](int64_t r, int64_t h) {
         softmax(ScalarType::f32, r, h, x, out, false, b.stream, b.sms);
       },
       [&](int64_t r, int64_t h) {
         auto o = read_out(r * h);
         for (int64_t i = 0; i < r; ++i) {
           double m = -1e30, s = 0;
           for (int64_t j = 0; j < h; ++j) m = std::max(m, hx(i * h + j));
           for (int64_t j = 0; j < h; ++j) s += std::exp(hx(i * h + j) - m);
           for (int64_t j = 0; j < h; ++j)
             if (!near(o[size_t(i * h + j)], std::exp(hx(i * h + j) - m) / s, 1e-5)) return false;
         }
         return true;
       }},
      {"layer_norm (affine)", "f32",
       [](int64_t r, int64_t h) { return 2.0 * double(r * h) * 4 + 2.0 * double(h) * 4; },
       [&](int64_t r, int64_t h) {
         layer_norm(ScalarType::f32, r, h, x, bias, bias, 1e-5, out, b.stream, b.sms);
       },
       [&](int64_t r, int64_t h) {
         auto o = read_out(r * h);
         for (int64_t i = 0; i < r; ++i) {
           double mu = 0, m2 = 0;
           for (int64_t j = 0; j < h; ++j) mu += hx(i * h + j);
           mu /= double(h);
           for (int64_t j = 0; j < h; ++j) m2 += (hx(i * h + j) - mu) * (hx(i * h + j) - mu);
           const double rstd = 1 / std::sqrt(m2 / double(h) + 1e-5);
           for (int64_t j = 0; j < h; ++j) {
             const double w = double(float(j) / 512.f);
             const double want = (hx(i * h + j) - mu) * rstd * w + w;
             if (!near(o[size_t(i * h + j)], want, 1e-4)) return false;
           }
         }
         return true;
       }},
      {"max over hidden", "f32", [](int64_t r, int64_t h) { return double(r * h + r) * 4; },
       [&](int64_t r, int64_t h) {
         ReduceDesc d = reduce_desc(r, h, true);
         reduce(ReduceOp::max, ScalarType::f32, d, out, x, ws, b.stream, b.sms);
       },
       [&](int64_t r, int64_t h) {
         auto o = read_out(r);
         for (int64_t i = 0; i < r; ++i) {
           double want = -1e30;
           for (int64_t j = 0; j < h; ++j) want = std::max(want, hx(i * h + j));
           if (o[size_t(i)] != float(want)) return false;
         }
         return true;
       }},
  };

  std::vector<Result> results;
  bool all_correct = true;
  for (const Kernel& k : kernels) {
    // Correctness first, at the smallest shape of each hidden size.
    for (int64_t h : hidden_list) {
      k.run(rows_list.front(), h);
      BENCH_CHECK(cudaStreamSynchronize(b.stream));
      if (!k.check(rows_list.front(), h)) {
        std::fprintf(stderr, "%s: wrong result at rows %lld hidden %lld\n", k.name,
                     (long long)rows_list.front(), (long long)h);
        all_correct = false;
      }
    }
    for (int64_t r : rows_list) {
      for (int64_t h : hidden_list) {
        Result res;
        res.kernel = k.name;
        res.dtype = k.dtype;
        res.rows = r;
        res.hidden = h;
        res.bytes = k.bytes(r, h);
        res.median_us = b.time_us([&] { k.run(r, h); });
        res.gbps = res.bytes / (res.median_us * 1e-6) / 1e9;
        res.fraction = res.gbps / b.peak_gbps;
        std::printf("%-22s %-5s %9lld %6lld %10.2f %10.2f %8.1f %6.1f%%\n", res.kernel.c_str(),
                    res.dtype.c_str(), (long long)r, (long long)h, res.bytes / (1 << 20),
                    res.median_us, res.gbps, 100 * res.fraction);
        results.push_back(res);
      }
    }
  }
  BENCH_CHECK(cudaGetLastError());

  // ---- GEMM: the linear layer y (rows, hidden) = x (rows, hidden) W (hidden, hidden), through
  // metatape's gemm() (launch.h: plan cache, cuBLASLt) and through cuBLASLt called directly with
  // the same problem planned once outside the timing; the ratio is metatape / direct (goal:
  // within 1.10). TFLOP/s counts 2 rows hidden^2.
  std::printf("\n%-22s %-5s %9s %6s %12s %12s %9s %7s\n", "gemm", "dtype", "rows", "hidden",
              "metatape us", "cuBLASLt us", "TFLOP/s", "ratio");
  std::vector<GemmResult> gemm_results;
  void* gemm_ws = nullptr;
  BENCH_CHECK(cudaMalloc(&gemm_ws, kGemmWorkspaceBytes));
  void *w16 = nullptr, *x16 = nullptr;
  BENCH_CHECK(cudaMalloc(&w16, 512 * 512 * 2));
  BENCH_CHECK(cudaMalloc(&x16, size_t(max_n) * 2));
  copy(ScalarType::bf16, ScalarType::f32, flat_iter(512 * 512, 2), w16, y, b.stream, b.sms);
  copy(ScalarType::bf16, ScalarType::f32, flat_iter(max_n, 2), x16, x, b.stream, b.sms);
  struct GemmCase {
    const char* name;
    ScalarType t;
    bool tf32;
  };
  for (const GemmCase& gc : {GemmCase{"f32", ScalarType::f32, false},
                             GemmCase{"tf32", ScalarType::f32, true},
                             GemmCase{"bf16", ScalarType::bf16, false}}) {
    const bool half = gc.t == ScalarType::bf16;
    const void* W = half ? w16 : static_cast<const void*>(y);  // y's first hidden^2 values
    const void* X = half ? x16 : static_cast<const void*>(x);
    void* Y = half ? static_cast<void*>(out16) : static_cast<void*>(out);
    for (int64_t r : rows_list) {
      for (int64_t h : hidden_list) {
        GemmDesc d;
        d.t = gc.t;
        d.m = h;  // C^T (hidden x rows) = W^T x^T in cuBLAS's column-major terms
        d.n = r;
        d.k = h;
        d.a.ld = h;
        d.b.ld = h;
        d.ldc = h;
        d.batch_stride_c = r * h;
        auto ours = [&] {
          gemm(d, W, X, Y, gc.tf32, gemm_ws, kGemmWorkspaceBytes, 0, b.stream);
        };
        DirectLt direct(d, gc.tf32, kGemmWorkspaceBytes);
        auto theirs = [&] { direct.run(W, X, Y, gemm_ws, b.stream); };
        // Correctness at the smallest row count: a few entries against the host.
        if (r == rows_list.front()) {
          ours();
          BENCH_CHECK(cudaStreamSynchronize(b.stream));
          const double tol = gc.tf32 ? 1e-2 : (half ? 2e-2 : 1e-4);
          for (int64_t i : {int64_t(0), r / 2, r - 1}) {
            for (int64_t j : {int64_t(0), h - 1}) {
              double want = 0;
              for (int64_t l = 0; l < h; ++l) {
                double xv = hx(i * h + l), wv = hy(l * h + j);
                if (half) {
                  xv = double(__bfloat162float(__float2bfloat16(float(xv))));
                  wv = double(__bfloat162float(__float2bfloat16(float(wv))));
                }
                want += xv * wv;
              }
              const double got = device_value(Y, i * h + j, half);
              if (!near(got, want, tol)) {
                std::fprintf(stderr, "gemm %s: wrong result at rows %lld hidden %lld (%g vs %g)\n",
                             gc.name, (long long)r, (long long)h, got, want);
                all_correct = false;
              }
            }
          }
        }
        GemmResult g;
        g.dtype = gc.name;
        g.rows = r;
        g.hidden = h;
        g.ours_us = b.time_us(ours);
        g.direct_us = b.time_us(theirs);
        g.tflops = 2.0 * double(r) * double(h) * double(h) / (g.ours_us * 1e-6) / 1e12;
        g.ratio = g.ours_us / g.direct_us;
        std::printf("%-22s %-5s %9lld %6lld %12.2f %12.2f %9.2f %7.3f\n", "linear", g.dtype.c_str(),
                    (long long)r, (long long)h, g.ours_us, g.direct_us, g.tflops, g.ratio);
        gemm_results.push_back(g);
      }
    }
  }
  BENCH_CHECK(cudaGetLastError());

  // ---- The linear layer with its bias (and activation) in the GEMM's epilogue: metatape's
  // gemm_epilogue() (what linear() runs on CUDA) against cuBLASLt called directly with the same
  // epilogue, and the unfused path (gemm() then the bias add and activation kernels) for
  // contrast. +gelu: metatape keeps the bias epilogue and runs its exact (erf) gelu kernel after
  // it, because cuBLASLt's GELU epilogue is the tanh approximation; the cuBLASLt column is that
  // GELU_BIAS epilogue (a different function: the ratio is the price of exactness). The bias is
  // x's first `hidden` values.
  std::printf("\n%-22s %-5s %9s %6s %12s %12s %12s %9s %7s\n", "gemm+epilogue", "dtype", "rows",
              "hidden", "metatape us", "cuBLASLt us", "unfused us", "TFLOP/s", "ratio");
  struct EpilogueCase {
    const char* name;
    GemmEpilogue ours;  // the epilogue metatape's call applies
    bool exact_gelu;    // then metatape's gelu kernel
    cublasLtEpilogue_t direct;
  };
  for (const GemmCase& gc : {GemmCase{"f32", ScalarType::f32, false},
                             GemmCase{"bf16", ScalarType::bf16, false}}) {
    const bool half = gc.t == ScalarType::bf16;
    const void* W = half ? w16 : static_cast<const void*>(y);
    const void* X = half ? x16 : static_cast<const void*>(x);
    const void* bias = X;
    void* Y = half ? static_cast<void*>(out16) : static_cast<void*>(out);
    for (const EpilogueCase& ec :
         {EpilogueCase{"linear+bias", GemmEpilogue::bias, false, CUBLASLT_EPILOGUE_BIAS},
          EpilogueCase{"linear+relu", GemmEpilogue::relu_bias, false,
                       CUBLASLT_EPILOGUE_RELU_BIAS},
          EpilogueCase{"linear+gelu", GemmEpilogue::bias, true, CUBLASLT_EPILOGUE_GELU_BIAS}}) {
      for (int64_t r : rows_list) {
        for (int64_t h : hidden_list) {
          GemmDesc d;
          d.t = gc.t;
          d.m = h;
          d.n = r;
          d.k = h;
          d.a.ld = h;
          d.b.ld = h;
          d.ldc = h;
          d.batch_stride_c = r * h;
          d.epilogue = ec.ours;
          bool fused_ok = true;
          auto ours = [&] {
            fused_ok = gemm_epilogue(d, W, X, bias, Y, false, gemm_ws, kGemmWorkspaceBytes, 0,
                                     b.stream) && fused_ok;
            if (ec.exact_gelu)
              unary(UnaryOp::gelu, gc.t, flat_iter(r * h, 2), Y, Y, 0.0, 0.0, b.stream, b.sms);
          };
          auto unfused = [&] {
            gemm(d, W, X, Y, false, gemm_ws, kGemmWorkspaceBytes, 0, b.stream);
            binary(BinaryOp::add, gc.t, bias_iter(r, h), Y, Y, bias, 0.0, b.stream, b.sms);
            if (ec.ours == GemmEpilogue::relu_bias)
              unary(UnaryOp::relu, gc.t, flat_iter(r * h, 2), Y, Y, 0.0, 0.0, b.stream, b.sms);
            if (ec.exact_gelu)
              unary(UnaryOp::gelu, gc.t, flat_iter(r * h, 2), Y, Y, 0.0, 0.0, b.stream, b.sms);
          };
          DirectLt direct(d, false, kGemmWorkspaceBytes, ec.direct, bias);
          auto theirs = [&] { direct.run(W, X, Y, gemm_ws, b.stream); };
          if (r == rows_list.front()) {
            ours();
            BENCH_CHECK(cudaStreamSynchronize(b.stream));
            if (!fused_ok) {
              std::fprintf(stderr, "%s %s: cuBLASLt offered no algorithm with the epilogue\n",
                           ec.name, gc.name);
              all_correct = false;
            }
            const double tol = half ? 2e-2 : 1e-4;
            auto stored = [&](double v) {
              return half ? double(__bfloat162float(__float2bfloat16(float(v)))) : v;
            };
            for (int64_t i : {int64_t(0), r / 2, r - 1}) {
              for (int64_t j : {int64_t(0), h - 1}) {
                double want = stored(hx(j));  // the bias
                for (int64_t l = 0; l < h; ++l)
                  want += stored(hx(i * h + l)) * stored(hy(l * h + j));
                if (ec.ours == GemmEpilogue::relu_bias) want = want > 0 ? want : 0;
                if (ec.exact_gelu) want = 0.5 * want * (1 + std::erf(want / std::sqrt(2.0)));
                const double got = device_value(Y, i * h + j, half);
                if (!near(got, want, tol)) {
                  std::fprintf(stderr, "%s %s: wrong result at rows %lld hidden %lld (%g vs %g)\n",
                               ec.name, gc.name, (long long)r, (long long)h, got, want);
                  all_correct = false;
                }
              }
            }
          }
          GemmResult g;
          g.op = ec.name;
          g.dtype = gc.name;
          g.rows = r;
          g.hidden = h;
          g.ours_us = b.time_us(ours);
          g.direct_us = b.time_us(theirs);
          g.unfused_us = b.time_us(unfused);
          g.tflops = 2.0 * double(r) * double(h) * double(h) / (g.ours_us * 1e-6) / 1e12;
          g.ratio = g.ours_us / g.direct_us;
          std::printf("%-22s %-5s %9lld %6lld %12.2f %12.2f %12.2f %9.2f %7.3f\n", ec.name,
                      g.dtype.c_str(), (long long)r, (long long)h, g.ours_us, g.direct_us,
                      g.unfused_us, g.tflops, g.ratio);
          gemm_results.push_back(g);
        }
      }
    }
  }
  BENCH_CHECK(cudaGetLastError());

  std::string json;
  if (!json_path.empty()) {
    bench::appendf(json, "{\n  \"benchmark\": \"cuda_kernels\",\n  \"device\": \"%s\",\n", prop.name);
    bench::appendf(json, "  \"sm\": \"%d%d\",\n  \"commit\": \"%s\",\n", prop.major, prop.minor,
                   commit.c_str());
    bench::appendf(json, "  \"peak_gbps\": %.1f,\n  \"repeats\": %d,\n  \"correct\": %s,\n",
                   b.peak_gbps, b.repeats, all_correct ? "true" : "false");
    bench::appendf(json, "  \"results\": [\n");
    for (size_t i = 0; i < results.size(); ++i) {
      const Result& r = results[i];
      bench::appendf(json,
                     "    {\"kernel\": \"%s\", \"dtype\": \"%s\", \"rows\": %lld, "
                     "\"hidden\": %lld, "
                     "\"bytes\": %.0f, \"median_us\": %.3f, \"gbps\": %.2f, \"fraction_of_peak\": "
                     "%.4f}%s\n",
                     r.kernel.c_str(), r.dtype.c_str(), (long long)r.rows, (long long)r.hidden,
                     r.bytes, r.median_us, r.gbps, r.fraction, i + 1 < results.size() ? "," : "");
    }
    bench::appendf(json, "  ],\n  \"gemm\": [\n");
    for (size_t i = 0; i < gemm_results.size(); ++i) {
      const GemmResult& g = gemm_results[i];
      bench::appendf(json,
                     "    {\"op\": \"%s\", \"dtype\": \"%s\", \"rows\": %lld, \"hidden\": %lld, "
                     "\"metatape_us\": %.3f, \"cublaslt_us\": %.3f, \"tflops\": %.3f, "
                     "\"ratio\": %.4f",
                     g.op.c_str(), g.dtype.c_str(), (long long)g.rows, (long long)g.hidden,
                     g.ours_us, g.direct_us, g.tflops, g.ratio);
      if (g.unfused_us > 0)
        bench::appendf(json, ", \"unfused_us\": %.3f, \"fused_speedup\": %.4f", g.unfused_us,
                       g.unfused_us / g.ours_us);
      bench::appendf(json, "}%s\n", i + 1 < gemm_results.size() ? "," : "");
    }
    bench::appendf(json, "  ]\n}\n");
  }
  return bench::finish(json_path, json, all_correct);
}
