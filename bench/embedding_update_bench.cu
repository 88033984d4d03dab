// metatape-bench-embedding-update: bandwidth of the sparse row updates of an embedding table
// (kernels/cuda/embedding_update.cu: sparse SGD, sparse AdamW with an f32 table, and with a bf16
// table and f32 moments), next to the embedding gather and its deterministic scatter-add
// backward (embedding.cu) and the index sort they share, for tables of 1e4..1e6 rows x 128 / 512
// columns and n = 8192 (a fine-tuning batch: 32 windows of ~250 neurons) or 2^20 indices drawn
// uniformly (duplicates when n is near V or above). Each kernel is called through the launch
// functions the engine's stubs use (kernels/cuda/launch.h) on raw device buffers. The peer is
// the dense path the sparse AdamW replaces: scatter the rows into a zeroed (V, D) gradient, then
// the fused AdamW over the whole table; the speedup is dense time / sparse time.
//
// GB/s counts the bytes an update must move, with U the number of distinct indices: the U
// weight rows read and written (and AdamW's two moment rows read and written), the n gradient
// rows read, the n indices read; the sort's own traffic is not counted (its time is included:
// each update sorts), and the sort is also timed alone. Gather: n rows read and written plus
// the indices; scatter-add: as SGD. The fraction is against the device's theoretical DRAM
// bandwidth, 2 x memory clock x bus width. Timing: bench/cuda_bench.h (warm-up, L2 flush before
// each repeat, CUDA events, median). The smallest configuration of every kernel is checked
// against a host computation first.
//
// Usage: metatape-bench-embedding-update [--json FILE] [--commit SHA] [--repeats N] [--quick]
// Exits with status 2 and a message when no CUDA device is present, 1 on a wrong result.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
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

// A reproducible value in [-1, 1) for element i under `salt`, the same on host and device.
__host__ __device__ inline float hash_value(uint64_t i, uint64_t salt) {
  uint64_t z = i * 0x9e3779b97f4a7c15ull + salt;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return float(z >> 40) / float(1 << 23) - 1.0f;
}

template <class T>
__global__ void fill_hash(int64_t n, uint64_t salt, T* out) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    if constexpr (sizeof(T) == 2) {
      out[i] = __float2bfloat16_rn(hash_value(uint64_t(i), salt));
    } else {
      out[i] = hash_value(uint64_t(i), salt);
    }
  }
}

template <class T>
void fill(int64_t n, uint64_t salt, T* out, cudaStream_t s) {
  fill_hash<T><<<1024, 256, 0, s>>>(n, salt, out);
  BENCH_CHECK(cudaGetLastError());
}

constexpr uint64_t kWeightSalt = 1, kGradSalt = 2;

struct Result {
  std::string kernel, dtype;
  int64_t rows = 0, dim = 0, n = 0, unique = 0;
  double bytes = 0, median_us = 0, gbps = 0, fraction = 0;
  double dense_us = 0;  // the dense peer (AdamW f32 only), else 0
};

bool near(double got, double want, double tol) {
  return std::abs(got - want) <= tol * (1 + std::abs(want));
}

// Host reference of the summed gradient rows: row -> D sums in position order (f32, as the
// kernels add).
std::vector<std::vector<float>> host_sums(const std::vector<int64_t>& idx, int64_t V, int64_t D) {
  std::vector<std::vector<float>> sums(static_cast<size_t>(V));
  for (size_t i = 0; i < idx.size(); ++i) {
    std::vector<float>& s = sums[size_t(idx[i])];
    if (s.empty()) s.assign(size_t(D), 0.0f);
    for (int64_t j = 0; j < D; ++j) s[size_t(j)] += hash_value(i * uint64_t(D) + uint64_t(j), kGradSalt);
  }
  return sums;
}

template <class T>
std::vector<T> download(const T* d, int64_t n) {
  std::vector<T> h(static_cast<size_t>(n));
  BENCH_CHECK(cudaMemcpy(h.data(), d, size_t(n) * sizeof(T), cudaMemcpyDeviceToHost));
  return h;
}

}  // namespace

int main(int argc, char** argv) {
  Bench b;
  BenchArgs args;
  if (!parse_args(argc, argv, METATAPE_GIT_COMMIT, b, args)) return 2;
  const std::string& json_path = args.json_path;
  const std::string& commit = args.commit;
  const bool quick = args.quick;
  if (!b.open("metatape-bench-embedding-update")) return 2;
  std::printf("commit %s, median of %d L2-flushed runs\n\n", commit.c_str(), b.repeats);

  const std::vector<int64_t> rows_list = quick ? std::vector<int64_t>{10000, 1000000}
                                               : std::vector<int64_t>{10000, 100000, 1000000};
  const std::vector<int64_t> dim_list{128, 512};
  const std::vector<int64_t> n_list{8192, int64_t(1) << 20};
  const int64_t max_table = rows_list.back() * dim_list.back();
  const int64_t max_rows = n_list.back() * dim_list.back();

  float *w32 = nullptr, *m32 = nullptr, *v32 = nullptr, *g32 = nullptr, *out32 = nullptr;
  __nv_bfloat16 *w16 = nullptr, *g16 = nullptr;
  int64_t* d_idx = nullptr;
  BENCH_CHECK(cudaMalloc(&w32, size_t(max_table) * 4));
  BENCH_CHECK(cudaMalloc(&m32, size_t(max_table) * 4));
  BENCH_CHECK(cudaMalloc(&v32, size_t(max_table) * 4));
  BENCH_CHECK(cudaMalloc(&out32, size_t(std::max(max_table, max_rows)) * 4));
  BENCH_CHECK(cudaMalloc(&w16, size_t(max_table) * 2));
  BENCH_CHECK(cudaMalloc(&g32, size_t(max_rows) * 4));
  BENCH_CHECK(cudaMalloc(&g16, size_t(max_rows) * 2));
  BENCH_CHECK(cudaMalloc(&d_idx, size_t(n_list.back()) * 8));
  size_t ws_bytes = 0;
  for (int64_t V : rows_list) ws_bytes = std::max(ws_bytes, index_sort_workspace(n_list.back(), V));
  void* ws = nullptr;
  BENCH_CHECK(cudaMalloc(&ws, ws_bytes));
  fill(max_rows, kGradSalt, g32, b.stream);
  fill(max_rows, kGradSalt, g16, b.stream);

  // The update's scalars as ops.cpp computes them (lr 1e-3, torch's defaults, step 1).
  AdamWScalars as{};
  as.decay = true;
  as.decay_factor = 1 - 1e-3 * 1e-2;
  as.w = 1 - 0.9;
  as.small_w = true;
  as.beta2 = 0.999;
  as.one_minus_beta2 = 1 - 0.999;
  as.neg_step_size = -(1e-3 / (1 - 0.9));
  as.bias_correction2_sqrt = std::sqrt(1 - 0.999);
  as.eps = 1e-8;
  SgdScalars ss{};
  ss.neg_lr = -1e-2;

  std::printf("%-24s %-9s %8s %4s %8s %8s %10s %10s %8s %7s %8s\n", "kernel", "dtype", "rows",
              "dim", "n", "unique", "MiB moved", "time us", "GB/s", "of peak", "speedup");
  std::vector<Result> results;
  bool all_correct = true;
  for (int64_t V : rows_list) {
    for (int64_t n : n_list) {
      std::mt19937_64 rng(uint64_t(V) * 31 + uint64_t(n));
      std::vector<int64_t> idx(static_cast<size_t>(n));
      for (int64_t& i : idx) i = int64_t(rng() % uint64_t(V));
      std::vector<int64_t> sorted = idx;
      std::sort(sorted.begin(), sorted.end());
      const int64_t U = int64_t(std::unique(sorted.begin(), sorted.end()) - sorted.begin());
      BENCH_CHECK(cudaMemcpy(d_idx, idx.data(), size_t(n) * 8, cudaMemcpyHostToDevice));
      for (int64_t D : dim_list) {
        const double rows_n = double(n) * double(D), rows_u = double(U) * double(D);
        const bool check = V == rows_list.front() && n == n_list.front();
        auto reset = [&] {  // weights from the hash, zero moments
          fill(V * D, kWeightSalt, w32, b.stream);
          fill(V * D, kWeightSalt, w16, b.stream);
          BENCH_CHECK(cudaMemsetAsync(m32, 0, size_t(V * D) * 4, b.stream));
          BENCH_CHECK(cudaMemsetAsync(v32, 0, size_t(V * D) * 4, b.stream));
          BENCH_CHECK(cudaStreamSynchronize(b.stream));
        };
        auto sgd = [&] {
          sparse_sgd_rows(ScalarType::f32, n, D, V, w32, d_idx, g32, ss, ws, ws_bytes, b.stream,
                          b.sms);
        };
        auto adamw32 = [&] {
          sparse_adamw_rows(ScalarType::f32, ScalarType::f32, n, D, V, w32, m32, v32, d_idx, g32,
                            as, ws, ws_bytes, b.stream, b.sms);
        };
        auto adamw16 = [&] {
          sparse_adamw_rows(ScalarType::bf16, ScalarType::f32, n, D, V, w16, m32, v32, d_idx,
                            g16, as, ws, ws_bytes, b.stream, b.sms);
        };
        auto dense_adamw = [&] {
          BENCH_CHECK(cudaMemsetAsync(out32, 0, size_t(V * D) * 4, b.stream));
          embedding_backward(ScalarType::f32, n, D, V, g32, d_idx, out32, ws, ws_bytes, b.stream,
                             b.sms);
          adamw(ScalarType::f32, V * D, w32, out32, m32, v32, nullptr, as, b.stream, b.sms);
        };
        auto gather = [&] {
          embedding(ScalarType::f32, n, D, V, w32, d_idx, out32, b.stream, b.sms);
        };
        auto scatter = [&] {
          embedding_backward(ScalarType::f32, n, D, V, g32, d_idx, out32, ws, ws_bytes, b.stream,
                             b.sms);
        };
        auto sort = [&] { sort_by_index(n, V, d_idx, ws, ws_bytes, b.stream, b.sms); };

        if (check) {
          const auto sums = host_sums(idx, V, D);
          auto w_init = [&](int64_t r, int64_t j) {
            return double(hash_value(uint64_t(r * D + j), kWeightSalt));
          };
          auto expect = [&](const char* what, const std::vector<float>& got, auto&& want_of,
                            double tol) {
            for (int64_t r = 0; r < V; ++r) {
              for (int64_t j = 0; j < D; ++j) {
                const double want = want_of(r, j), g = got[size_t(r * D + j)];
                if (!near(g, want, tol)) {
                  std::fprintf(stderr, "%s: wrong result at row %lld col %lld (D %lld): %.9g vs "
                               "%.9g\n", what, (long long)r, (long long)j, (long long)D, g, want);
                  all_correct = false;
                  return;
                }
              }
            }
          };
          reset();
          sgd();
          expect("sparse sgd", download(w32, V * D), [&](int64_t r, int64_t j) {
            const auto& s = sums[size_t(r)];
            return s.empty() ? w_init(r, j) : w_init(r, j) - 1e-2 * double(s[size_t(j)]);
          }, 1e-6);
          reset();
          adamw32();
          auto adam_want = [&](int64_t r, int64_t j) {
            const auto& s = sums[size_t(r)];
            if (s.empty()) return w_init(r, j);
            const double g = s[size_t(j)], m = 0.1 * g, v = 0.001 * g * g;
            return w_init(r, j) * (1 - 1e-5) -
                   1e-3 / 0.1 * m / (std::sqrt(v) / std::sqrt(0.001) + 1e-8);
          };
          expect("sparse adamw f32", download(w32, V * D), adam_want, 1e-6);
          reset();
          adamw16();
          std::vector<__nv_bfloat16> w16h = download(w16, V * D);
          std::vector<float> w16f(w16h.size());
          for (size_t i = 0; i < w16h.size(); ++i) w16f[i] = __bfloat162float(w16h[i]);
          // bf16 inputs differ from the f32 ones by their rounding: compare within bf16's ulp.
          expect("sparse adamw bf16", w16f, adam_want, 1.0 / 128);
          reset();
          gather();
          std::vector<float> gathered = download(out32, n * D);
          for (int64_t i = 0; i < n && all_correct; ++i)
            for (int64_t j = 0; j < D; ++j)
              if (gathered[size_t(i * D + j)] != float(w_init(idx[size_t(i)], j))) {
                std::fprintf(stderr, "gather: wrong row at position %lld\n", (long long)i);
                all_correct = false;
                break;
              }
          BENCH_CHECK(cudaMemset(out32, 0, size_t(V * D) * 4));
          scatter();
          expect("scatter-add", download(out32, V * D), [&](int64_t r, int64_t j) {
            const auto& s = sums[size_t(r)];
            return s.empty() ? 0.0 : double(s[size_t(j)]);
          }, 0.0);
        }

        struct Kernel {
          const char* name;
          const char* dtype;
          double bytes;
          std::function<void()> run;
          bool dense_peer;
        };
        const std::vector<Kernel> kernels{
            {"sparse sgd", "f32", rows_u * 4 * 2 + rows_n * 4 + double(n) * 8, sgd, false},
            {"sparse adamw", "f32", rows_u * 4 * 6 + rows_n * 4 + double(n) * 8, adamw32, true},
            {"sparse adamw", "bf16/f32", rows_u * (2 * 2 + 4 * 4) + rows_n * 2 + double(n) * 8,
             adamw16, false},
            {"gather", "f32", rows_n * 4 * 2 + double(n) * 8, gather, false},
            {"scatter-add backward", "f32", rows_u * 4 * 2 + rows_n * 4 + double(n) * 8, scatter,
             false},
            {"index sort", "i64", double(n) * 8 * 3, sort, false},
        };
        reset();
        for (const Kernel& k : kernels) {
          Result r;
          r.kernel = k.name;
          r.dtype = k.dtype;
          r.rows = V;
          r.dim = D;
          r.n = n;
          r.unique = U;
          r.bytes = k.bytes;
          r.median_us = b.time_us(k.run);
          r.gbps = r.bytes / (r.median_us * 1e-6) / 1e9;
          r.fraction = r.gbps / b.peak_gbps;
          if (k.dense_peer) r.dense_us = b.time_us(dense_adamw);
          char speedup[32] = "";
          if (r.dense_us > 0) std::snprintf(speedup, sizeof(speedup), "%.2fx", r.dense_us / r.median_us);
          std::printf("%-24s %-9s %8lld %4lld %8lld %8lld %10.2f %10.2f %8.1f %6.1f%% %8s\n",
                      r.kernel.c_str(), r.dtype.c_str(), (long long)V, (long long)D,
                      (long long)n, (long long)U, r.bytes / (1 << 20), r.median_us, r.gbps,
                      100 * r.fraction, speedup);
          results.push_back(r);
        }
      }
    }
  }
  BENCH_CHECK(cudaGetLastError());
  BENCH_CHECK(cudaStreamSynchronize(b.stream));

  std::string json;
  if (!json_path.empty()) {
    bench::appendf(json, "{\n  \"benchmark\": \"embedding_update\",\n  \"device\": \"%s\",\n",
                   b.prop.name);
    bench::appendf(json, "  \"sm\": \"%d%d\",\n  \"commit\": \"%s\",\n", b.prop.major, b.prop.minor,
                   commit.c_str());
    bench::appendf(json, "  \"peak_gbps\": %.1f,\n  \"repeats\": %d,\n  \"correct\": %s,\n",
                   b.peak_gbps, b.repeats, all_correct ? "true" : "false");
    bench::appendf(json, "  \"results\": [\n");
    for (size_t i = 0; i < results.size(); ++i) {
      const Result& r = results[i];
      bench::appendf(json,
                     "    {\"kernel\": \"%s\", \"dtype\": \"%s\", \"rows\": %lld, \"dim\": %lld, "
                     "\"n\": %lld, \"unique\": %lld, \"bytes\": %.0f, \"median_us\": %.3f, "
                     "\"gbps\": %.2f, \"fraction_of_peak\": %.4f",
                     r.kernel.c_str(), r.dtype.c_str(), (long long)r.rows, (long long)r.dim,
                     (long long)r.n, (long long)r.unique, r.bytes, r.median_us, r.gbps, r.fraction);
      if (r.dense_us > 0)
        bench::appendf(json, ", \"dense_us\": %.3f, \"speedup_over_dense\": %.3f", r.dense_us,
                       r.dense_us / r.median_us);
      bench::appendf(json, "}%s\n", i + 1 < results.size() ? "," : "");
    }
    bench::appendf(json, "  ]\n}\n");
  }
  return bench::finish(json_path, json, all_correct);
}
