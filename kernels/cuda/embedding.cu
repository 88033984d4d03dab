// Embedding gather and its scatter-add backward (the CUDA side of engine/ops/embedding.cpp).
// The backward is deterministic (no atomics): positions are stably radix-sorted by index
// (cub::DeviceRadixSort, stable for equal keys), then every run of equal indices is summed in
// position order, one thread per column. That is the CPU kernel's order of additions, so f32
// and f64 results equal the CPU's bitwise (16-bit types accumulate in f32, rounded once).
// Out-of-range indices stop the kernel with a trap (the host never reads the indices).
#include <cub/device/device_radix_sort.cuh>

#include "kernels/cuda/common.cuh"

namespace mt::gpu {
namespace {

constexpr int kWarps = kBlock / kWarpSize;

// One warp per output row: lanes copy neighbouring columns.
template <class T>
__global__ void __launch_bounds__(kBlock)
    gather_rows(int64_t n, int64_t D, int64_t V, const T* weight, const int64_t* indices, T* out) {
  const int lane = threadIdx.x % kWarpSize;
  for (int64_t i = int64_t(blockIdx.x) * kWarps + threadIdx.x / kWarpSize; i < n;
       i += int64_t(gridDim.x) * kWarps) {
    const int64_t row = indices[i];
    if (row < 0 || row >= V) __trap();  // the CPU's range check, without a host read
    for (int64_t j = lane; j < D; j += kWarpSize) out[i * D + j] = weight[row * D + j];
  }
}

__global__ void __launch_bounds__(kBlock) iota(int64_t n, int64_t* positions) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    positions[i] = i;
}

// Block s (grid-stride) looks at sorted position s; if it starts a run of equal indices, its
// threads sum the run's rows column by column, in position order, and add the sums to out.
template <class T>
__global__ void __launch_bounds__(kBlock)
    sum_runs(int64_t n, int64_t D, int64_t V, const uint64_t* keys, const int64_t* positions,
             const T* rows, T* out) {
  using A = acc_t<T>;
  for (int64_t s = blockIdx.x; s < n; s += gridDim.x) {
    const uint64_t key = keys[s];
    if (s > 0 && keys[s - 1] == key) continue;  // not the start of a run
    if (key >= uint64_t(V)) __trap();           // negative indices are huge as uint64
    int64_t end = s + 1;
    while (end < n && keys[end] == key) ++end;
    for (int64_t j = threadIdx.x; j < D; j += blockDim.x) {
      A acc = 0;
      for (int64_t t = s; t < end; ++t) acc += load_acc(rows[positions[t] * D + j]);
      T& o = out[int64_t(key) * D + j];
      o = store_acc<T>(load_acc(o) + acc);
    }
  }
}

int bits_for(int64_t V) {  // radix-sort bits covering [0, V)
  int bits = 1;
  while (bits < 64 && (uint64_t(1) << bits) < uint64_t(V)) ++bits;
  return bits;
}

size_t round_up(size_t v) { return (v + 255) / 256 * 256; }

size_t sort_temp_bytes(int64_t n, int64_t V) {
  size_t bytes = 0;
  MT_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
      nullptr, bytes, static_cast<const uint64_t*>(nullptr), static_cast<uint64_t*>(nullptr),
      static_cast<const int64_t*>(nullptr), static_cast<int64_t*>(nullptr), n, 0, bits_for(V)));
  return bytes;
}

constexpr int64_t kMaxGrid = 0x7fffffff;

}  // namespace

void embedding(ScalarType t, int64_t n, int64_t D, int64_t V, const void* weight,
               const int64_t* indices, void* out, cudaStream_t stream, int sm_count) {
  if (n == 0 || D == 0) return;
  const unsigned grid = grid_for(n * kWarpSize, sm_count);
  dispatch_float_storage(t, [&]<class T>() {
    gather_rows<T><<<grid, kBlock, 0, stream>>>(n, D, V, static_cast<const T*>(weight), indices,
                                                static_cast<T*>(out));
    MT_CUDA_CHECK(cudaGetLastError());
  });
}

size_t index_sort_workspace(int64_t n, int64_t V) {
  if (n == 0) return 0;
  // sorted keys, positions before and after the sort, cub's scratch
  return 3 * round_up(size_t(n) * 8) + round_up(sort_temp_bytes(n, V));
}

IndexSort sort_by_index(int64_t n, int64_t V, const int64_t* indices, void* workspace,
                        size_t workspace_bytes, cudaStream_t stream, int sm_count) {
  char* ws = static_cast<char*>(workspace);
  uint64_t* sorted_keys = reinterpret_cast<uint64_t*>(ws);
  int64_t* positions = reinterpret_cast<int64_t*>(ws + round_up(size_t(n) * 8));
  int64_t* sorted_positions = reinterpret_cast<int64_t*>(ws + 2 * round_up(size_t(n) * 8));
  void* temp = ws + 3 * round_up(size_t(n) * 8);
  size_t temp_bytes = workspace_bytes - 3 * round_up(size_t(n) * 8);
  iota<<<grid_for(n, sm_count), kBlock, 0, stream>>>(n, positions);
  MT_CUDA_CHECK(cudaGetLastError());
  // Indices as uint64: [0, V) sorts by its low bits_for(V) bits; anything outside (negative
  // included) is caught by the kernel reading the runs, whatever its place in the order. Such a
  // key may land inside a run of an in-range row and split it in two, which two threads would
  // then update at once: correct only because the kernels __trap() on it (the context is lost,
  // nothing is written). A recoverable error flag instead would need keys sorted on
  // bits_for(V + 1) with out-of-range ones mapped to V first.
  MT_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
      temp, temp_bytes, reinterpret_cast<const uint64_t*>(indices), sorted_keys,
      static_cast<const int64_t*>(positions), sorted_positions, n, 0, bits_for(V), stream));
  return {sorted_keys, sorted_positions};
}

size_t embedding_backward_workspace(int64_t n, int64_t V) { return index_sort_workspace(n, V); }

void embedding_backward(ScalarType t, int64_t n, int64_t D, int64_t V, const void* rows,
                        const int64_t* indices, void* out, void* workspace,
                        size_t workspace_bytes, cudaStream_t stream, int sm_count) {
  if (n == 0 || D == 0) return;
  const IndexSort sorted =
      sort_by_index(n, V, indices, workspace, workspace_bytes, stream, sm_count);
  const unsigned grid = unsigned(n < kMaxGrid ? n : kMaxGrid);
  const unsigned threads = D <= 128 ? 128 : kBlock;
  dispatch_float_storage(t, [&]<class T>() {
    sum_runs<T><<<grid, threads, 0, stream>>>(n, D, V, sorted.keys, sorted.positions,
                                              static_cast<const T*>(rows), static_cast<T*>(out));
    MT_CUDA_CHECK(cudaGetLastError());
  });
}

}  // namespace mt::gpu
