// layer_norm over the last D elements of each row, forward and the fused first-order backward
// (the CUDA side of engine/ops/layer_norm.cpp; the recorded, differentiable backward is composed
// from other ops there). Statistics as the CPU kernel computes them: the mean, then the mean of
// squared deviations (two passes, no E[x^2] - E[x]^2 cancellation), in f32 (f64 for f64).
//   D <= 1024: one warp per row, the row in registers;  D > 1024: one block per row.
// Backward: each row's mean and rstd are recomputed (the forward does not keep them, as on the
// CPU) and written to the workspace for the dw/db pass; dw = sum_rows g xhat and db = sum_rows g
// are summed per row chunk, then the chunks in order, so results do not depend on scheduling.
// Double backward (layer_norm_input_grad's rule when it is not recorded): gx and gg per row,
// gw summed like dw, from each row's mean, rstd, mean(v) and mean(v xhat) kept in the workspace.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/elementwise.cuh"  // m_sqrt

namespace mt::gpu {
namespace {

constexpr int kWarps = kBlock / kWarpSize;

template <class A>
__device__ __forceinline__ A rstd_of(A m2, int64_t D, double eps) {
  return A(1) / m_sqrt(m2 / A(D) + A(eps));
}

// ---- forward ----
template <class T, int kPerLane>
__global__ void __launch_bounds__(kBlock)
    layer_norm_warp(int64_t rows, int D, const T* x, const T* w, const T* b, double eps, T* y) {
  using A = acc_t<T>;
  const int lane = threadIdx.x % kWarpSize;
  const int64_t row = int64_t(blockIdx.x) * kWarps + threadIdx.x / kWarpSize;
  if (row >= rows) return;
  const T* xr = x + row * D;
  T* yr = y + row * D;
  A v[kPerLane];
  A s = 0;
#pragma unroll
  for (int k = 0; k < kPerLane; ++k) {
    const int j = lane + k * kWarpSize;
    v[k] = j < D ? load_acc(xr[j]) : A(0);
    s += v[k];
  }
  const A mu = warp_allsum(s) / A(D);
  A m2 = 0;
#pragma unroll
  for (int k = 0; k < kPerLane; ++k) {
    const int j = lane + k * kWarpSize;
    if (j < D) m2 += (v[k] - mu) * (v[k] - mu);
  }
  const A rstd = rstd_of(warp_allsum(m2), D, eps);
#pragma unroll
  for (int k = 0; k < kPerLane; ++k) {
    const int j = lane + k * kWarpSize;
    if (j < D) {
      A o = (v[k] - mu) * rstd;
      if (w) o *= load_acc(w[j]);
      if (b) o += load_acc(b[j]);
      yr[j] = store_acc<T>(o);
    }
  }
}

template <class T>
__global__ void __launch_bounds__(kBlock)
    layer_norm_block(int64_t rows, int64_t D, const T* x, const T* w, const T* b, double eps,
                     T* y) {
  using A = acc_t<T>;
  __shared__ A shared[kWarpSize];
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* xr = x + row * D;
    T* yr = y + row * D;
    A s = 0;
    for (int64_t j = threadIdx.x; j < D; j += blockDim.x) s += load_acc(xr[j]);
    const A mu = block_allreduce<A, false>(s, shared) / A(D);
    A m2 = 0;
    for (int64_t j = threadIdx.x; j < D; j += blockDim.x) {
      const A c = load_acc(xr[j]) - mu;
      m2 += c * c;
    }
    const A rstd = rstd_of(block_allreduce<A, false>(m2, shared), D, eps);
    for (int64_t j = threadIdx.x; j < D; j += blockDim.x) {
      A o = (load_acc(xr[j]) - mu) * rstd;
      if (w) o *= load_acc(w[j]);
      if (b) o += load_acc(b[j]);
      yr[j] = store_acc<T>(o);
    }
  }
}

// ---- backward: dx per row (and the row's statistics for the dw/db pass) ----
// dx = rstd (gh - mean(gh) - xhat mean(gh xhat)), gh = g w, xhat = (x - mu) rstd.
template <class T, int kPerLane>
__global__ void __launch_bounds__(kBlock)
    layer_norm_dx_warp(int64_t rows, int D, const T* x, const T* w, const T* g, double eps,
                       T* dx, acc_t<T>* mean, acc_t<T>* rstd_out) {
  using A = acc_t<T>;
  const int lane = threadIdx.x % kWarpSize;
  const int64_t row = int64_t(blockIdx.x) * kWarps + threadIdx.x / kWarpSize;
  if (row >= rows) return;
  const T* xr = x + row * D;
  const T* gr = g + row * D;
  A v[kPerLane], gh[kPerLane];
  A s = 0;
#pragma unroll
  for (int k = 0; k < kPerLane; ++k) {
    const int j = lane + k * kWarpSize;
    v[k] = j < D ? load_acc(xr[j]) : A(0);
    gh[k] = j < D ? load_acc(gr[j]) * (w ? load_acc(w[j]) : A(1)) : A(0);
    s += v[k];
  }
  const A mu = warp_allsum(s) / A(D);
  A m2 = 0;
#pragma unroll
  for (int k = 0; k < kPerLane; ++k) {
    const int j = lane + k * kWarpSize;
    if (j < D) m2 += (v[k] - mu) * (v[k] - mu);
  }
  const A rs = rstd_of(warp_allsum(m2), D, eps);
  A s1 = 0, s2 = 0;
#pragma unroll
  for (int k = 0; k < kPerLane; ++k) {
    v[k] = (v[k] - mu) * rs;  // xhat (0 past D: gh is 0 there too)
    s1 += gh[k];
    s2 += gh[k] * v[k];
  }
  s1 = warp_allsum(s1) / A(D);
  s2 = warp_allsum(s2) / A(D);
  if (dx) {
#pragma unroll
    for (int k = 0; k < kPerLane; ++k) {
      const int j = lane + k * kWarpSize;
      if (j < D) dx[row * D + j] = store_acc<T>(rs * (gh[k] - s1 - v[k] * s2));
    }
  }
  if (lane == 0 && mean) {
    mean[row] = mu;
    rstd_out[row] = rs;
  }
}

template <class T>
__global__ void __launch_bounds__(kBlock)
    layer_norm_dx_block(int64_t rows, int64_t D, const T* x, const T* w, const T* g, double eps,
                        T* dx, acc_t<T>* mean, acc_t<T>* rstd_out) {
  using A = acc_t<T>;
  __shared__ A shared[kWarpSize];
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* xr = x + row * D;
    const T* gr = g + row * D;
    A s = 0;
    for (int64_t j = threadIdx.x; j < D; j += blockDim.x) s += load_acc(xr[j]);
    const A mu = block_allreduce<A, false>(s, shared) / A(D);
    A m2 = 0;
    for (int64_t j = threadIdx.x; j < D; j += blockDim.x) {
      const A c = load_acc(xr[j]) - mu;
      m2 += c * c;
    }
    const A rs = rstd_of(block_allreduce<A, false>(m2, shared), D, eps);
    A s1 = 0, s2 = 0;
    for (int64_t j = threadIdx.x; j < D; j += blockDim.x) {
      const A gh = load_acc(gr[j]) * (w ? load_acc(w[j]) : A(1));
      s1 += gh;
      s2 += gh * (load_acc(xr[j]) - mu) * rs;
    }
    s1 = block_allreduce<A, false>(s1, shared) / A(D);
    s2 = block_allreduce<A, false>(s2, shared) / A(D);
    if (dx) {
      for (int64_t j = threadIdx.x; j < D; j += blockDim.x) {
        const A gh = load_acc(gr[j]) * (w ? load_acc(w[j]) : A(1));
        const A xhat = (load_acc(xr[j]) - mu) * rs;
        dx[row * D + j] = store_acc<T>(rs * (gh - s1 - xhat * s2));
      }
    }
    if (threadIdx.x == 0 && mean) {
      mean[row] = mu;
      rstd_out[row] = rs;
    }
  }
}

// ---- backward: dw, db ----
// Block (32 columns x 8 row lanes) over chunk blockIdx.y of the rows; the 8 lanes' sums are
// combined in lane order. partial_w/partial_b: (partials, D).
template <class T>
__global__ void __launch_bounds__(kBlock)
    layer_norm_dwdb_partials(int64_t rows, int64_t D, int64_t chunk, const T* x, const T* g,
                             const acc_t<T>* mean, const acc_t<T>* rstd, acc_t<T>* partial_w,
                             acc_t<T>* partial_b) {
  using A = acc_t<T>;
  __shared__ A sw[kWarps][kWarpSize + 1], sb[kWarps][kWarpSize + 1];
  const int tx = threadIdx.x % kWarpSize, ty = threadIdx.x / kWarpSize;
  const int64_t j = int64_t(blockIdx.x) * kWarpSize + tx;
  const int64_t r0 = int64_t(blockIdx.y) * chunk;
  const int64_t r1 = r0 + chunk < rows ? r0 + chunk : rows;
  A aw = 0, ab = 0;
  if (j < D) {
    for (int64_t r = r0 + ty; r < r1; r += kWarps) {
      const A gv = load_acc(g[r * D + j]);
      aw += gv * (load_acc(x[r * D + j]) - mean[r]) * rstd[r];
      ab += gv;
    }
  }
  sw[ty][tx] = aw;
  sb[ty][tx] = ab;
  __syncthreads();
  if (ty == 0 && j < D) {
    for (int k = 1; k < kWarps; ++k) {
      aw += sw[k][tx];
      ab += sb[k][tx];
    }
    partial_w[int64_t(blockIdx.y) * D + j] = aw;
    partial_b[int64_t(blockIdx.y) * D + j] = ab;
  }
}

template <class T>
__global__ void __launch_bounds__(kBlock)
    layer_norm_dwdb_combine(int64_t D, int64_t partials, const acc_t<T>* partial_w,
                            const acc_t<T>* partial_b, T* dw, T* db) {
  using A = acc_t<T>;
  for (int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; j < D;
       j += int64_t(gridDim.x) * blockDim.x) {
    A aw = 0, ab = 0;
    for (int64_t p = 0; p < partials; ++p) {
      aw += partial_w[p * D + j];
      ab += partial_b[p * D + j];
    }
    if (dw) dw[j] = store_acc<T>(aw);
    if (db) db[j] = store_acc<T>(ab);
  }
}

// ---- double backward (layer_norm_input_grad's rule when not recorded) ----
// Per row, with xhat, gh = g w and v the gradient arriving at dx:
//   a = mean(gh), b = mean(gh xhat), mv = mean(v), mvx = mean(v xhat), mvg = mean(v gh)
//   gx = -rstd^2 (xhat (mvg - a mv - 3 b mvx) + mvx (gh - a) + b (v - mv))
//   gg = w rstd (v - mv - xhat mvx),   gw = sum_rows g rstd (v - mv - xhat mvx)
// stats (4, rows): mean, rstd, mv, mvx of each row, for the gw pass (nullptr when not wanted).
template <class T, int kPerLane>
__global__ void __launch_bounds__(kBlock)
    layer_norm_ddx_warp(int64_t rows, int D, const T* x, const T* w, const T* g, const T* v,
                        double eps, T* gx, T* gg, acc_t<T>* stats) {
  using A = acc_t<T>;
  const int lane = threadIdx.x % kWarpSize;
  const int64_t row = int64_t(blockIdx.x) * kWarps + threadIdx.x / kWarpSize;
  if (row >= rows) return;
  A xh[kPerLane], gh[kPerLane], vv[kPerLane];
  A s = 0;
#pragma unroll
  for (int k = 0; k < kPerLane; ++k) {
    const int j = lane + k * kWarpSize;
    xh[k] = j < D ? load_acc(x[row * D + j]) : A(0);
    gh[k] = j < D ? load_acc(g[row * D + j]) * (w ? load_acc(w[j]) : A(1)) : A(0);
    vv[k] = j < D ? load_acc(v[row * D + j]) : A(0);
    s += xh[k];
  }
  const A mu = warp_allsum(s) / A(D);
  A m2 = 0;
#pragma unroll
  for (int k = 0; k < kPerLane; ++k) {
    const int j = lane + k * kWarpSize;
    if (j < D) m2 += (xh[k] - mu) * (xh[k] - mu);
  }
  const A rs = rstd_of(warp_allsum(m2), D, eps);
  A sa = 0, sb = 0, sv = 0, svx = 0, svg = 0;
#pragma unroll
  for (int k = 0; k < kPerLane; ++k) {
    xh[k] = (xh[k] - mu) * rs;  // past D: gh and v are 0, so the products below are too
    sa += gh[k];
    sb += gh[k] * xh[k];
    sv += vv[k];
    svx += vv[k] * xh[k];
    svg += vv[k] * gh[k];
  }
  const A a = warp_allsum(sa) / A(D), b = warp_allsum(sb) / A(D), mv = warp_allsum(sv) / A(D),
          mvx = warp_allsum(svx) / A(D), mvg = warp_allsum(svg) / A(D);
  const A coef = mvg - a * mv - A(3) * b * mvx;
#pragma unroll
  for (int k = 0; k < kPerLane; ++k) {
    const int j = lane + k * kWarpSize;
    if (j >= D) continue;
    if (gx) gx[row * D + j] = store_acc<T>(-rs * rs * (xh[k] * coef + mvx * (gh[k] - a) +
                                                       b * (vv[k] - mv)));
    if (gg) {
      const A dgh = rs * (vv[k] - mv - xh[k] * mvx);
      gg[row * D + j] = store_acc<T>(w ? dgh * load_acc(w[j]) : dgh);
    }
  }
  if (lane == 0 && stats) {
    stats[row] = mu;
    stats[rows + row] = rs;
    stats[2 * rows + row] = mv;
    stats[3 * rows + row] = mvx;
  }
}

template <class T>
__global__ void __launch_bounds__(kBlock)
    layer_norm_ddx_block(int64_t rows, int64_t D, const T* x, const T* w, const T* g,
                         const T* v, double eps, T* gx, T* gg, acc_t<T>* stats) {
  using A = acc_t<T>;
  __shared__ A shared[kWarpSize];
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* xr = x + row * D;
    const T* gr = g + row * D;
    const T* vr = v + row * D;
    auto gh_at = [&](int64_t j) { return load_acc(gr[j]) * (w ? load_acc(w[j]) : A(1)); };
    A s = 0;
    for (int64_t j = threadIdx.x; j < D; j += blockDim.x) s += load_acc(xr[j]);
    const A mu = block_allreduce<A, false>(s, shared) / A(D);
    A m2 = 0;
    for (int64_t j = threadIdx.x; j < D; j += blockDim.x) {
      const A c = load_acc(xr[j]) - mu;
      m2 += c * c;
    }
    const A rs = rstd_of(block_allreduce<A, false>(m2, shared), D, eps);
    A sa = 0, sb = 0, sv = 0, svx = 0, svg = 0;
    for (int64_t j = threadIdx.x; j < D; j += blockDim.x) {
      const A xh = (load_acc(xr[j]) - mu) * rs, gh = gh_at(j), vj = load_acc(vr[j]);
      sa += gh;
      sb += gh * xh;
      sv += vj;
      svx += vj * xh;
      svg += vj * gh;
    }
    const A a = block_allreduce<A, false>(sa, shared) / A(D);
    const A b = block_allreduce<A, false>(sb, shared) / A(D);
    const A mv = block_allreduce<A, false>(sv, shared) / A(D);
    const A mvx = block_allreduce<A, false>(svx, shared) / A(D);
    const A mvg = block_allreduce<A, false>(svg, shared) / A(D);
    const A coef = mvg - a * mv - A(3) * b * mvx;
    for (int64_t j = threadIdx.x; j < D; j += blockDim.x) {
      const A xh = (load_acc(xr[j]) - mu) * rs, gh = gh_at(j), vj = load_acc(vr[j]);
      if (gx) gx[row * D + j] = store_acc<T>(-rs * rs * (xh * coef + mvx * (gh - a) +
                                                         b * (vj - mv)));
      if (gg) {
        const A dgh = rs * (vj - mv - xh * mvx);
        gg[row * D + j] = store_acc<T>(w ? dgh * load_acc(w[j]) : dgh);
      }
    }
    if (threadIdx.x == 0 && stats) {
      stats[row] = mu;
      stats[rows + row] = rs;
      stats[2 * rows + row] = mv;
      stats[3 * rows + row] = mvx;
    }
  }
}

// gw's partial sums per row chunk, as layer_norm_dwdb_partials (32 columns x 8 row lanes).
template <class T>
__global__ void __launch_bounds__(kBlock)
    layer_norm_ddw_partials(int64_t rows, int64_t D, int64_t chunk, const T* x, const T* g,
                            const T* v, const acc_t<T>* stats, acc_t<T>* partial_w) {
  using A = acc_t<T>;
  __shared__ A sw[kWarps][kWarpSize + 1];
  const int tx = threadIdx.x % kWarpSize, ty = threadIdx.x / kWarpSize;
  const int64_t j = int64_t(blockIdx.x) * kWarpSize + tx;
  const int64_t r0 = int64_t(blockIdx.y) * chunk;
  const int64_t r1 = r0 + chunk < rows ? r0 + chunk : rows;
  const A* mean = stats;
  const A* rstd = stats + rows;
  const A* mv = stats + 2 * rows;
  const A* mvx = stats + 3 * rows;
  A aw = 0;
  if (j < D) {
    for (int64_t r = r0 + ty; r < r1; r += kWarps) {
      const A xh = (load_acc(x[r * D + j]) - mean[r]) * rstd[r];
      aw += load_acc(g[r * D + j]) * rstd[r] * (load_acc(v[r * D + j]) - mv[r] - xh * mvx[r]);
    }
  }
  sw[ty][tx] = aw;
  __syncthreads();
  if (ty == 0 && j < D) {
    for (int k = 1; k < kWarps; ++k) aw += sw[k][tx];
    partial_w[int64_t(blockIdx.y) * D + j] = aw;
  }
}

constexpr int64_t kMaxGrid = 0x7fffffff;

// Launches kernel<T, kPerLane> for the smallest register width that holds D (<= 1024).
template <class T, class Launch>
void by_width(int64_t D, Launch&& launch) {
  if (D <= 32) {
    launch.template operator()<1>();
  } else if (D <= 64) {
    launch.template operator()<2>();
  } else if (D <= 128) {
    launch.template operator()<4>();
  } else if (D <= 256) {
    launch.template operator()<8>();
  } else if (D <= 512) {
    launch.template operator()<16>();
  } else {
    launch.template operator()<32>();
  }
}

template <class T>
void forward(int64_t rows, int64_t D, const void* x_v, const void* w_v, const void* b_v,
             double eps, void* y_v, cudaStream_t s) {
  const T* x = static_cast<const T*>(x_v);
  const T* w = static_cast<const T*>(w_v);
  const T* b = static_cast<const T*>(b_v);
  T* y = static_cast<T*>(y_v);
  if (rows == 0 || D == 0) return;
  if (D <= 1024) {
    const unsigned grid = unsigned((rows + kWarps - 1) / kWarps);
    by_width<T>(D, [&]<int kPerLane>() {
      layer_norm_warp<T, kPerLane><<<grid, kBlock, 0, s>>>(rows, int(D), x, w, b, eps, y);
    });
  } else {
    const unsigned grid = unsigned(rows < kMaxGrid ? rows : kMaxGrid);
    layer_norm_block<T><<<grid, kBlock, 0, s>>>(rows, D, x, w, b, eps, y);
  }
  MT_CUDA_CHECK(cudaGetLastError());
}

template <class T>
void backward(int64_t rows, int64_t D, const void* x_v, const void* w_v, const void* g_v,
              double eps, void* dx_v, void* dw_v, void* db_v, void* ws_v, cudaStream_t s,
              int sms) {
  using A = acc_t<T>;
  const T* x = static_cast<const T*>(x_v);
  const T* w = static_cast<const T*>(w_v);
  const T* g = static_cast<const T*>(g_v);
  T* dx = static_cast<T*>(dx_v);
  T* dw = static_cast<T*>(dw_v);
  T* db = static_cast<T*>(db_v);
  const bool sums = dw != nullptr || db != nullptr;
  if (D == 0) return;
  if (rows == 0) {  // empty sums
    if (dw) MT_CUDA_CHECK(cudaMemsetAsync(dw, 0, size_t(D) * sizeof(T), s));
    if (db) MT_CUDA_CHECK(cudaMemsetAsync(db, 0, size_t(D) * sizeof(T), s));
    return;
  }
  A* mean = sums ? static_cast<A*>(ws_v) : nullptr;
  A* rstd = sums ? mean + rows : nullptr;
  if (D <= 1024) {
    const unsigned grid = unsigned((rows + kWarps - 1) / kWarps);
    by_width<T>(D, [&]<int kPerLane>() {
      layer_norm_dx_warp<T, kPerLane><<<grid, kBlock, 0, s>>>(rows, int(D), x, w, g, eps, dx,
                                                              mean, rstd);
    });
  } else {
    const unsigned grid = unsigned(rows < kMaxGrid ? rows : kMaxGrid);
    layer_norm_dx_block<T><<<grid, kBlock, 0, s>>>(rows, D, x, w, g, eps, dx, mean, rstd);
  }
  MT_CUDA_CHECK(cudaGetLastError());
  if (!sums) return;
  const int64_t partials = layer_norm_partials(rows);
  const int64_t chunk = (rows + partials - 1) / partials;
  A* partial_w = rstd + rows;
  A* partial_b = partial_w + partials * D;
  const dim3 grid(unsigned((D + kWarpSize - 1) / kWarpSize), unsigned(partials));
  layer_norm_dwdb_partials<T><<<grid, kBlock, 0, s>>>(rows, D, chunk, x, g, mean, rstd,
                                                      partial_w, partial_b);
  MT_CUDA_CHECK(cudaGetLastError());
  layer_norm_dwdb_combine<T><<<grid_for(D, sms), kBlock, 0, s>>>(D, partials, partial_w,
                                                                 partial_b, dw, db);
  MT_CUDA_CHECK(cudaGetLastError());
}

template <class T>
void double_backward(int64_t rows, int64_t D, const void* x_v, const void* w_v, const void* g_v,
                     const void* v_v, double eps, void* gx_v, void* gw_v, void* gg_v, void* ws_v,
                     cudaStream_t s, int sms) {
  using A = acc_t<T>;
  const T* x = static_cast<const T*>(x_v);
  const T* w = static_cast<const T*>(w_v);
  const T* g = static_cast<const T*>(g_v);
  const T* v = static_cast<const T*>(v_v);
  T* gx = static_cast<T*>(gx_v);
  T* gw = static_cast<T*>(gw_v);
  T* gg = static_cast<T*>(gg_v);
  if (D == 0) return;
  if (rows == 0) {  // an empty sum
    if (gw) MT_CUDA_CHECK(cudaMemsetAsync(gw, 0, size_t(D) * sizeof(T), s));
    return;
  }
  A* stats = gw ? static_cast<A*>(ws_v) : nullptr;
  if (D <= 1024) {
    const unsigned grid = unsigned((rows + kWarps - 1) / kWarps);
    by_width<T>(D, [&]<int kPerLane>() {
      layer_norm_ddx_warp<T, kPerLane><<<grid, kBlock, 0, s>>>(rows, int(D), x, w, g, v, eps, gx,
                                                               gg, stats);
    });
  } else {
    const unsigned grid = unsigned(rows < kMaxGrid ? rows : kMaxGrid);
    layer_norm_ddx_block<T><<<grid, kBlock, 0, s>>>(rows, D, x, w, g, v, eps, gx, gg, stats);
  }
  MT_CUDA_CHECK(cudaGetLastError());
  if (!gw) return;
  const int64_t partials = layer_norm_partials(rows);
  const int64_t chunk = (rows + partials - 1) / partials;
  A* partial_w = stats + 4 * rows;
  const dim3 grid(unsigned((D + kWarpSize - 1) / kWarpSize), unsigned(partials));
  layer_norm_ddw_partials<T><<<grid, kBlock, 0, s>>>(rows, D, chunk, x, g, v, stats, partial_w);
  MT_CUDA_CHECK(cudaGetLastError());
  // The combine pass of the first-order backward, with no db (its second partials are unused).
  layer_norm_dwdb_combine<T><<<grid_for(D, sms), kBlock, 0, s>>>(D, partials, partial_w,
                                                                 partial_w, gw, nullptr);
  MT_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

size_t layer_norm_double_backward_workspace(ScalarType t, int64_t rows, int64_t D) {
  const size_t acc = t == ScalarType::f64 ? 8 : 4;
  return acc * size_t(4 * rows + layer_norm_partials(rows) * D);
}

void layer_norm_double_backward(ScalarType t, int64_t rows, int64_t D, const void* x,
                                const void* weight, const void* g, const void* v, double eps,
                                void* gx, void* gw, void* gg, void* workspace,
                                cudaStream_t stream, int sm_count) {
  dispatch_float_storage(t, [&]<class T>() {
    double_backward<T>(rows, D, x, weight, g, v, eps, gx, gw, gg, workspace, stream, sm_count);
  });
}

int64_t layer_norm_partials(int64_t rows) {
  // About 512 rows per chunk, at most 256 chunks: enough blocks to fill a GPU for the POCO
  // shapes (rows 1e3..1e6), from the shape alone.
  const int64_t p = (rows + 511) / 512;
  return p < 1 ? 1 : (p > 256 ? 256 : p);
}

size_t layer_norm_backward_workspace(ScalarType t, int64_t rows, int64_t D) {
  const size_t acc = t == ScalarType::f64 ? 8 : 4;
  return acc * size_t(2 * rows + 2 * layer_norm_partials(rows) * D);
}

void layer_norm(ScalarType t, int64_t rows, int64_t D, const void* x, const void* weight,
                const void* bias, double eps, void* out, cudaStream_t stream, int /*sm_count*/) {
  dispatch_float_storage(
      t, [&]<class T>() { forward<T>(rows, D, x, weight, bias, eps, out, stream); });
}

void layer_norm_backward(ScalarType t, int64_t rows, int64_t D, const void* x,
                         const void* weight, const void* g, double eps, void* dx, void* dw,
                         void* db, void* workspace, cudaStream_t stream, int sm_count) {
  dispatch_float_storage(t, [&]<class T>() {
    backward<T>(rows, D, x, weight, g, eps, dx, dw, db, workspace, stream, sm_count);
  });
}

}  // namespace mt::gpu
