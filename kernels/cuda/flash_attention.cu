// Fused variable-length attention: forward, backward and double backward (the derivation is in
// flash_attention.md beside this file; the CPU reference is engine/ops/flash_attention.cpp).
//
// Every kernel has the same shape. A CTA of 4 warps owns kFlashBlockRows = 16 "rows" of one
// sample and one head (queries for the forward and the query-side kernels, keys for the
// key-side kernels), 4 rows per warp, their vectors staged in shared memory. It loops over the
// sample's "tile" side (keys, or queries) in tiles of kTile entries staged in shared memory
// (row stride kD + 1, so both the lane-per-entry dot products and the lane-per-column
// accumulations are free of bank conflicts). Lane l computes the pair quantities (scores, P,
// dS, ...) of its warp's 4 rows with tile entries l, l + 32, ...; writes the coefficients to
// shared memory; then every lane accumulates its own columns (l, l + 32, ...) of the output
// rows over the tile. No N x M matrix exists anywhere, only tiles.
//
// Accumulation is in f32 (f64 for f64 storage); 16-bit inputs are converted when staged. The
// output rows of a CTA are written by that CTA only and summed in a fixed order: no atomics,
// deterministic results. Everything runs on the caller's stream; nothing waits for the device.
#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <type_traits>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/elementwise.cuh"  // m_exp, m_log

namespace mt::gpu {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * kWarpSize;
constexpr int kRows = kFlashBlockRows;  // rows per CTA
constexpr int kRowsPerWarp = kRows / kWarps;
static_assert(kRows == kWarps * kRowsPerWarp);

struct Args {
  const int64_t* cu_rows;   // (B+1) offsets of the row side
  const int64_t* cu_tiles;  // (B+1) offsets of the tile side
  const int64_t* blocks;    // (sample, first row) per CTA
  int H, dh;
  int splits = 1;          // key splits per sample (gridDim.z) of the split kernels
  int64_t total_rows = 0;  // rows of the row side (Nq): the stride of the split partials
};

// Where a CTA's rows and tile entries lie.
struct Span {
  int64_t row0;   // first global row of the CTA
  int nrows;      // valid rows (<= kRows)
  int64_t tile0;  // first global tile entry of the sample
  int64_t ntile;  // tile entries of the sample
};
__device__ __forceinline__ Span span_of(const Args& a) {
  const int64_t sample = a.blocks[2 * blockIdx.x], first = a.blocks[2 * blockIdx.x + 1];
  Span s;
  s.row0 = a.cu_rows[sample] + first;
  const int64_t left = a.cu_rows[sample + 1] - s.row0;
  s.nrows = int(left < kRows ? left : kRows);
  s.tile0 = a.cu_tiles[sample];
  s.ntile = a.cu_tiles[sample + 1] - s.tile0;
  return s;
}

// The tile entries [kb, ke) (relative to the sample) of split blockIdx.z of a split kernel: the
// sample's tiles dealt out in whole tiles, ceil(tiles / splits) to each split; the last splits
// may hold fewer entries, a partial tile, or none (kb = ke). CTA-uniform, so the loops over it
// keep their barriers uniform.
template <int kTile>
__device__ __forceinline__ void split_range(const Span& sp, int splits, int64_t& kb,
                                            int64_t& ke) {
  const int64_t tiles = (sp.ntile + kTile - 1) / kTile;
  const int64_t per = (tiles + splits - 1) / splits;
  const int64_t start = int64_t(blockIdx.z) * per * kTile;
  kb = start < sp.ntile ? start : sp.ntile;
  ke = kb + per * kTile < sp.ntile ? kb + per * kTile : sp.ntile;
}

// Shared-memory layout of one kernel: row vectors (kRows x kD), tile vectors (kTile x (kD+1)),
// per-tile-entry scalars (kTile), coefficients (warps x kinds x rows per warp x kTile).
template <class A, int kD, int kTile>
struct Smem {
  static constexpr int kTileStride = kD + 1;
  static constexpr size_t bytes(int row_vecs, int tile_vecs, int tile_scalars, int coefs) {
    return sizeof(A) * (size_t(row_vecs) * kRows * kD + size_t(tile_vecs) * kTile * kTileStride +
                        size_t(tile_scalars) * kTile +
                        size_t(coefs) * kWarps * kRowsPerWarp * kTile);
  }
};

// rows [row0, row0 + nrows) of head h of x (N, H, dh) -> dst (kRows x kD), zeros elsewhere.
template <class T, class A, int kD>
__device__ __forceinline__ void stage_rows(const T* __restrict__ x, int64_t row0, int nrows,
                                           const Args& a, int h, A* dst) {
  for (int idx = threadIdx.x; idx < kRows * kD; idx += kThreads) {
    const int r = idx / kD, c = idx % kD;
    dst[idx] = (r < nrows && c < a.dh) ? load_acc(x[((row0 + r) * a.H + h) * a.dh + c]) : A(0);
  }
}
// Tile entries [t0, t0 + n) of head h -> dst (kTile x (kD+1)), zeros elsewhere.
template <class T, class A, int kD, int kTile>
__device__ __forceinline__ void stage_tile(const T* __restrict__ x, int64_t t0, int n,
                                           const Args& a, int h, A* dst) {
  for (int idx = threadIdx.x; idx < kTile * kD; idx += kThreads) {
    const int j = idx / kD, c = idx % kD;
    dst[j * (kD + 1) + c] =
        (j < n && c < a.dh) ? load_acc(x[((t0 + j) * a.H + h) * a.dh + c]) : A(0);
  }
}
// Per-entry scalars s (N, H) of head h for tile entries [t0, t0 + n); `fill` elsewhere.
template <class A, int kTile>
__device__ __forceinline__ void stage_scalars(const A* __restrict__ s, int64_t t0, int n,
                                              const Args& a, int h, A* dst, A fill) {
  for (int j = threadIdx.x; j < kTile; j += kThreads) dst[j] = j < n ? s[(t0 + j) * a.H + h] : fill;
}

// out[r][t] = <row r of the warp, tile entry lane + 32 t>.
template <class A, int kD, int kTile>
__device__ __forceinline__ void dots(const A* rows, const A* tile, A (&out)[kRowsPerWarp][kTile / 32]) {
  constexpr int TJ = kTile / 32;
  const int lane = threadIdx.x % kWarpSize;
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r)
#pragma unroll
    for (int t = 0; t < TJ; ++t) out[r][t] = A(0);
#pragma unroll 8
  for (int c = 0; c < kD; ++c) {
    A tv[TJ];
#pragma unroll
    for (int t = 0; t < TJ; ++t) tv[t] = tile[(lane + 32 * t) * (kD + 1) + c];
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const A rv = rows[r * kD + c];  // the same address in every lane: a broadcast
#pragma unroll
      for (int t = 0; t < TJ; ++t) out[r][t] += rv * tv[t];
    }
  }
}

// acc[r][n] += sum_j coef[r][j] * tile[j][lane + 32 n] over the tile (coefficients of entries
// past the end are zero, and so are their staged vectors).
template <class A, int kD, int kTile>
__device__ __forceinline__ void accumulate(const A* coef, const A* tile,
                                           A (&acc)[kRowsPerWarp][kD / 32]) {
  constexpr int NC = kD / 32;
  const int lane = threadIdx.x % kWarpSize;
#pragma unroll 4
  for (int j = 0; j < kTile; ++j) {
    A tv[NC];
#pragma unroll
    for (int n = 0; n < NC; ++n) tv[n] = tile[j * (kD + 1) + lane + 32 * n];
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const A cf = coef[r * kTile + j];
#pragma unroll
      for (int n = 0; n < NC; ++n) acc[r][n] += cf * tv[n];
    }
  }
}

template <class A, int kD>
__device__ __forceinline__ void zero(A (&acc)[kRowsPerWarp][kD / 32]) {
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r)
#pragma unroll
    for (int n = 0; n < kD / 32; ++n) acc[r][n] = A(0);
}

// Writes factor * acc for the warp's valid rows (columns < dh) of head h of out (N, H, dh).
template <class T, class A, int kD>
__device__ __forceinline__ void write_rows(const A (&acc)[kRowsPerWarp][kD / 32], A factor,
                                           T* __restrict__ out, const Span& sp, const Args& a,
                                           int h) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int row = warp * kRowsPerWarp + r;
    if (row >= sp.nrows) continue;
#pragma unroll
    for (int n = 0; n < kD / 32; ++n) {
      const int c = lane + 32 * n;
      if (c < a.dh) out[((sp.row0 + row) * a.H + h) * a.dh + c] = store_acc<T>(factor * acc[r][n]);
    }
  }
}

// rowsum(x y) of the warp's rows, x staged (kRows x kD), y read from global memory.
template <class T, class A, int kD>
__device__ __forceinline__ void row_dots(const A* x, const T* __restrict__ y, const Span& sp,
                                         const Args& a, int h, A (&out)[kRowsPerWarp]) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int row = warp * kRowsPerWarp + r;
    A s = 0;
    if (row < sp.nrows)
      for (int c = lane; c < a.dh; c += kWarpSize)
        s += x[row * kD + c] * load_acc(y[((sp.row0 + row) * a.H + h) * a.dh + c]);
    out[r] = warp_allsum(s);
  }
}

template <class A>
__device__ __forceinline__ A* smem_base() {
  extern __shared__ __align__(16) unsigned char flash_smem[];
  return reinterpret_cast<A*>(flash_smem);
}

// ---------------------------------------------------------------------------------------------
// forward: rows = queries, tile = keys. Online softmax: running max m, running sum l.
// kSplit: the CTA covers the keys of split blockIdx.z only and writes its unnormalised acc, m
// and l to `part` ((S, Nq, H, dh) acc, then (S, Nq, H) m, then (S, Nq, H) l); flash_fwd_combine
// makes o and lse of them. An empty split writes acc = 0, m = -inf, l = 0.
// ---------------------------------------------------------------------------------------------
template <class T, int kD, int kTile, bool kSplit>
__global__ void __launch_bounds__(kThreads)
    flash_fwd(Args a, acc_t<T> scale, const T* __restrict__ q, const T* __restrict__ k,
              const T* __restrict__ v, T* __restrict__ o, acc_t<T>* __restrict__ lse,
              acc_t<T>* __restrict__ part) {
  using A = acc_t<T>;
  constexpr int TJ = kTile / 32;
  const int h = blockIdx.y, lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const Span sp = span_of(a);
  A* rq = smem_base<A>();
  A* tk = rq + kRows * kD;
  A* tv = tk + kTile * (kD + 1);
  A* cf = tv + kTile * (kD + 1) + warp * kRowsPerWarp * kTile;
  stage_rows<T, A, kD>(q, sp.row0, sp.nrows, a, h, rq);
  A m[kRowsPerWarp], l[kRowsPerWarp], acc[kRowsPerWarp][kD / 32];
  zero<A, kD>(acc);
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    m[r] = A(-INFINITY);
    l[r] = A(0);
  }
  int64_t kb = 0, ke = sp.ntile;
  if constexpr (kSplit) split_range<kTile>(sp, a.splits, kb, ke);
  for (int64_t t0 = kb; t0 < ke; t0 += kTile) {
    const int n = int(ke - t0 < kTile ? ke - t0 : kTile);
    __syncthreads();  // the previous tile is consumed (and the rows are staged)
    stage_tile<T, A, kD, kTile>(k, sp.tile0 + t0, n, a, h, tk);
    stage_tile<T, A, kD, kTile>(v, sp.tile0 + t0, n, a, h, tv);
    __syncthreads();
    A s[kRowsPerWarp][TJ];
    dots<A, kD, kTile>(rq + warp * kRowsPerWarp * kD, tk, s);
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      A tmax = A(-INFINITY);
#pragma unroll
      for (int t = 0; t < TJ; ++t) {
        s[r][t] = lane + 32 * t < n ? s[r][t] * scale : A(-INFINITY);
        tmax = s[r][t] > tmax ? s[r][t] : tmax;
      }
      tmax = warp_allmax(tmax);  // finite: the tile holds at least one key
      const A mnew = m[r] > tmax ? m[r] : tmax;
      const A alpha = m_exp(m[r] - mnew);  // 0 on the first tile (m = -inf)
      A psum = 0;
#pragma unroll
      for (int t = 0; t < TJ; ++t) {
        const A p = lane + 32 * t < n ? m_exp(s[r][t] - mnew) : A(0);
        cf[r * kTile + lane + 32 * t] = p;
        psum += p;
      }
      l[r] = l[r] * alpha + warp_allsum(psum);
      m[r] = mnew;
#pragma unroll
      for (int c = 0; c < kD / 32; ++c) acc[r][c] *= alpha;
    }
    __syncwarp();
    accumulate<A, kD, kTile>(cf, tv, acc);
  }
  if constexpr (kSplit) {
    const int64_t NH = a.total_rows * a.H, z = blockIdx.z;
    A* pm = part + a.splits * NH * a.dh + z * NH;
    A* pl = part + a.splits * NH * (a.dh + 1) + z * NH;
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const int row = warp * kRowsPerWarp + r;
      if (row < sp.nrows && lane == 0) {
        pm[(sp.row0 + row) * a.H + h] = m[r];
        pl[(sp.row0 + row) * a.H + h] = l[r];
      }
    }
    write_rows<A, A, kD>(acc, A(1), part + z * NH * a.dh, sp, a, h);
  } else {
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const int row = warp * kRowsPerWarp + r;
      if (row >= sp.nrows) continue;
      const A inv = A(1) / l[r];
#pragma unroll
      for (int c = 0; c < kD / 32; ++c) acc[r][c] *= inv;
      if (lane == 0) lse[(sp.row0 + row) * a.H + h] = m[r] + m_log(l[r]);
    }
    write_rows<T, A, kD>(acc, A(1), o, sp, a, h);
  }
}

// ---------------------------------------------------------------------------------------------
// Tensor-core forward (FlashKernels::mma): 16-bit and f32 storage, dh in {32, 64, 128}; f64 and
// other head dims run flash_fwd. Described below for 16-bit storage; f32 keeps the same layout
// and data flow through the fragment arithmetic MmaTf32 (below, with Mma16). Same grid, block
// tables, split ranges and outputs (o, lse, or the split partials acc/m/l for
// flash_fwd_combine) as flash_fwd.
//
// mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32: D (16x8 f32) = A (16x16) B
// (16x8) + C. Lane = 4 g + t (g = groupID = lane / 4, t = threadID_in_group = lane % 4). Each A/B
// register is 32 bits holding two 16-bit elements, the lower-indexed one in the low half; C/D
// registers hold one f32 each:
//   A (16 x 16, rows m, cols k, "row"): a0 = A[g][2t, 2t+1]      a1 = A[g+8][2t, 2t+1]
//                                       a2 = A[g][2t+8, 2t+9]    a3 = A[g+8][2t+8, 2t+9]
//   B (16 x 8, rows k, cols n, "col"):  b0 = B[2t, 2t+1][g]      b1 = B[2t+8, 2t+9][g]
//   C, D (16 x 8):                      c0, c1 = C[g][2t, 2t+1]  c2, c3 = C[g+8][2t, 2t+1]
// The CTA (4 warps, the 16 queries of its block) stages key tiles of kMmaTile = 64 keys (K and V
// as raw 16-bit rows of kD + 8 elements, f32 rows of kD + 4: MmaSmem); warp w
// takes keys [16 w, 16 w + 16) of every tile, with its own online softmax (m, l, acc) over all 16
// rows; the 4 warps' states are merged at the end in a fixed order (deterministic). Per warp and
// tile, keys j0 = 16 w ...:
//   S = Q K^T: A = Q (16 x kD, kD / 16 k-steps, held in registers for the whole kernel (16-bit;
//     f32 reloads them at each use: MmaRows), loaded
//     from global memory), B = K^T (k = head-dim column, n = key): b0 = K[j0 + 8 nt + g][16 ks +
//     2t, +1], two adjacent elements of a K row (one 32-bit load), b1 the columns + 8; n-tiles
//     nt = 0, 1 cover the 16 keys. Score registers s[nt][i]: row g + 8 (i / 2), key j0 + 8 nt +
//     2t + (i % 2).
//   O += P V: A = P (16 queries x 16 keys): the C registers of the two S n-tiles are exactly
//     its fragment: a0 = s[0][0,1], a1 = s[0][2,3], a2 = s[1][0,1], a3 = s[1][2,3] (P rounded
//     to 16-bit storage, as flash kernels do; f32: kept, then split into TF32 parts); B = V
//     (k = key, n = head-dim column): b0 = {V[j0 + 2t][8 nd + g], V[j0 + 2t + 1][8 nd + g]},
//     b1 = the keys + 8 (two 16-bit loads each).
//   acc[nd][0, 1] = O[g][8 nd + 2t, +1], acc[nd][2, 3] = O[g + 8][8 nd + 2t, +1].
// Scores are kept in base 2 (scale log2(e) folded into the scale, exp2f): m and lse are
// converted back to natural units when written.
// Rounding P to 16 bits changes each weight by at most 2^-9 (bf16) or 2^-12 (f16) relative,
// while l sums the f32 weights, so |o - o_exact| <= 2^-9 max |v| (2^-12 for f16): inside the
// tests' kBF16 / kF16 absolute tolerances for |v| <= 1.
// ---------------------------------------------------------------------------------------------
constexpr int kMmaKeys = 16;                  // keys per warp per tile
constexpr int kMmaTile = kWarps * kMmaKeys;   // keys per staged tile

// Elem: the raw element staged in shared memory (uint16_t for 16-bit storage, float for f32).
// Rows of kD + 8 16-bit elements (16-byte padding) keep the 32-bit fragment loads of both
// patterns (a row's adjacent pair; two rows' same column) conflict-free; f32 rows take kD + 4
// floats, which keeps the two-row pattern (the more frequent one: the P V and dS K products)
// conflict-free and costs the 64-bit adjacent-pair loads a two-way conflict.
template <int kD, class Elem = uint16_t>
struct MmaSmem {
  static constexpr int kStride = kD + (sizeof(Elem) == 2 ? 8 : 4);  // elements per staged row
  static constexpr int kRedStride = kD + 4;  // floats per row of the final merge
  static constexpr size_t kv_bytes = size_t(2) * kMmaTile * kStride * sizeof(Elem);
  static constexpr size_t red_bytes =
      sizeof(float) * (size_t(kWarps) * kRows * kRedStride + 2 * size_t(kWarps) * kRows);
  static constexpr size_t bytes = kv_bytes > red_bytes ? kv_bytes : red_bytes;
};

template <class T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                          uint32_t b1) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    static_assert(std::is_same_v<T, __half>);
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// Two f32 -> one register of two 16-bit elements (lo in the low half), round to nearest even.
template <class T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  return uint32_t(__bfloat16_as_ushort(__float2bfloat16_rn(lo))) |
         (uint32_t(__bfloat16_as_ushort(__float2bfloat16_rn(hi))) << 16);
}
template <>
__device__ __forceinline__ uint32_t pack2<__half>(float lo, float hi) {
  return uint32_t(__half_as_ushort(__float2half_rn(lo))) |
         (uint32_t(__half_as_ushort(__float2half_rn(hi))) << 16);
}

// ---- fragment arithmetic by storage type ----
// The tensor-core kernels below are written once over Frag, one of:
//   Mma16<T> (bf16, f16 storage): a Pair (two elements of one fragment position: the adjacent
//     indices 2t, 2t+1 of the layout above) is one 32-bit register; Frag::mma_prep (of an A
//     fragment made ready once by Frag::prep_a) is one m16n8k16.
//   MmaTf32<kTerms> (f32 storage): a Pair is two f32 values, and Frag::mma_prep computes the
//     same 16 x 8 x 16 product D += A B as two m16n8k8 TF32 products per term
//     (mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32). That instruction's layout gives lane
//     (g, t) the k indices t and t + 4: a0 = A[g][t], a1 = A[g+8][t], a2 = A[g][t+4],
//     a3 = A[g+8][t+4]; b0 = B[t][g], b1 = B[t+4][g]; C and D as m16n8k16. A sum over k does not
//     depend on how k is numbered, so the first product takes the physical indices 2t (as its
//     k = t) and 2t + 1 (as k = t + 4), the second 2t + 8 and 2t + 9: every lane feeds exactly
//     the elements it holds in the m16n8k16 layout, for A and B alike, and each of the 16
//     indices is used once.
//     kTerms = 3 (the default, "3xTF32"): each input x = big + small, big = tf32(x) (round to
//     nearest, 11 significant bits) and small = tf32(x - big) (x - big is exact in f32); A B is
//     computed as small_a big_b + big_a small_b + big_a big_b, dropping small_a small_b
//     (<= 2^-22 relative): each product within ~2^-21 relative, about f32's accuracy at
//     tensor-core speed. PyTorch's memory-efficient attention computes f32 the same way on
//     sm_80+ (CUTLASS's OpMultiplyAddFastF32).
//     kTerms = 1 (f32 under cuda_matmul_allow_tf32, FlashDesc::tf32): big_a big_b only, each
//     input rounded to 11 significant bits (2^-11 relative), as the TF32 GEMMs.
//   P, dS (and the double backward's gS, gdP) enter their second product as Pairs too: rounded
//   to the storage type by Mma16, kept in f32 (then split as above) by MmaTf32.
template <class T_>
struct Mma16 {
  using T = T_;
  using Elem = uint16_t;
  using Pair = uint32_t;
  __device__ static Pair zero() { return 0u; }
  __device__ static Pair pack(float lo, float hi) { return pack2<T>(lo, hi); }
  // p[0], p[1] (32-bit aligned)
  __device__ static Pair load_pair(const Elem* p) { return *reinterpret_cast<const uint32_t*>(p); }
  // *lo, *hi from two places
  __device__ static Pair load_split(const Elem* lo, const Elem* hi) {
    return uint32_t(*lo) | (uint32_t(*hi) << 16);
  }
  // x[i], x[i + 1] from global memory (i even, x 4-byte aligned)
  __device__ static Pair global_pair(const T* __restrict__ x, int64_t i) {
    return reinterpret_cast<const uint32_t*>(x)[i / 2];
  }
  // An A fragment in the form mma_prep consumes (here: as it is), for a fragment used against
  // several B fragments.
  struct APrep {
    Pair r[4];
  };
  __device__ static APrep prep_a(const Pair (&a)[4]) { return {{a[0], a[1], a[2], a[3]}}; }
  __device__ static void mma_prep(float (&d)[4], const APrep& a, Pair b0, Pair b1) {
    mma_16816<T>(d, a.r, b0, b1);
  }
};

struct F32Pair {
  float lo, hi;
};

// x rounded to TF32 (to nearest, ties away; an f32 bit pattern with the low 13 bits zero).
// volatile: the compiler must not hoist the conversions of row fragments out of the tile loops
// (that doubled their registers and spilled); conversions used more than once are made once
// explicitly (prep_a). inf and NaN pass through.
__device__ __forceinline__ uint32_t tf32_rna(float x) {
  uint32_t r;
  asm volatile("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
  return r;
}
// The same, except that a finite x that would round past the largest finite TF32 gives that
// value (satfinite) instead of inf, so that the 3xTF32 split of a finite f32 stays finite; an
// infinite x also gives that value, and the small part, x - big = inf, then carries the inf.
__device__ __forceinline__ uint32_t tf32_rna_big(float x) {
  uint32_t r;
  asm volatile("cvt.rna.satfinite.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
  return r;
}
__device__ __forceinline__ void mma_1688_tf32(float (&d)[4], const uint32_t (&a)[4],
                                              const uint32_t (&b)[2]) {
  asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, "
      "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

template <int kTerms>
struct MmaTf32 {
  static_assert(kTerms == 1 || kTerms == 3);
  using T = float;
  using Elem = float;
  using Pair = F32Pair;
  __device__ static Pair zero() { return {0.f, 0.f}; }
  __device__ static Pair pack(float lo, float hi) { return {lo, hi}; }
  __device__ static Pair load_pair(const Elem* p) {  // 8-byte aligned
    const float2 v = *reinterpret_cast<const float2*>(p);
    return {v.x, v.y};
  }
  __device__ static Pair load_split(const Elem* lo, const Elem* hi) { return {*lo, *hi}; }
  __device__ static Pair global_pair(const T* __restrict__ x, int64_t i) {  // i even
    const float2 v = *reinterpret_cast<const float2*>(x + i);
    return {v.x, v.y};
  }
  // The same, as a load the compiler keeps where it is written (MmaRows<..., false>).
  __device__ static Pair global_pair_in_place(const T* __restrict__ x, int64_t i) {
    float lo, hi;
    asm volatile("ld.global.nc.v2.f32 {%0, %1}, [%2];\n" : "=f"(lo), "=f"(hi) : "l"(x + i));
    return {lo, hi};
  }
  // A fragment, split: for k-half h (physical k indices 2t, 2t + 1, plus 8 h), the m16n8k8
  // registers {A[g][2t], A[g+8][2t], A[g][2t+1], A[g+8][2t+1]} (the instruction's a0..a3 at
  // k = t, t + 4), as TF32 big parts and (3xTF32) small parts.
  struct APrep {
    uint32_t big[2][4];
    uint32_t small[2][4];  // kTerms == 3 only
  };
  __device__ static APrep prep_a(const Pair (&a)[4]) {
    APrep p;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const float x[4] = {a[2 * h].lo, a[2 * h + 1].lo, a[2 * h].hi, a[2 * h + 1].hi};
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        p.big[h][i] = kTerms == 3 ? tf32_rna_big(x[i]) : tf32_rna(x[i]);
        if constexpr (kTerms == 3) p.small[h][i] = tf32_rna(x[i] - __uint_as_float(p.big[h][i]));
      }
    }
    return p;
  }
  // D += A B for a prepared A and B's pairs b0 (k = 2t, 2t + 1) and b1 (+ 8).
  __device__ static void mma_prep(float (&d)[4], const APrep& a, Pair b0, Pair b1) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const Pair b = h == 0 ? b0 : b1;
      const uint32_t bb[2] = {kTerms == 3 ? tf32_rna_big(b.lo) : tf32_rna(b.lo),
                              kTerms == 3 ? tf32_rna_big(b.hi) : tf32_rna(b.hi)};
      if constexpr (kTerms == 3) {
        const uint32_t bs[2] = {tf32_rna(b.lo - __uint_as_float(bb[0])),
                                tf32_rna(b.hi - __uint_as_float(bb[1]))};
        mma_1688_tf32(d, a.small[h], bb);
        mma_1688_tf32(d, a.big[h], bs);
      }
      mma_1688_tf32(d, a.big[h], bb);
    }
  }
};

// Entries [t0, t0 + n) of head h of x (N, H, kD) -> dst (kMmaTile rows of kStride raw
// elements), zeros past n; 16-byte loads (the launcher checks the alignment).
template <class Frag, int kD>
__device__ __forceinline__ void stage_tile_raw(const typename Frag::T* __restrict__ x, int64_t t0,
                                               int n, const Args& a, int h,
                                               typename Frag::Elem* dst) {
  using Elem = typename Frag::Elem;
  constexpr int kPer = 16 / int(sizeof(Elem));  // elements per 16-byte vector
  constexpr int kVecs = kD / kPer;
  for (int idx = threadIdx.x; idx < kMmaTile * kVecs; idx += kThreads) {
    const int j = idx / kVecs, c = (idx % kVecs) * kPer;
    uint4 val = make_uint4(0, 0, 0, 0);
    if (j < n) val = *reinterpret_cast<const uint4*>(x + ((t0 + j) * a.H + h) * kD + c);
    *reinterpret_cast<uint4*>(dst + j * MmaSmem<kD, Elem>::kStride + c) = val;
  }
}

// Rows g and g + 8 of the CTA's 16 (zero past its end) of head h of x (N, H, kD) as A
// fragments: xf[s] covers head-dim columns [16 s, 16 s + 16).
template <class Frag, int kD>
__device__ __forceinline__ void mma_load_rows(const typename Frag::T* __restrict__ x,
                                              const Span& sp, const Args& a, int h,
                                              typename Frag::Pair (&xf)[kD / 16][4]) {
  const int lane = threadIdx.x % kWarpSize, g = lane / 4, t = lane % 4;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int r = g + 8 * half;
    const int64_t base = ((sp.row0 + r) * a.H + h) * kD + 2 * t;
#pragma unroll
    for (int s = 0; s < kD / 16; ++s) {
      xf[s][half] = r < sp.nrows ? Frag::global_pair(x, base + 16 * s) : Frag::zero();
      xf[s][2 + half] = r < sp.nrows ? Frag::global_pair(x, base + 16 * s + 8) : Frag::zero();
    }
  }
}

// The CTA's rows of one head of x as the A operand of mma_scores, k-step by k-step (prep(st):
// head-dim columns [16 st, 16 st + 16), prepared by Frag::prep_a). kHeld: the fragments are
// loaded once (mma_load_rows) and held in registers for the whole kernel; otherwise they are
// read again from global memory at each use (the CTA's 16 rows: L1 hits after the first), as
// loads the compiler may not hoist out of the tile loop (kHoldRows below says which).
template <class Frag, int kD, bool kHeld>
struct MmaRows;

template <class Frag, int kD>
struct MmaRows<Frag, kD, true> {
  typename Frag::Pair f[kD / 16][4];
  __device__ MmaRows(const typename Frag::T* __restrict__ x, const Span& sp, const Args& a,
                     int h) {
    mma_load_rows<Frag, kD>(x, sp, a, h, f);
  }
  __device__ typename Frag::APrep prep(int st) const { return Frag::prep_a(f[st]); }
};

template <class Frag, int kD>
struct MmaRows<Frag, kD, false> {
  const typename Frag::T* __restrict__ x;
  int64_t base[2];  // rows g and g + 8 at column 2t
  bool valid[2];
  __device__ MmaRows(const typename Frag::T* __restrict__ x_, const Span& sp, const Args& a,
                     int h)
      : x(x_) {
    const int lane = threadIdx.x % kWarpSize, g = lane / 4, t = lane % 4;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int r = g + 8 * half;
      base[half] = ((sp.row0 + r) * a.H + h) * kD + 2 * t;
      valid[half] = r < sp.nrows;
    }
  }
  __device__ typename Frag::APrep prep(int st) const {
    typename Frag::Pair p[4];
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      p[half] = valid[half] ? Frag::global_pair_in_place(x, base[half] + 16 * st) : Frag::zero();
      p[2 + half] =
          valid[half] ? Frag::global_pair_in_place(x, base[half] + 16 * st + 8) : Frag::zero();
    }
    return Frag::prep_a(p);
  }
};

// Whether the kernels hold their row fragments in registers (16-bit storage) or reload them at
// each use (f32, whose pairs take two registers: held, the double backward spilled 88-760 bytes
// per thread at dh 64 and the key-side backward 604 at dh 128 (ptxas, sm_90, 3xTF32); reloaded,
// at most 128 and 0, and at most 32 with TF32).
template <class Frag>
constexpr bool kHoldRows = !std::is_same_v<typename Frag::T, float>;

template <class T, class Frag, int kD, bool kSplit>
__global__ void __launch_bounds__(kThreads)
    flash_fwd_mma(Args a, float scale_log2, const T* __restrict__ q, const T* __restrict__ k,
                  const T* __restrict__ v, T* __restrict__ o, float* __restrict__ lse,
                  float* __restrict__ part) {
  static_assert(std::is_same_v<T, typename Frag::T>);
  using Elem = typename Frag::Elem;
  using Pair = typename Frag::Pair;
  using Sm = MmaSmem<kD, Elem>;
  constexpr int KS = kD / 16;  // k-steps of S = Q K^T over the head dim
  constexpr int ND = kD / 8;   // n-tiles of O
  constexpr int ST = Sm::kStride;
  constexpr float kLn2 = 0.6931471805599453f;
  const int h = blockIdx.y, lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int g = lane / 4, t = lane % 4;
  const Span sp = span_of(a);
  Elem* ks = smem_base<Elem>();
  Elem* vs = ks + kMmaTile * ST;

  // Q's A fragments (rows past the block's end are zero).
  const MmaRows<Frag, kD, kHoldRows<Frag>> qf(q, sp, a, h);
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f}, acc[ND][4];
#pragma unroll
  for (int nd = 0; nd < ND; ++nd)
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[nd][i] = 0.f;

  int64_t kb = 0, ke = sp.ntile;
  if constexpr (kSplit) split_range<kMmaTile>(sp, a.splits, kb, ke);
  const int j0 = warp * kMmaKeys;
  for (int64_t t0 = kb; t0 < ke; t0 += kMmaTile) {
    const int n = int(ke - t0 < kMmaTile ? ke - t0 : kMmaTile);
    __syncthreads();  // the previous tile is consumed
    stage_tile_raw<Frag, kD>(k, sp.tile0 + t0, n, a, h, ks);
    stage_tile_raw<Frag, kD>(v, sp.tile0 + t0, n, a, h, vs);
    __syncthreads();
    if (j0 >= n) continue;  // warp-uniform: this warp's keys are past the end of the tile
    float s[2][4];
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) s[nt][i] = 0.f;
#pragma unroll
    for (int st = 0; st < KS; ++st) {
      const typename Frag::APrep qa = qf.prep(st);
#pragma unroll
      for (int nt = 0; nt < 2; ++nt) {
        const Elem* kr = ks + (j0 + 8 * nt + g) * ST + 16 * st + 2 * t;
        Frag::mma_prep(s[nt], qa, Frag::load_pair(kr), Frag::load_pair(kr + 8));
      }
    }
    float tmax[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int key = j0 + 8 * nt + 2 * t + (i & 1);
        s[nt][i] = key < n ? s[nt][i] * scale_log2 : -INFINITY;
        tmax[i / 2] = fmaxf(tmax[i / 2], s[nt][i]);
      }
    float alpha[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {  // the quad (lanes 4g .. 4g+3) holds row g (and g + 8)
      tmax[r] = fmaxf(tmax[r], __shfl_xor_sync(0xffffffffu, tmax[r], 1));
      tmax[r] = fmaxf(tmax[r], __shfl_xor_sync(0xffffffffu, tmax[r], 2));
      const float mnew = fmaxf(m[r], tmax[r]);  // finite: key j0 < n is in the chunk
      alpha[r] = exp2f(m[r] - mnew);             // 0 on the warp's first keys (m = -inf)
      m[r] = mnew;
    }
    float psum[2] = {0.f, 0.f};
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        s[nt][i] = exp2f(s[nt][i] - m[i / 2]);  // masked keys: exp2(-inf) = 0
        psum[i / 2] += s[nt][i];
      }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      psum[r] += __shfl_xor_sync(0xffffffffu, psum[r], 1);
      psum[r] += __shfl_xor_sync(0xffffffffu, psum[r], 2);
      l[r] = l[r] * alpha[r] + psum[r];
    }
#pragma unroll
    for (int nd = 0; nd < ND; ++nd) {
      acc[nd][0] *= alpha[0];
      acc[nd][1] *= alpha[0];
      acc[nd][2] *= alpha[1];
      acc[nd][3] *= alpha[1];
    }
    const Pair pf[4] = {Frag::pack(s[0][0], s[0][1]), Frag::pack(s[0][2], s[0][3]),
                        Frag::pack(s[1][0], s[1][1]), Frag::pack(s[1][2], s[1][3])};
    const typename Frag::APrep pa = Frag::prep_a(pf);
#pragma unroll
    for (int nd = 0; nd < ND; ++nd) {
      const Elem* vc = vs + (j0 + 2 * t) * ST + 8 * nd + g;
      Frag::mma_prep(acc[nd], pa, Frag::load_split(vc, vc + ST),
                     Frag::load_split(vc + 8 * ST, vc + 9 * ST));
    }
  }

  // Merge the warps' states: M = max_w m_w, L = sum_w e^(m_w - M) l_w, O = sum_w e^(m_w - M)
  // acc_w (warps in order 0..3; a warp that saw no key has m = -inf and weighs 0).
  __syncthreads();  // the staged tiles are consumed: their memory becomes the merge buffer
  float* red = smem_base<float>();
  float* wm = red + kWarps * kRows * Sm::kRedStride;
  float* wl = wm + kWarps * kRows;
  if (t == 0) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      wm[warp * kRows + g + 8 * r] = m[r];
      wl[warp * kRows + g + 8 * r] = l[r];
    }
  }
  __syncthreads();
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = g + 8 * r;
    float M = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) M = fmaxf(M, wm[w * kRows + row]);
    const float f = m[r] == -INFINITY ? 0.f : exp2f(m[r] - M);
    float* dst = red + (warp * kRows + row) * Sm::kRedStride + 2 * t;
#pragma unroll
    for (int nd = 0; nd < ND; ++nd) {
      dst[8 * nd] = acc[nd][2 * r] * f;
      dst[8 * nd + 1] = acc[nd][2 * r + 1] * f;
    }
  }
  __syncthreads();
  const int64_t NH = a.total_rows * a.H, z = blockIdx.z;
  for (int idx = threadIdx.x; idx < kRows * kD; idx += kThreads) {
    const int row = idx / kD, c = idx % kD;
    if (row >= sp.nrows) continue;
    float M = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) M = fmaxf(M, wm[w * kRows + row]);
    float L = 0.f, sum = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      const float mw = wm[w * kRows + row];
      L += (mw == -INFINITY ? 0.f : exp2f(mw - M)) * wl[w * kRows + row];
      sum += red[(w * kRows + row) * Sm::kRedStride + c];
    }
    const int64_t rh = (sp.row0 + row) * a.H + h;
    if constexpr (kSplit) {
      part[z * NH * kD + rh * kD + c] = sum;
      if (c == 0) {
        part[int64_t(a.splits) * NH * kD + z * NH + rh] = M * kLn2;  // -inf for an empty split
        part[int64_t(a.splits) * NH * (kD + 1) + z * NH + rh] = L;
      }
    } else {
      o[rh * kD + c] = store_acc<T>(sum / L);
      if (c == 0) lse[rh] = (M + log2f(L)) * kLn2;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Tensor-core backward (FlashKernels::mma; 16-bit and f32 storage, dh in {32, 64, 128}): the same
// fragment layouts as flash_fwd_mma (see there). Helpers, per warp and 16-entry chunk j0 of a
// staged tile (raw rows of kStride elements):
//   mma_scores: s[nt][i] = <row g + 8 (i / 2) of X, tile entry j0 + 8 nt + 2t + (i % 2)>, X's A
//     fragments from an MmaRows (held in registers for 16-bit storage, reloaded for f32; B =
//     tile^T: two adjacent elements of a tile row).
//   mma_accumulate: acc[nd] += C (16 rows x 16 entries, packed A fragment cf, built from the
//     score registers exactly as P in the forward) times the tile (16 entries x kD; B: two 16-bit
//     loads from rows j0 + 2t, +1 (+8) at column 8 nd + g).
// Each warp takes entries [16 w, 16 w + 16) of every 64-entry tile; the warps' partial sums are
// added in order 0..3 at the end (deterministic). The products dS and P are rounded to 16-bit
// storage before the second product, as the forward's P (f32: kept, then split).
// ---------------------------------------------------------------------------------------------
template <class Frag, int kD, class Rows>
__device__ __forceinline__ void mma_scores(const Rows& rows, const typename Frag::Elem* tile,
                                           int j0, float (&s)[2][4]) {
  constexpr int ST = MmaSmem<kD, typename Frag::Elem>::kStride;
  const int lane = threadIdx.x % kWarpSize, g = lane / 4, t = lane % 4;
#pragma unroll
  for (int nt = 0; nt < 2; ++nt)
#pragma unroll
    for (int i = 0; i < 4; ++i) s[nt][i] = 0.f;
#pragma unroll
  for (int st = 0; st < kD / 16; ++st) {
    const typename Frag::APrep xa = rows.prep(st);
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
      const typename Frag::Elem* tr = tile + (j0 + 8 * nt + g) * ST + 16 * st + 2 * t;
      Frag::mma_prep(s[nt], xa, Frag::load_pair(tr), Frag::load_pair(tr + 8));
    }
  }
}

template <class Frag>
__device__ __forceinline__ void mma_pack(const float (&c)[2][4], typename Frag::Pair (&cf)[4]) {
  cf[0] = Frag::pack(c[0][0], c[0][1]);
  cf[1] = Frag::pack(c[0][2], c[0][3]);
  cf[2] = Frag::pack(c[1][0], c[1][1]);
  cf[3] = Frag::pack(c[1][2], c[1][3]);
}

// acc += C T: the coefficients c in score registers (c[nt][i]: row g + 8 (i / 2), entry j0 +
// 8 nt + 2t + (i % 2)), packed as an A fragment (mma_pack), times the staged tile's entries
// [j0, j0 + 16).
template <class Frag, int kD>
__device__ __forceinline__ void mma_accumulate(float (&acc)[kD / 8][4], const float (&c)[2][4],
                                               const typename Frag::Elem* tile, int j0) {
  constexpr int ST = MmaSmem<kD, typename Frag::Elem>::kStride;
  const int lane = threadIdx.x % kWarpSize, g = lane / 4, t = lane % 4;
  typename Frag::Pair cf[4];
  mma_pack<Frag>(c, cf);
  const typename Frag::APrep ca = Frag::prep_a(cf);
#pragma unroll
  for (int nd = 0; nd < kD / 8; ++nd) {
    const typename Frag::Elem* tc = tile + (j0 + 2 * t) * ST + 8 * nd + g;
    Frag::mma_prep(acc[nd], ca, Frag::load_split(tc, tc + ST),
                   Frag::load_split(tc + 8 * ST, tc + 9 * ST));
  }
}

// Sums the 4 warps' acc (in warp order) through shared memory `red` (kWarps x kRows x
// kRedStride floats) and calls out(row, column, sum) for the valid rows. Starts and ends with a
// barrier (red may alias the staged tiles).
template <int kD, class Out>
__device__ __forceinline__ void mma_merge(const float (&acc)[kD / 8][4], float* red,
                                          const Span& sp, Out&& out) {
  constexpr int RS = MmaSmem<kD>::kRedStride;
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize, g = lane / 4,
            t = lane % 4;
  __syncthreads();
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float* dst = red + (warp * kRows + g + 8 * r) * RS + 2 * t;
#pragma unroll
    for (int nd = 0; nd < kD / 8; ++nd) {
      dst[8 * nd] = acc[nd][2 * r];
      dst[8 * nd + 1] = acc[nd][2 * r + 1];
    }
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < kRows * kD; idx += kThreads) {
    const int row = idx / kD, c = idx % kD;
    if (row >= sp.nrows) continue;
    float sum = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) sum += red[(w * kRows + row) * RS + c];
    out(row, c, sum);
  }
  __syncthreads();
}

// Backward, query side (as flash_bwd_q): D = rowsum(dO o) (split 0 writes it), dq = scale sum_j
// dS_ij k_j; kSplit: the unscaled sum of split blockIdx.z to part (S, Nq, H, dh).
template <class T, class Frag, int kD, bool kSplit>
__global__ void __launch_bounds__(kThreads)
    flash_bwd_q_mma(Args a, float scale, float scale_log2, const T* __restrict__ q,
                    const T* __restrict__ k, const T* __restrict__ v, const T* __restrict__ o,
                    const T* __restrict__ dO, const float* __restrict__ lse,
                    T* __restrict__ dq, float* __restrict__ D_out, float* __restrict__ part) {
  static_assert(std::is_same_v<T, typename Frag::T>);
  using Elem = typename Frag::Elem;
  using Pair = typename Frag::Pair;
  constexpr int ST = MmaSmem<kD, Elem>::kStride;
  constexpr float kLog2e = 1.4426950408889634f;
  const int h = blockIdx.y, lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int g = lane / 4, t = lane % 4;
  const Span sp = span_of(a);
  Elem* ks = smem_base<Elem>();
  Elem* vs = ks + kMmaTile * ST;
  const MmaRows<Frag, kD, kHoldRows<Frag>> qf(q, sp, a, h), gf(dO, sp, a, h);
  float D[2], L2[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {  // the quad of row g + 8 r sums columns t, t + 4, ...
    const int row = g + 8 * r;
    float d = 0.f;
    if (row < sp.nrows) {
      const int64_t base = ((sp.row0 + row) * a.H + h) * kD;
      for (int c = t; c < kD; c += 4) d += load_acc(dO[base + c]) * load_acc(o[base + c]);
    }
    d += __shfl_xor_sync(0xffffffffu, d, 1);
    d += __shfl_xor_sync(0xffffffffu, d, 2);
    D[r] = d;
    L2[r] = row < sp.nrows ? lse[(sp.row0 + row) * a.H + h] * kLog2e : 0.f;
    if (row < sp.nrows && warp == 0 && t == 0 && blockIdx.z == 0)
      D_out[(sp.row0 + row) * a.H + h] = d;
  }
  float acc[kD / 8][4];
#pragma unroll
  for (int nd = 0; nd < kD / 8; ++nd)
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[nd][i] = 0.f;
  int64_t kb = 0, ke = sp.ntile;
  if constexpr (kSplit) split_range<kMmaTile>(sp, a.splits, kb, ke);
  const int j0 = warp * kMmaKeys;
  for (int64_t t0 = kb; t0 < ke; t0 += kMmaTile) {
    const int n = int(ke - t0 < kMmaTile ? ke - t0 : kMmaTile);
    __syncthreads();
    stage_tile_raw<Frag, kD>(k, sp.tile0 + t0, n, a, h, ks);
    stage_tile_raw<Frag, kD>(v, sp.tile0 + t0, n, a, h, vs);
    __syncthreads();
    if (j0 >= n) continue;  // warp-uniform
    float s[2][4], dp[2][4];
    mma_scores<Frag, kD>(qf, ks, j0, s);
    mma_scores<Frag, kD>(gf, vs, j0, dp);
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int key = j0 + 8 * nt + 2 * t + (i & 1);
        const float p = key < n ? exp2f(s[nt][i] * scale_log2 - L2[i / 2]) : 0.f;
        s[nt][i] = p * (dp[nt][i] - D[i / 2]);  // dS
      }
    mma_accumulate<Frag, kD>(acc, s, ks, j0);
  }
  const int64_t rows0 = (sp.row0 * a.H + h) * kD;
  const int64_t row_stride = int64_t(a.H) * kD;
  if constexpr (kSplit) {
    float* dst = part + int64_t(blockIdx.z) * a.total_rows * a.H * kD + rows0;
    mma_merge<kD>(acc, smem_base<float>(), sp,
                  [&](int row, int c, float sum) { dst[row * row_stride + c] = sum; });
  } else {
    T* dst = dq + rows0;
    mma_merge<kD>(acc, smem_base<float>(), sp, [&](int row, int c, float sum) {
      dst[row * row_stride + c] = store_acc<T>(scale * sum);
    });
  }
}

// Backward, key side (as flash_bwd_kv): rows = keys, tile = the sample's queries; dv = sum_i
// P_ij dO_i, dk = scale sum_i dS_ij q_i (lse and D per query staged with the tile).
template <class T, class Frag, int kD>
__global__ void __launch_bounds__(kThreads)
    flash_bwd_kv_mma(Args a, float scale, float scale_log2, const T* __restrict__ q,
                     const T* __restrict__ k, const T* __restrict__ v, const T* __restrict__ dO,
                     const float* __restrict__ lse, const float* __restrict__ Dq,
                     T* __restrict__ dk, T* __restrict__ dv) {
  static_assert(std::is_same_v<T, typename Frag::T>);
  using Elem = typename Frag::Elem;
  using Pair = typename Frag::Pair;
  constexpr int ST = MmaSmem<kD, Elem>::kStride;
  constexpr float kLog2e = 1.4426950408889634f;
  const int h = blockIdx.y, lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int t = lane % 4;
  const Span sp = span_of(a);
  Elem* qs = smem_base<Elem>();
  Elem* gs = qs + kMmaTile * ST;
  float* tl = reinterpret_cast<float*>(gs + kMmaTile * ST);  // lse (base 2) per tile query
  float* tD = tl + kMmaTile;                                 // D per tile query
  const MmaRows<Frag, kD, kHoldRows<Frag>> kf(k, sp, a, h), vf(v, sp, a, h);
  float acck[kD / 8][4], accv[kD / 8][4];
#pragma unroll
  for (int nd = 0; nd < kD / 8; ++nd)
#pragma unroll
    for (int i = 0; i < 4; ++i) acck[nd][i] = accv[nd][i] = 0.f;
  const int j0 = warp * kMmaKeys;
  for (int64_t t0 = 0; t0 < sp.ntile; t0 += kMmaTile) {
    const int n = int(sp.ntile - t0 < kMmaTile ? sp.ntile - t0 : kMmaTile);
    __syncthreads();
    stage_tile_raw<Frag, kD>(q, sp.tile0 + t0, n, a, h, qs);
    stage_tile_raw<Frag, kD>(dO, sp.tile0 + t0, n, a, h, gs);
    for (int j = threadIdx.x; j < kMmaTile; j += kThreads) {
      const int64_t rh = (sp.tile0 + t0 + j) * a.H + h;
      tl[j] = j < n ? lse[rh] * kLog2e : 0.f;
      tD[j] = j < n ? Dq[rh] : 0.f;
    }
    __syncthreads();
    if (j0 >= n) continue;  // warp-uniform
    float s[2][4], dp[2][4];
    // s[nt][i]: key g + 8 (i / 2), query j0 + 8 nt + 2t + i % 2.
    mma_scores<Frag, kD>(kf, qs, j0, s);
    mma_scores<Frag, kD>(vf, gs, j0, dp);
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int j = j0 + 8 * nt + 2 * t + (i & 1);
        const float p = j < n ? exp2f(s[nt][i] * scale_log2 - tl[j]) : 0.f;
        s[nt][i] = p;
        dp[nt][i] = p * (dp[nt][i] - tD[j]);  // dS (0 past the end: p = 0)
      }
    mma_accumulate<Frag, kD>(accv, s, gs, j0);
    mma_accumulate<Frag, kD>(acck, dp, qs, j0);
  }
  const int64_t rows0 = (sp.row0 * a.H + h) * kD;
  const int64_t row_stride = int64_t(a.H) * kD;
  mma_merge<kD>(acck, smem_base<float>(), sp, [&](int row, int c, float sum) {
    dk[rows0 + row * row_stride + c] = store_acc<T>(scale * sum);
  });
  mma_merge<kD>(accv, smem_base<float>(), sp, [&](int row, int c, float sum) {
    dv[rows0 + row * row_stride + c] = store_acc<T>(sum);
  });
}

// o and lse from the forward's split partials, each (row, head) merged over the splits in order
// s = 0, 1, ...: M = max_s m_s, l = sum_s e^(m_s - M) l_s, o = sum_s e^(m_s - M) acc_s / l,
// lse = M + log l. Split 0 of a row always holds a key (a sample with queries has keys), so M
// is finite and the e^(-inf) of empty splits is 0. One thread per output element.
template <class T>
__global__ void flash_fwd_combine(int64_t NH, int dh, int splits, const acc_t<T>* __restrict__ part,
                                  T* __restrict__ o, acc_t<T>* __restrict__ lse) {
  using A = acc_t<T>;
  const A* pm = part + int64_t(splits) * NH * dh;
  const A* pl = pm + int64_t(splits) * NH;
  const int64_t n = NH * dh;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < n;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t rh = e / dh;  // (row, head)
    A M = A(-INFINITY);
    for (int s = 0; s < splits; ++s) M = pm[s * NH + rh] > M ? pm[s * NH + rh] : M;
    A l = 0, acc = 0;
    for (int s = 0; s < splits; ++s) {
      const A w = m_exp(pm[s * NH + rh] - M);
      l += w * pl[s * NH + rh];
      acc += w * part[s * n + e];
    }
    o[e] = store_acc<T>(acc * (A(1) / l));
    if (e % dh == 0) lse[rh] = M + m_log(l);
  }
}

// out = factor * sum_s part[s] (in order s = 0, 1, ...) for the split partials (S, n) of a
// query-side output (dq, gq, gdO).
template <class T>
__global__ void flash_sum_splits(int64_t n, int splits, acc_t<T> factor,
                                 const acc_t<T>* __restrict__ part, T* __restrict__ out) {
  using A = acc_t<T>;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < n;
       e += int64_t(gridDim.x) * blockDim.x) {
    A acc = 0;
    for (int s = 0; s < splits; ++s) acc += part[s * n + e];
    out[e] = store_acc<T>(factor * acc);
  }
}

// ---------------------------------------------------------------------------------------------
// backward, query side: D = rowsum(dO o) (to the workspace), dq = scale sum_j dS_ij k_j.
// kSplit: the keys of split blockIdx.z only; every split computes D (split 0 writes it) and
// writes sum_j dS_ij k_j over its keys to `part` (S, Nq, H, dh); flash_sum_splits makes dq.
// ---------------------------------------------------------------------------------------------
template <class T, int kD, int kTile, bool kSplit>
__global__ void __launch_bounds__(kThreads)
    flash_bwd_q(Args a, acc_t<T> scale, const T* __restrict__ q, const T* __restrict__ k,
                const T* __restrict__ v, const T* __restrict__ o, const T* __restrict__ dO,
                const acc_t<T>* __restrict__ lse, T* __restrict__ dq,
                acc_t<T>* __restrict__ D_out, acc_t<T>* __restrict__ part) {
  using A = acc_t<T>;
  constexpr int TJ = kTile / 32;
  const int h = blockIdx.y, lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const Span sp = span_of(a);
  A* rq = smem_base<A>();
  A* rg = rq + kRows * kD;
  A* tk = rg + kRows * kD;
  A* tv = tk + kTile * (kD + 1);
  A* cf = tv + kTile * (kD + 1) + warp * kRowsPerWarp * kTile;
  stage_rows<T, A, kD>(q, sp.row0, sp.nrows, a, h, rq);
  stage_rows<T, A, kD>(dO, sp.row0, sp.nrows, a, h, rg);
  __syncthreads();
  A D[kRowsPerWarp], L[kRowsPerWarp];
  row_dots<T, A, kD>(rg, o, sp, a, h, D);
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int row = warp * kRowsPerWarp + r;
    L[r] = row < sp.nrows ? lse[(sp.row0 + row) * a.H + h] : A(0);
    if (row < sp.nrows && lane == 0 && blockIdx.z == 0) D_out[(sp.row0 + row) * a.H + h] = D[r];
  }
  const A* wq = rq + warp * kRowsPerWarp * kD;
  const A* wg = rg + warp * kRowsPerWarp * kD;
  A acc[kRowsPerWarp][kD / 32];
  zero<A, kD>(acc);
  int64_t kb = 0, ke = sp.ntile;
  if constexpr (kSplit) split_range<kTile>(sp, a.splits, kb, ke);
  for (int64_t t0 = kb; t0 < ke; t0 += kTile) {
    const int n = int(ke - t0 < kTile ? ke - t0 : kTile);
    __syncthreads();
    stage_tile<T, A, kD, kTile>(k, sp.tile0 + t0, n, a, h, tk);
    stage_tile<T, A, kD, kTile>(v, sp.tile0 + t0, n, a, h, tv);
    __syncthreads();
    A s[kRowsPerWarp][TJ], dp[kRowsPerWarp][TJ];
    dots<A, kD, kTile>(wq, tk, s);
    dots<A, kD, kTile>(wg, tv, dp);
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r)
#pragma unroll
      for (int t = 0; t < TJ; ++t) {
        const int j = lane + 32 * t;
        const A p = j < n ? m_exp(s[r][t] * scale - L[r]) : A(0);
        cf[r * kTile + j] = p * (dp[r][t] - D[r]);
      }
    __syncwarp();
    accumulate<A, kD, kTile>(cf, tk, acc);
  }
  if constexpr (kSplit)
    write_rows<A, A, kD>(acc, A(1), part + blockIdx.z * a.total_rows * a.H * a.dh, sp, a, h);
  else
    write_rows<T, A, kD>(acc, scale, dq, sp, a, h);
}

// ---------------------------------------------------------------------------------------------
// backward, key side: rows = keys, tile = queries. dv = sum_i P_ij dO_i, dk = scale sum_i dS_ij
// q_i (D from the query-side kernel).
// ---------------------------------------------------------------------------------------------
template <class T, int kD, int kTile>
__global__ void __launch_bounds__(kThreads)
    flash_bwd_kv(Args a, acc_t<T> scale, const T* __restrict__ q, const T* __restrict__ k,
                 const T* __restrict__ v, const T* __restrict__ dO,
                 const acc_t<T>* __restrict__ lse, const acc_t<T>* __restrict__ Dq,
                 T* __restrict__ dk, T* __restrict__ dv) {
  using A = acc_t<T>;
  constexpr int TJ = kTile / 32;
  const int h = blockIdx.y, lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const Span sp = span_of(a);
  A* rk = smem_base<A>();
  A* rv = rk + kRows * kD;
  A* tq = rv + kRows * kD;
  A* tg = tq + kTile * (kD + 1);
  A* tl = tg + kTile * (kD + 1);
  A* tD = tl + kTile;
  A* cf = tD + kTile + warp * 2 * kRowsPerWarp * kTile;
  A* cf_p = cf;
  A* cf_ds = cf + kRowsPerWarp * kTile;
  stage_rows<T, A, kD>(k, sp.row0, sp.nrows, a, h, rk);
  stage_rows<T, A, kD>(v, sp.row0, sp.nrows, a, h, rv);
  const A* wk = rk + warp * kRowsPerWarp * kD;
  const A* wv = rv + warp * kRowsPerWarp * kD;
  A acck[kRowsPerWarp][kD / 32], accv[kRowsPerWarp][kD / 32];
  zero<A, kD>(acck);
  zero<A, kD>(accv);
  for (int64_t t0 = 0; t0 < sp.ntile; t0 += kTile) {
    const int n = int(sp.ntile - t0 < kTile ? sp.ntile - t0 : kTile);
    __syncthreads();
    stage_tile<T, A, kD, kTile>(q, sp.tile0 + t0, n, a, h, tq);
    stage_tile<T, A, kD, kTile>(dO, sp.tile0 + t0, n, a, h, tg);
    stage_scalars<A, kTile>(lse, sp.tile0 + t0, n, a, h, tl, A(0));
    stage_scalars<A, kTile>(Dq, sp.tile0 + t0, n, a, h, tD, A(0));
    __syncthreads();
    A s[kRowsPerWarp][TJ], dp[kRowsPerWarp][TJ];
    dots<A, kD, kTile>(wk, tq, s);
    dots<A, kD, kTile>(wv, tg, dp);
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r)
#pragma unroll
      for (int t = 0; t < TJ; ++t) {
        const int j = lane + 32 * t;
        const A p = j < n ? m_exp(s[r][t] * scale - tl[j]) : A(0);
        cf_p[r * kTile + j] = p;
        cf_ds[r * kTile + j] = p * (dp[r][t] - tD[j]);
      }
    __syncwarp();
    accumulate<A, kD, kTile>(cf_p, tg, accv);
    accumulate<A, kD, kTile>(cf_ds, tq, acck);
  }
  write_rows<T, A, kD>(acck, scale, dk, sp, a, h);
  write_rows<T, A, kD>(accv, A(1), dv, sp, a, h);
}

// ---------------------------------------------------------------------------------------------
// double backward, query side. Pair quantities (flash_attention.md): P, dP = dO.v, W =
// scale (a.k + q.b), u = dO.c. Pass 1 over the keys: r = sum P W, t = sum P W dP, w = sum P u,
// then E = t - 2 r D + w. Pass 2: gq = scale sum (dS b + gS k), gdO = sum (gdP v + P c).
// kPass 0: both passes over all keys (one kernel). Split over keys (split blockIdx.z):
//   kPass 1: pass 1 over the split's keys; the three partial sums to part_stats (S, 3, Nq, H)
//            and (split 0) D to stats[0]; flash_dd_stats_combine makes r and E.
//   kPass 2: pass 2 over the split's keys with D, r, E read from stats; the unscaled partial
//            gq and gdO to part_q and part_o (S, Nq, H, dh) each; flash_sum_splits sums them.
// ---------------------------------------------------------------------------------------------
template <class A, int TJ>
struct PairDots {
  A s[kRowsPerWarp][TJ], dp[kRowsPerWarp][TJ], w[kRowsPerWarp][TJ], u[kRowsPerWarp][TJ];
};

template <class T, int kD, int kTile, int kPass>
__global__ void __launch_bounds__(kThreads)
    flash_dd_q(Args a, acc_t<T> scale, const T* __restrict__ q, const T* __restrict__ k,
               const T* __restrict__ v, const T* __restrict__ o, const T* __restrict__ dO,
               const acc_t<T>* __restrict__ lse, const T* __restrict__ ga,
               const T* __restrict__ gb, const T* __restrict__ gc, T* __restrict__ gq,
               T* __restrict__ gdO, acc_t<T>* __restrict__ stats /* (3, Nq, H): D, r, E */,
               int64_t Nq, acc_t<T>* __restrict__ part_stats, acc_t<T>* __restrict__ part_q,
               acc_t<T>* __restrict__ part_o) {
  using A = acc_t<T>;
  constexpr int TJ = kTile / 32;
  const int h = blockIdx.y, lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const Span sp = span_of(a);
  A* rq = smem_base<A>();
  A* rg = rq + kRows * kD;
  A* ra = rg + kRows * kD;
  A* tk = ra + kRows * kD;
  A* tv = tk + kTile * (kD + 1);
  A* tb = tv + kTile * (kD + 1);
  A* tc = tb + kTile * (kD + 1);
  A* cf = tc + kTile * (kD + 1) + warp * 4 * kRowsPerWarp * kTile;
  A* cf_ds = cf;
  A* cf_gs = cf + kRowsPerWarp * kTile;
  A* cf_gdp = cf + 2 * kRowsPerWarp * kTile;
  A* cf_p = cf + 3 * kRowsPerWarp * kTile;
  stage_rows<T, A, kD>(q, sp.row0, sp.nrows, a, h, rq);
  stage_rows<T, A, kD>(dO, sp.row0, sp.nrows, a, h, rg);
  stage_rows<T, A, kD>(ga, sp.row0, sp.nrows, a, h, ra);
  __syncthreads();
  A D[kRowsPerWarp], L[kRowsPerWarp], R[kRowsPerWarp], E[kRowsPerWarp];
  row_dots<T, A, kD>(rg, o, sp, a, h, D);
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int row = warp * kRowsPerWarp + r;
    L[r] = row < sp.nrows ? lse[(sp.row0 + row) * a.H + h] : A(0);
  }
  const A* wq = rq + warp * kRowsPerWarp * kD;
  const A* wg = rg + warp * kRowsPerWarp * kD;
  const A* wa = ra + warp * kRowsPerWarp * kD;
  // The four dot products of a pair, and P (0 past the end of the tile).
  auto pair = [&](PairDots<A, TJ>& d, A (&p)[kRowsPerWarp][TJ], int n) {
    A t2[kRowsPerWarp][TJ];
    dots<A, kD, kTile>(wq, tk, d.s);
    dots<A, kD, kTile>(wg, tv, d.dp);
    dots<A, kD, kTile>(wa, tk, d.w);
    dots<A, kD, kTile>(wq, tb, t2);
    dots<A, kD, kTile>(wg, tc, d.u);
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r)
#pragma unroll
      for (int t = 0; t < TJ; ++t) {
        d.w[r][t] = scale * (d.w[r][t] + t2[r][t]);
        p[r][t] = lane + 32 * t < n ? m_exp(d.s[r][t] * scale - L[r]) : A(0);
      }
  };
  auto stage = [&](int64_t t0, int n) {
    __syncthreads();
    stage_tile<T, A, kD, kTile>(k, sp.tile0 + t0, n, a, h, tk);
    stage_tile<T, A, kD, kTile>(v, sp.tile0 + t0, n, a, h, tv);
    stage_tile<T, A, kD, kTile>(gb, sp.tile0 + t0, n, a, h, tb);
    stage_tile<T, A, kD, kTile>(gc, sp.tile0 + t0, n, a, h, tc);
    __syncthreads();
  };
  int64_t kb = 0, ke = sp.ntile;
  if constexpr (kPass != 0) split_range<kTile>(sp, a.splits, kb, ke);
  const int64_t NH = Nq * a.H;
  if constexpr (kPass != 2) {
  // Pass 1: row statistics.
  A sum_pw[kRowsPerWarp] = {}, sum_pwdp[kRowsPerWarp] = {}, sum_pu[kRowsPerWarp] = {};
  for (int64_t t0 = kb; t0 < ke; t0 += kTile) {
    const int n = int(ke - t0 < kTile ? ke - t0 : kTile);
    stage(t0, n);
    PairDots<A, TJ> d;
    A p[kRowsPerWarp][TJ];
    pair(d, p, n);
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r)
#pragma unroll
      for (int t = 0; t < TJ; ++t) {
        const A pw = p[r][t] * d.w[r][t];
        sum_pw[r] += pw;
        sum_pwdp[r] += pw * d.dp[r][t];
        sum_pu[r] += p[r][t] * d.u[r][t];
      }
  }
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const A t_sum = warp_allsum(sum_pwdp[r]), w_sum = warp_allsum(sum_pu[r]);
    R[r] = warp_allsum(sum_pw[r]);
    E[r] = t_sum - A(2) * R[r] * D[r] + w_sum;
    const int row = warp * kRowsPerWarp + r;
    if (row < sp.nrows && lane == 0) {
      const int64_t at = (sp.row0 + row) * a.H + h;
      if constexpr (kPass == 0) {
        stats[at] = D[r];
        stats[NH + at] = R[r];
        stats[2 * NH + at] = E[r];
      } else {
        const int64_t z = blockIdx.z;
        if (z == 0) stats[at] = D[r];
        part_stats[(3 * z) * NH + at] = R[r];
        part_stats[(3 * z + 1) * NH + at] = t_sum;
        part_stats[(3 * z + 2) * NH + at] = w_sum;
      }
    }
  }
  }  // pass 1
  if constexpr (kPass != 1) {
  if constexpr (kPass == 2) {
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const int row = warp * kRowsPerWarp + r;
      const int64_t at = (sp.row0 + row) * a.H + h;
      R[r] = row < sp.nrows ? stats[NH + at] : A(0);
      E[r] = row < sp.nrows ? stats[2 * NH + at] : A(0);
    }
  }
  // Pass 2: the query-side outputs.
  A accq[kRowsPerWarp][kD / 32], acco[kRowsPerWarp][kD / 32];
  zero<A, kD>(accq);
  zero<A, kD>(acco);
  for (int64_t t0 = kb; t0 < ke; t0 += kTile) {
    const int n = int(ke - t0 < kTile ? ke - t0 : kTile);
    stage(t0, n);
    PairDots<A, TJ> d;
    A p[kRowsPerWarp][TJ];
    pair(d, p, n);
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r)
#pragma unroll
      for (int t = 0; t < TJ; ++t) {
        const int j = lane + 32 * t;
        const A pj = p[r][t], dpD = d.dp[r][t] - D[r];
        const A gP = d.w[r][t] * dpD - R[r] * d.dp[r][t] + d.u[r][t];
        cf_ds[r * kTile + j] = pj * dpD;
        cf_gs[r * kTile + j] = pj * (gP - E[r]);
        cf_gdp[r * kTile + j] = pj * (d.w[r][t] - R[r]);
        cf_p[r * kTile + j] = pj;
      }
    __syncwarp();
    accumulate<A, kD, kTile>(cf_ds, tb, accq);
    accumulate<A, kD, kTile>(cf_gs, tk, accq);
    accumulate<A, kD, kTile>(cf_gdp, tv, acco);
    accumulate<A, kD, kTile>(cf_p, tc, acco);
  }
  if constexpr (kPass == 0) {
    write_rows<T, A, kD>(accq, scale, gq, sp, a, h);
    write_rows<T, A, kD>(acco, A(1), gdO, sp, a, h);
  } else {
    write_rows<A, A, kD>(accq, A(1), part_q + blockIdx.z * NH * a.dh, sp, a, h);
    write_rows<A, A, kD>(acco, A(1), part_o + blockIdx.z * NH * a.dh, sp, a, h);
  }
  }  // pass 2
}

// r and E of every (query, head) from the split partial sums of pass 1 (in order s = 0, 1, ...)
// and D (written to stats[0] by split 0): r = sum_s r_s, E = sum_s t_s - 2 r D + sum_s w_s.
template <class A>
__global__ void flash_dd_stats_combine(int64_t NH, int splits, const A* __restrict__ part_stats,
                                       A* __restrict__ stats) {
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < NH;
       e += int64_t(gridDim.x) * blockDim.x) {
    A r = 0, t = 0, w = 0;
    for (int s = 0; s < splits; ++s) {
      r += part_stats[(3 * int64_t(s)) * NH + e];
      t += part_stats[(3 * int64_t(s) + 1) * NH + e];
      w += part_stats[(3 * int64_t(s) + 2) * NH + e];
    }
    stats[NH + e] = r;
    stats[2 * NH + e] = t - A(2) * r * stats[e] + w;
  }
}

// ---------------------------------------------------------------------------------------------
// double backward, key side: rows = keys (k, v, b, c), tile = queries (q, dO, a and the row
// statistics lse, D, r, E). gk = scale sum_i (dS_ij a_i + gS_ij q_i), gv = sum_i gdP_ij dO_i.
// ---------------------------------------------------------------------------------------------
template <class T, int kD, int kTile>
__global__ void __launch_bounds__(kThreads)
    flash_dd_kv(Args a, acc_t<T> scale, const T* __restrict__ q, const T* __restrict__ k,
                const T* __restrict__ v, const T* __restrict__ dO,
                const acc_t<T>* __restrict__ lse, const T* __restrict__ ga,
                const T* __restrict__ gb, const T* __restrict__ gc, T* __restrict__ gk,
                T* __restrict__ gv, const acc_t<T>* __restrict__ stats, int64_t Nq) {
  using A = acc_t<T>;
  constexpr int TJ = kTile / 32;
  const int h = blockIdx.y, lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const Span sp = span_of(a);
  A* rk = smem_base<A>();
  A* rv = rk + kRows * kD;
  A* rb = rv + kRows * kD;
  A* rc = rb + kRows * kD;
  A* tq = rc + kRows * kD;
  A* tg = tq + kTile * (kD + 1);
  A* ta = tg + kTile * (kD + 1);
  A* tl = ta + kTile * (kD + 1);
  A* tD = tl + kTile;
  A* tR = tD + kTile;
  A* tE = tR + kTile;
  A* cf = tE + kTile + warp * 3 * kRowsPerWarp * kTile;
  A* cf_ds = cf;
  A* cf_gs = cf + kRowsPerWarp * kTile;
  A* cf_gdp = cf + 2 * kRowsPerWarp * kTile;
  stage_rows<T, A, kD>(k, sp.row0, sp.nrows, a, h, rk);
  stage_rows<T, A, kD>(v, sp.row0, sp.nrows, a, h, rv);
  stage_rows<T, A, kD>(gb, sp.row0, sp.nrows, a, h, rb);
  stage_rows<T, A, kD>(gc, sp.row0, sp.nrows, a, h, rc);
  const A* wk = rk + warp * kRowsPerWarp * kD;
  const A* wv = rv + warp * kRowsPerWarp * kD;
  const A* wb = rb + warp * kRowsPerWarp * kD;
  const A* wc = rc + warp * kRowsPerWarp * kD;
  A acck[kRowsPerWarp][kD / 32], accv[kRowsPerWarp][kD / 32];
  zero<A, kD>(acck);
  zero<A, kD>(accv);
  for (int64_t t0 = 0; t0 < sp.ntile; t0 += kTile) {
    const int n = int(sp.ntile - t0 < kTile ? sp.ntile - t0 : kTile);
    __syncthreads();
    stage_tile<T, A, kD, kTile>(q, sp.tile0 + t0, n, a, h, tq);
    stage_tile<T, A, kD, kTile>(dO, sp.tile0 + t0, n, a, h, tg);
    stage_tile<T, A, kD, kTile>(ga, sp.tile0 + t0, n, a, h, ta);
    stage_scalars<A, kTile>(lse, sp.tile0 + t0, n, a, h, tl, A(0));
    stage_scalars<A, kTile>(stats, sp.tile0 + t0, n, a, h, tD, A(0));
    stage_scalars<A, kTile>(stats + Nq * a.H, sp.tile0 + t0, n, a, h, tR, A(0));
    stage_scalars<A, kTile>(stats + 2 * Nq * a.H, sp.tile0 + t0, n, a, h, tE, A(0));
    __syncthreads();
    A s[kRowsPerWarp][TJ], dp[kRowsPerWarp][TJ], w[kRowsPerWarp][TJ], w2[kRowsPerWarp][TJ],
        u[kRowsPerWarp][TJ];
    dots<A, kD, kTile>(wk, tq, s);    // k.q
    dots<A, kD, kTile>(wv, tg, dp);   // v.dO
    dots<A, kD, kTile>(wk, ta, w);    // k.a
    dots<A, kD, kTile>(wb, tq, w2);   // b.q
    dots<A, kD, kTile>(wc, tg, u);    // c.dO
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r)
#pragma unroll
      for (int t = 0; t < TJ; ++t) {
        const int j = lane + 32 * t;
        const A p = j < n ? m_exp(s[r][t] * scale - tl[j]) : A(0);
        const A W = scale * (w[r][t] + w2[r][t]), dpD = dp[r][t] - tD[j];
        const A gP = W * dpD - tR[j] * dp[r][t] + u[r][t];
        cf_ds[r * kTile + j] = p * dpD;
        cf_gs[r * kTile + j] = p * (gP - tE[j]);
        cf_gdp[r * kTile + j] = p * (W - tR[j]);
      }
    __syncwarp();
    accumulate<A, kD, kTile>(cf_ds, ta, acck);
    accumulate<A, kD, kTile>(cf_gs, tq, acck);
    accumulate<A, kD, kTile>(cf_gdp, tg, accv);
  }
  write_rows<T, A, kD>(acck, scale, gk, sp, a, h);
  write_rows<T, A, kD>(accv, A(1), gv, sp, a, h);
}

// ---------------------------------------------------------------------------------------------
// Tensor-core double backward (FlashKernels::mma; 16-bit storage with dh in {32, 64, 128}, f32
// with dh in {32, 64}: kMmaMaxHeadDim): the
// formulas of flash_dd_q / flash_dd_kv with the fragment layouts and helpers of the mma backward
// (mma_scores, mma_pack, mma_accumulate, mma_merge). Per warp and 16-entry chunk the five pair
// dot products (q.k, dO.v, a.k, q.b, dO.c; W = scale (a.k + q.b)) are five mma_scores products
// of row fragments (MmaRows) with staged tiles; the pair coefficients (dS, gS, gdP and
// P) are formed in f32 in the score registers and rounded to 16-bit storage only when packed
// as the A operand of their second product (as the backward's dS and P; f32 storage keeps them
// and splits them there); every sum and every
// row statistic (D, r, t = sum P W dP, w = sum P u, E) stays f32. Same grids, split ranges and
// workspace formats as the SIMT kernels, so flash_dd_stats_combine and flash_sum_splits are
// shared. The warps' partial sums (statistics and outputs) are added in warp order 0..3
// (deterministic, no atomics).
// ---------------------------------------------------------------------------------------------
template <int kD, int kTiles, int kScalars, class Elem = uint16_t>
struct DdMmaSmem {
  static constexpr size_t tile_bytes =
      size_t(kTiles) * kMmaTile * MmaSmem<kD, Elem>::kStride * sizeof(Elem) +
      size_t(kScalars) * kMmaTile * sizeof(float);
  static constexpr size_t body =
      tile_bytes > MmaSmem<kD>::red_bytes ? tile_bytes : MmaSmem<kD>::red_bytes;
  // Past the tiles / merge buffer: the warps' partial row statistics (kWarps x 3 x kRows).
  static constexpr size_t bytes = body + sizeof(float) * kWarps * 3 * kRows;
};

// The five pair products of a 16-entry chunk. X1 = rows against tile T1 etc.:
// s = x.t1, dp = y.t2, w = scale (z.t1 + x.t3), u = y.t4, where (x, y, z) = (q, dO, a) rows and
// (t1, t2, t3, t4) = (k, v, b, c) tiles on the query side; on the key side (k, v, b, c) rows
// against (q, dO, a) tiles: s = k.q, dp = v.dO, w = scale (k.a + b.q), u = c.dO.
template <class Frag, int kD, class Ra, class Rb, class Rc, class Rd, class Re>
__device__ __forceinline__ void dd_mma_pairs(
    const Ra& xa, const typename Frag::Elem* ta, const Rb& xb, const typename Frag::Elem* tb,
    const Rc& xc, const typename Frag::Elem* tc, const Rd& xd, const typename Frag::Elem* td,
    const Re& xe, const typename Frag::Elem* te, int j0, float scale, float (&s)[2][4],
    float (&dp)[2][4], float (&w)[2][4], float (&u)[2][4]) {
  float w2[2][4];
  mma_scores<Frag, kD>(xa, ta, j0, s);
  mma_scores<Frag, kD>(xb, tb, j0, dp);
  mma_scores<Frag, kD>(xc, tc, j0, w);
  mma_scores<Frag, kD>(xd, td, j0, w2);
  mma_scores<Frag, kD>(xe, te, j0, u);
#pragma unroll
  for (int nt = 0; nt < 2; ++nt)
#pragma unroll
    for (int i = 0; i < 4; ++i) w[nt][i] = scale * (w[nt][i] + w2[nt][i]);
}

// Double backward, query side (as flash_dd_q, same kPass meaning and outputs).
template <class T, class Frag, int kD, int kPass>
__global__ void __launch_bounds__(kThreads)
    flash_dd_q_mma(Args a, float scale, float scale_log2, const T* __restrict__ q,
                   const T* __restrict__ k, const T* __restrict__ v, const T* __restrict__ o,
                   const T* __restrict__ dO, const float* __restrict__ lse,
                   const T* __restrict__ ga, const T* __restrict__ gb, const T* __restrict__ gc,
                   T* __restrict__ gq, T* __restrict__ gdO, float* __restrict__ stats,
                   int64_t Nq, float* __restrict__ part_stats, float* __restrict__ part_q,
                   float* __restrict__ part_o) {
  static_assert(std::is_same_v<T, typename Frag::T>);
  using Elem = typename Frag::Elem;
  using Pair = typename Frag::Pair;
  using Sm = DdMmaSmem<kD, 4, 0, Elem>;
  constexpr int ST = MmaSmem<kD, Elem>::kStride;
  constexpr float kLog2e = 1.4426950408889634f;
  const int h = blockIdx.y, lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int g = lane / 4, t = lane % 4;
  const Span sp = span_of(a);
  Elem* ks = smem_base<Elem>();
  Elem* vs = ks + kMmaTile * ST;
  Elem* bs = vs + kMmaTile * ST;
  Elem* cs = bs + kMmaTile * ST;
  float* wst = reinterpret_cast<float*>(reinterpret_cast<unsigned char*>(ks) + Sm::body);
  const MmaRows<Frag, kD, kHoldRows<Frag>> qf(q, sp, a, h), gf(dO, sp, a, h),
      af(ga, sp, a, h);
  const int64_t NH = Nq * a.H;
  float D[2], L2[2], R[2] = {0.f, 0.f}, E[2] = {0.f, 0.f};
#pragma unroll
  for (int r = 0; r < 2; ++r) {  // the quad of row g + 8 r sums columns t, t + 4, ...
    const int row = g + 8 * r;
    float d = 0.f;
    if (row < sp.nrows) {
      const int64_t base = ((sp.row0 + row) * a.H + h) * kD;
      for (int c = t; c < kD; c += 4) d += load_acc(dO[base + c]) * load_acc(o[base + c]);
    }
    d += __shfl_xor_sync(0xffffffffu, d, 1);
    d += __shfl_xor_sync(0xffffffffu, d, 2);
    D[r] = d;
    L2[r] = row < sp.nrows ? lse[(sp.row0 + row) * a.H + h] * kLog2e : 0.f;
  }
  auto stage = [&](int64_t t0, int n) {
    __syncthreads();
    stage_tile_raw<Frag, kD>(k, sp.tile0 + t0, n, a, h, ks);
    stage_tile_raw<Frag, kD>(v, sp.tile0 + t0, n, a, h, vs);
    stage_tile_raw<Frag, kD>(gb, sp.tile0 + t0, n, a, h, bs);
    stage_tile_raw<Frag, kD>(gc, sp.tile0 + t0, n, a, h, cs);
    __syncthreads();
  };
  // P of the chunk (0 past the end of the tile), in place of the scores.
  auto probs = [&](float (&s)[2][4], int j0, int n) {
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int key = j0 + 8 * nt + 2 * t + (i & 1);
        s[nt][i] = key < n ? exp2f(s[nt][i] * scale_log2 - L2[i / 2]) : 0.f;
      }
  };
  int64_t kb = 0, ke = sp.ntile;
  if constexpr (kPass != 0) split_range<kMmaTile>(sp, a.splits, kb, ke);
  const int j0 = warp * kMmaKeys;
  if constexpr (kPass != 2) {
    // Pass 1: row statistics. Lane sums of its entries of rows g, g + 8, then the quad, then
    // the warps in order through wst.
    float spw[2] = {0.f, 0.f}, spwdp[2] = {0.f, 0.f}, spu[2] = {0.f, 0.f};
    for (int64_t t0 = kb; t0 < ke; t0 += kMmaTile) {
      const int n = int(ke - t0 < kMmaTile ? ke - t0 : kMmaTile);
      stage(t0, n);
      if (j0 >= n) continue;  // warp-uniform
      float s[2][4], dp[2][4], w[2][4], u[2][4];
      dd_mma_pairs<Frag, kD>(qf, ks, gf, vs, af, ks, qf, bs, gf, cs, j0, scale, s, dp, w, u);
      probs(s, j0, n);
#pragma unroll
      for (int nt = 0; nt < 2; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const float pw = s[nt][i] * w[nt][i];
          spw[i / 2] += pw;
          spwdp[i / 2] += pw * dp[nt][i];
          spu[i / 2] += s[nt][i] * u[nt][i];
        }
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
#pragma unroll
      for (int x = 1; x <= 2; x <<= 1) {
        spw[r] += __shfl_xor_sync(0xffffffffu, spw[r], x);
        spwdp[r] += __shfl_xor_sync(0xffffffffu, spwdp[r], x);
        spu[r] += __shfl_xor_sync(0xffffffffu, spu[r], x);
      }
      if (t == 0) {
        const int row = g + 8 * r;
        wst[(warp * 3 + 0) * kRows + row] = spw[r];
        wst[(warp * 3 + 1) * kRows + row] = spwdp[r];
        wst[(warp * 3 + 2) * kRows + row] = spu[r];
      }
    }
    __syncthreads();
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = g + 8 * r;
      float rs = 0.f, ts = 0.f, us = 0.f;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        rs += wst[(w * 3 + 0) * kRows + row];
        ts += wst[(w * 3 + 1) * kRows + row];
        us += wst[(w * 3 + 2) * kRows + row];
      }
      R[r] = rs;
      E[r] = ts - 2.f * rs * D[r] + us;
      if (row < sp.nrows && warp == 0 && t == 0) {
        const int64_t at = (sp.row0 + row) * a.H + h;
        if constexpr (kPass == 0) {
          stats[at] = D[r];
          stats[NH + at] = R[r];
          stats[2 * NH + at] = E[r];
        } else {
          const int64_t z = blockIdx.z;
          if (z == 0) stats[at] = D[r];
          part_stats[(3 * z) * NH + at] = rs;
          part_stats[(3 * z + 1) * NH + at] = ts;
          part_stats[(3 * z + 2) * NH + at] = us;
        }
      }
    }
  }  // pass 1
  if constexpr (kPass != 1) {
    if constexpr (kPass == 2) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int row = g + 8 * r;
        const int64_t at = (sp.row0 + row) * a.H + h;
        R[r] = row < sp.nrows ? stats[NH + at] : 0.f;
        E[r] = row < sp.nrows ? stats[2 * NH + at] : 0.f;
      }
    }
    // Pass 2: gq = scale sum (dS b + gS k), gdO = sum (gdP v + P c).
    float accq[kD / 8][4], acco[kD / 8][4];
#pragma unroll
    for (int nd = 0; nd < kD / 8; ++nd)
#pragma unroll
      for (int i = 0; i < 4; ++i) accq[nd][i] = acco[nd][i] = 0.f;
    for (int64_t t0 = kb; t0 < ke; t0 += kMmaTile) {
      const int n = int(ke - t0 < kMmaTile ? ke - t0 : kMmaTile);
      stage(t0, n);
      if (j0 >= n) continue;  // warp-uniform
      float s[2][4], dp[2][4], w[2][4], u[2][4];
      dd_mma_pairs<Frag, kD>(qf, ks, gf, vs, af, ks, qf, bs, gf, cs, j0, scale, s, dp, w, u);
      probs(s, j0, n);
      float cds[2][4], cgs[2][4], cgdp[2][4];
#pragma unroll
      for (int nt = 0; nt < 2; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const float p = s[nt][i], dpD = dp[nt][i] - D[i / 2];
          const float gP = w[nt][i] * dpD - R[i / 2] * dp[nt][i] + u[nt][i];
          cds[nt][i] = p * dpD;
          cgs[nt][i] = p * (gP - E[i / 2]);
          cgdp[nt][i] = p * (w[nt][i] - R[i / 2]);
        }
      mma_accumulate<Frag, kD>(accq, cds, bs, j0);
      mma_accumulate<Frag, kD>(accq, cgs, ks, j0);
      mma_accumulate<Frag, kD>(acco, cgdp, vs, j0);
      mma_accumulate<Frag, kD>(acco, s, cs, j0);
    }
    const int64_t rows0 = (sp.row0 * a.H + h) * kD;
    const int64_t row_stride = int64_t(a.H) * kD;
    if constexpr (kPass == 0) {
      mma_merge<kD>(accq, smem_base<float>(), sp, [&](int row, int c, float sum) {
        gq[rows0 + row * row_stride + c] = store_acc<T>(scale * sum);
      });
      mma_merge<kD>(acco, smem_base<float>(), sp, [&](int row, int c, float sum) {
        gdO[rows0 + row * row_stride + c] = store_acc<T>(sum);
      });
    } else {
      float* dq = part_q + int64_t(blockIdx.z) * NH * kD + rows0;
      float* dg = part_o + int64_t(blockIdx.z) * NH * kD + rows0;
      mma_merge<kD>(accq, smem_base<float>(), sp,
                    [&](int row, int c, float sum) { dq[row * row_stride + c] = sum; });
      mma_merge<kD>(acco, smem_base<float>(), sp,
                    [&](int row, int c, float sum) { dg[row * row_stride + c] = sum; });
    }
  }  // pass 2
}

// Double backward, key side (as flash_dd_kv): rows = keys (k, v, b, c fragments), tile =
// queries (q, dO, a staged; lse (base 2), D, r, E per tile query). gk = scale sum_i (dS_ij a_i +
// gS_ij q_i), gv = sum_i gdP_ij dO_i.
template <class T, class Frag, int kD>
__global__ void __launch_bounds__(kThreads)
    flash_dd_kv_mma(Args a, float scale, float scale_log2, const T* __restrict__ q,
                    const T* __restrict__ k, const T* __restrict__ v, const T* __restrict__ dO,
                    const float* __restrict__ lse, const T* __restrict__ ga,
                    const T* __restrict__ gb, const T* __restrict__ gc, T* __restrict__ gk,
                    T* __restrict__ gv, const float* __restrict__ stats, int64_t Nq) {
  static_assert(std::is_same_v<T, typename Frag::T>);
  using Elem = typename Frag::Elem;
  using Pair = typename Frag::Pair;
  constexpr int ST = MmaSmem<kD, Elem>::kStride;
  constexpr float kLog2e = 1.4426950408889634f;
  const int h = blockIdx.y, lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int t = lane % 4;
  const Span sp = span_of(a);
  Elem* qs = smem_base<Elem>();
  Elem* gs = qs + kMmaTile * ST;
  Elem* as = gs + kMmaTile * ST;
  float* tl = reinterpret_cast<float*>(as + kMmaTile * ST);
  float* tD = tl + kMmaTile;
  float* tR = tD + kMmaTile;
  float* tE = tR + kMmaTile;
  const MmaRows<Frag, kD, kHoldRows<Frag>> kf(k, sp, a, h), vf(v, sp, a, h),
      bf(gb, sp, a, h), cf(gc, sp, a, h);
  const int64_t NH = Nq * a.H;
  float acck[kD / 8][4], accv[kD / 8][4];
#pragma unroll
  for (int nd = 0; nd < kD / 8; ++nd)
#pragma unroll
    for (int i = 0; i < 4; ++i) acck[nd][i] = accv[nd][i] = 0.f;
  const int j0 = warp * kMmaKeys;
  for (int64_t t0 = 0; t0 < sp.ntile; t0 += kMmaTile) {
    const int n = int(sp.ntile - t0 < kMmaTile ? sp.ntile - t0 : kMmaTile);
    __syncthreads();
    stage_tile_raw<Frag, kD>(q, sp.tile0 + t0, n, a, h, qs);
    stage_tile_raw<Frag, kD>(dO, sp.tile0 + t0, n, a, h, gs);
    stage_tile_raw<Frag, kD>(ga, sp.tile0 + t0, n, a, h, as);
    for (int j = threadIdx.x; j < kMmaTile; j += kThreads) {
      const int64_t rh = (sp.tile0 + t0 + j) * a.H + h;
      tl[j] = j < n ? lse[rh] * kLog2e : 0.f;
      tD[j] = j < n ? stats[rh] : 0.f;
      tR[j] = j < n ? stats[NH + rh] : 0.f;
      tE[j] = j < n ? stats[2 * NH + rh] : 0.f;
    }
    __syncthreads();
    if (j0 >= n) continue;  // warp-uniform
    // s[nt][i]: key g + 8 (i / 2), query j0 + 8 nt + 2t + i % 2.
    float s[2][4], dp[2][4], w[2][4], u[2][4];
    dd_mma_pairs<Frag, kD>(kf, qs, vf, gs, kf, as, bf, qs, cf, gs, j0, scale, s, dp, w, u);
    float cds[2][4], cgs[2][4], cgdp[2][4];
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int j = j0 + 8 * nt + 2 * t + (i & 1);
        const float p = j < n ? exp2f(s[nt][i] * scale_log2 - tl[j]) : 0.f;
        const float dpD = dp[nt][i] - tD[j];
        const float gP = w[nt][i] * dpD - tR[j] * dp[nt][i] + u[nt][i];
        cds[nt][i] = p * dpD;
        cgs[nt][i] = p * (gP - tE[j]);
        cgdp[nt][i] = p * (w[nt][i] - tR[j]);
      }
    mma_accumulate<Frag, kD>(acck, cds, as, j0);
    mma_accumulate<Frag, kD>(acck, cgs, qs, j0);
    mma_accumulate<Frag, kD>(accv, cgdp, gs, j0);
  }
  const int64_t rows0 = (sp.row0 * a.H + h) * kD;
  const int64_t row_stride = int64_t(a.H) * kD;
  mma_merge<kD>(acck, smem_base<float>(), sp, [&](int row, int c, float sum) {
    gk[rows0 + row * row_stride + c] = store_acc<T>(scale * sum);
  });
  mma_merge<kD>(accv, smem_base<float>(), sp, [&](int row, int c, float sum) {
    gv[rows0 + row * row_stride + c] = store_acc<T>(sum);
  });
}

// ---------------------------------------------------------------------------------------------
// launchers
// ---------------------------------------------------------------------------------------------

// Launches kernel on a (blocks, heads, splits) grid with `bytes` of dynamic shared memory,
// opting in past the 48 KiB default (a host-side attribute of the function: no stream
// operation, nothing waits).
// A kernel needing more than the GPU's opt-in limit is refused with the sizes and the fix, not
// with the attribute call's bare error: the f64 kernels (test oracles) at head dim 128 need a
// Hopper GPU (227 KiB a block; sm_80 allows 163 KiB), and on sm_86/89 (99 KiB) those at head
// dim 64 too; f32, bf16 and f16 fit 99 KiB at every head dim.
template <class Kernel, class... Ts>
void launch(Kernel kernel, int64_t blocks, int64_t heads, int splits, size_t bytes,
            cudaStream_t stream, Ts... args) {
  if (blocks == 0 || heads == 0) return;
  if (bytes > 48 * 1024) {
    thread_local int cached_device = -1, cached_limit = 0;  // the attribute, once per device
    int device = 0;
    MT_CUDA_CHECK(cudaGetDevice(&device));
    if (device != cached_device) {
      MT_CUDA_CHECK(
          cudaDeviceGetAttribute(&cached_limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
      cached_device = device;
    }
    if (bytes > size_t(cached_limit))
      refuse(__FILE__, __LINE__,
             ("fused attention: this kernel needs " + std::to_string(bytes) +
              " bytes of shared memory per block and GPU " + std::to_string(device) +
              " allows " + std::to_string(cached_limit) +
              " (the f64 kernels need the most: up to 197632 bytes, a Hopper GPU's 232448 "
              "allow all of them); run this attention in f32, bf16 or f16, or on a Hopper GPU")
                 .c_str());
    MT_CUDA_CHECK(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
  }
  kernel<<<dim3(unsigned(blocks), unsigned(heads), unsigned(splits)), kThreads, bytes, stream>>>(
      args...);
  MT_CUDA_CHECK(cudaGetLastError());
}

// An elementwise combine kernel over n items (grid-stride).
template <class Kernel, class... Ts>
void launch_combine(Kernel kernel, int64_t n, cudaStream_t stream, Ts... args) {
  if (n == 0) return;
  const int64_t grid = std::min<int64_t>((n + kBlock - 1) / kBlock, 65535);
  kernel<<<unsigned(grid), kBlock, 0, stream>>>(args...);
  MT_CUDA_CHECK(cudaGetLastError());
}

// Tile sizes: 64 entries for head dims up to 64, 32 beyond and for the double backward (whose
// kernels stage four tile vectors).
template <int kD>
constexpr int kTileFor = kD <= 64 ? 64 : 32;

template <class Fn>
void dispatch_head_dim(int64_t dh, Fn&& fn) {
  if (dh <= 32) {
    fn.template operator()<32>();
  } else if (dh <= 64) {
    fn.template operator()<64>();
  } else {
    fn.template operator()<128>();  // dh <= kFlashMaxHeadDim, checked by the launcher in ops.cpp
  }
}

Args query_side(const FlashDesc& d) {
  Args a{d.cu_q, d.cu_k, d.q_blocks, int(d.heads), int(d.dh)};
  a.splits = int(d.kv_splits);
  a.total_rows = d.num_queries;
  return a;
}
Args key_side(const FlashDesc& d) {
  return Args{d.cu_k, d.cu_q, d.k_blocks, int(d.heads), int(d.dh)};
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// The double backward's workspace (flash_double_backward_workspace, in accumulation-type
// elements): the row statistics, then the split partials.
template <class A>
struct DdWorkspace {
  A* stats;       // (3, Nq, H): D, r, E
  A* part_stats;  // (S, 3, Nq, H) when split
  A* part_q;      // (S, Nq, H, dh) when split
  A* part_o;      // (S, Nq, H, dh) when split
  DdWorkspace(void* workspace, const FlashDesc& d) {
    const int64_t NH = d.num_queries * d.heads;
    stats = static_cast<A*>(workspace);
    part_stats = stats + 3 * NH;
    part_q = part_stats + 3 * d.kv_splits * NH;
    part_o = part_q + d.kv_splits * NH * d.dh;
  }
};

// The widest head dim the tensor-core kernels take, by storage and kernel: 128, except the f32
// double backward, whose accumulators and five score products per chunk with their TF32 splits
// do not fit in registers at 128 (ptxas, sm_90, 3xTF32: 1-2 KB of spills per thread even with
// the rows reloaded, against at most 276 bytes at 64); it runs the split kernels there.
template <class T, bool kDouble>
constexpr int kMmaMaxHeadDim = std::is_same_v<T, float> && kDouble ? 64 : 128;

// Whether the tensor-core kernels take a call: the mma setting, 16-bit or f32 storage, dh 32,
// 64 or 128 (up to kMmaMaxHeadDim), and every operand 16-byte aligned (the staged rows are
// copied in 16-byte vectors).
template <class T, bool kDouble = false>
bool mma_takes(const FlashDesc& d, std::initializer_list<const void*> operands) {
  if constexpr (!is_16bit<T> && !std::is_same_v<T, float>) {
    return false;  // f64: the split kernels
  } else {
    if (!d.mma || !(d.dh == 32 || d.dh == 64 || d.dh == 128)) return false;
    if (d.dh > kMmaMaxHeadDim<T, kDouble>) return false;
    for (const void* p : operands)
      if (!aligned16(p)) return false;
    return true;
  }
}

// fn.template operator()<Frag, kD>() with the fragment arithmetic of storage T (Mma16 for 16-bit;
// for f32, MmaTf32<1> under FlashDesc::tf32, else MmaTf32<3>) and the head dim, for a call
// mma_takes accepted.
template <class T, bool kDouble = false, class Fn>
void dispatch_mma(const FlashDesc& d, Fn&& fn) {
  auto by_dim = [&]<class Frag>() {
    if (d.dh == 32) {
      fn.template operator()<Frag, 32>();
    } else if (d.dh == 64) {
      fn.template operator()<Frag, 64>();
    } else if (d.dh == 128 && kMmaMaxHeadDim<T, kDouble> == 128) {
      if constexpr (kMmaMaxHeadDim<T, kDouble> == 128) fn.template operator()<Frag, 128>();
    } else {  // mma_takes admits none other
      fail(__FILE__, __LINE__, "dispatch_mma: a head dim that mma_takes refuses (internal error)",
           cudaErrorInvalidValue);
    }
  };
  if constexpr (is_16bit<T>) {
    by_dim.template operator()<Mma16<T>>();
  } else if constexpr (std::is_same_v<T, float>) {
    if (d.tf32) {
      by_dim.template operator()<MmaTf32<1>>();
    } else {
      by_dim.template operator()<MmaTf32<3>>();
    }
  }
}

// The tensor-core forward (flash_fwd_mma) when mma_takes the call; false (nothing launched)
// otherwise.
template <class T>
bool forward_mma(const FlashDesc& d, const void* q, const void* k, const void* v, void* o,
                 void* lse, void* workspace, cudaStream_t stream) {
  if (!mma_takes<T>(d, {q, k, v})) return false;
  const int S = int(d.kv_splits);
  auto* part = static_cast<float*>(workspace);
  const float scale_log2 = float(d.scale * 1.4426950408889634);
  dispatch_mma<T>(d, [&]<class Frag, int kD>() {
    auto kernel = S > 1 ? flash_fwd_mma<T, Frag, kD, true> : flash_fwd_mma<T, Frag, kD, false>;
    launch(kernel, d.num_q_blocks, d.heads, S, MmaSmem<kD, typename Frag::Elem>::bytes, stream,
           query_side(d), scale_log2, static_cast<const T*>(q), static_cast<const T*>(k),
           static_cast<const T*>(v), static_cast<T*>(o), static_cast<float*>(lse), part);
    if (S > 1)
      launch_combine(flash_fwd_combine<T>, d.num_queries * d.heads * d.dh, stream,
                     d.num_queries * d.heads, int(d.dh), S, static_cast<const float*>(part),
                     static_cast<T*>(o), static_cast<float*>(lse));
  });
  return true;
}

template <class T>
bool forward(const FlashDesc& d, const void* q, const void* k, const void* v, void* o, void* lse,
             void* workspace, cudaStream_t stream) {
  using A = acc_t<T>;
  if (forward_mma<T>(d, q, k, v, o, lse, workspace, stream)) return true;
  const int S = int(d.kv_splits);
  auto* part = static_cast<A*>(workspace);
  dispatch_head_dim(d.dh, [&]<int kD>() {
    constexpr int kTile = kTileFor<kD>;
    auto kernel = S > 1 ? flash_fwd<T, kD, kTile, true> : flash_fwd<T, kD, kTile, false>;
    launch(kernel, d.num_q_blocks, d.heads, S, Smem<A, kD, kTile>::bytes(1, 2, 0, 1), stream,
           query_side(d), A(d.scale), static_cast<const T*>(q), static_cast<const T*>(k),
           static_cast<const T*>(v), static_cast<T*>(o), static_cast<A*>(lse), part);
    if (S > 1)
      launch_combine(flash_fwd_combine<T>, d.num_queries * d.heads * d.dh, stream,
                     d.num_queries * d.heads, int(d.dh), S, static_cast<const A*>(part),
                     static_cast<T*>(o), static_cast<A*>(lse));
  });
  return false;
}

// The tensor-core backward (flash_bwd_q_mma, flash_bwd_kv_mma) when mma_takes the call (q, k, v
// and dO); false (nothing launched) otherwise.
template <class T>
bool backward_mma(const FlashDesc& d, const void* q, const void* k, const void* v, const void* o,
                  const void* dO, const void* lse, void* dq, void* dk, void* dv, void* workspace,
                  cudaStream_t stream) {
  if (!mma_takes<T>(d, {q, k, v, dO})) return false;
  const int S = int(d.kv_splits);
  const int64_t NH = d.num_queries * d.heads;
  auto* D = static_cast<float*>(workspace);
  float* part = D + NH;  // (S, Nq, H, dh) when split
  const float scale = float(d.scale), scale_log2 = float(d.scale * 1.4426950408889634);
  dispatch_mma<T>(d, [&]<class Frag, int kD>() {
    using Sm = MmaSmem<kD, typename Frag::Elem>;
    const size_t bytes_q = Sm::bytes;
    const size_t bytes_kv = Sm::bytes + 2 * kMmaTile * sizeof(float);
    auto query_kernel = [&](auto kernel, int splits) {
      launch(kernel, d.num_q_blocks, d.heads, splits, bytes_q, stream, query_side(d), scale,
             scale_log2, static_cast<const T*>(q), static_cast<const T*>(k),
             static_cast<const T*>(v), static_cast<const T*>(o), static_cast<const T*>(dO),
             static_cast<const float*>(lse), static_cast<T*>(dq), D, part);
    };
    if (S > 1) {
      query_kernel(flash_bwd_q_mma<T, Frag, kD, true>, S);
      launch_combine(flash_sum_splits<T>, NH * d.dh, stream, NH * d.dh, S, scale,
                     static_cast<const float*>(part), static_cast<T*>(dq));
    } else {
      query_kernel(flash_bwd_q_mma<T, Frag, kD, false>, 1);
    }
    launch(flash_bwd_kv_mma<T, Frag, kD>, d.num_k_blocks, d.heads, 1, bytes_kv, stream, key_side(d),
           scale, scale_log2, static_cast<const T*>(q), static_cast<const T*>(k),
           static_cast<const T*>(v), static_cast<const T*>(dO), static_cast<const float*>(lse),
           static_cast<const float*>(D), static_cast<T*>(dk), static_cast<T*>(dv));
  });
  return true;
}

template <class T>
bool backward(const FlashDesc& d, const void* q, const void* k, const void* v, const void* o,
              const void* dO, const void* lse, void* dq, void* dk, void* dv, void* workspace,
              cudaStream_t stream) {
  using A = acc_t<T>;
  if (backward_mma<T>(d, q, k, v, o, dO, lse, dq, dk, dv, workspace, stream)) return true;
  const int S = int(d.kv_splits);
  const int64_t NH = d.num_queries * d.heads;
  auto* D = static_cast<A*>(workspace);
  A* part = D + NH;  // (S, Nq, H, dh) when split
  dispatch_head_dim(d.dh, [&]<int kD>() {
    constexpr int kTile = kTileFor<kD>;
    const size_t bytes_q = Smem<A, kD, kTile>::bytes(2, 2, 0, 1);
    if (S > 1) {
      launch(flash_bwd_q<T, kD, kTile, true>, d.num_q_blocks, d.heads, S, bytes_q, stream,
             query_side(d), A(d.scale), static_cast<const T*>(q), static_cast<const T*>(k),
             static_cast<const T*>(v), static_cast<const T*>(o), static_cast<const T*>(dO),
             static_cast<const A*>(lse), static_cast<T*>(dq), D, part);
      launch_combine(flash_sum_splits<T>, NH * d.dh, stream, NH * d.dh, S, A(d.scale),
                     static_cast<const A*>(part), static_cast<T*>(dq));
    } else {
      launch(flash_bwd_q<T, kD, kTile, false>, d.num_q_blocks, d.heads, 1, bytes_q, stream,
             query_side(d), A(d.scale), static_cast<const T*>(q), static_cast<const T*>(k),
             static_cast<const T*>(v), static_cast<const T*>(o), static_cast<const T*>(dO),
             static_cast<const A*>(lse), static_cast<T*>(dq), D, part);
    }
    launch(flash_bwd_kv<T, kD, kTile>, d.num_k_blocks, d.heads, 1,
           Smem<A, kD, kTile>::bytes(2, 2, 2, 2), stream, key_side(d), A(d.scale),
           static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v),
           static_cast<const T*>(dO), static_cast<const A*>(lse), static_cast<const A*>(D),
           static_cast<T*>(dk), static_cast<T*>(dv));
  });
  return false;
}

// The tensor-core double backward (flash_dd_q_mma, flash_dd_kv_mma) when mma_takes the call (q,
// k, v, dO, a, b and c); false (nothing launched) otherwise. The workspace holds what the SIMT
// launcher's does (f32 for 16-bit and f32 storage), and the combines are the same kernels.
template <class T>
bool double_backward_mma(const FlashDesc& d, const void* q, const void* k, const void* v,
                         const void* o, const void* dO, const void* lse, const void* a,
                         const void* b, const void* c, void* gq, void* gk, void* gv, void* gdO,
                         void* workspace, cudaStream_t stream) {
  if (!mma_takes<T, true>(d, {q, k, v, dO, a, b, c})) return false;
  const int S = int(d.kv_splits);
  const int64_t Nq = d.num_queries, NH = Nq * d.heads;
  const DdWorkspace<float> ws(workspace, d);
  float *stats = ws.stats, *part_stats = ws.part_stats, *part_q = ws.part_q, *part_o = ws.part_o;
  const float scale = float(d.scale), scale_log2 = float(d.scale * 1.4426950408889634);
  dispatch_mma<T, true>(d, [&]<class Frag, int kD>() {
    using Elem = typename Frag::Elem;
    auto query_kernel = [&](auto kernel, int splits) {
      launch(kernel, d.num_q_blocks, d.heads, splits, DdMmaSmem<kD, 4, 0, Elem>::bytes, stream,
             query_side(d), scale, scale_log2, static_cast<const T*>(q),
             static_cast<const T*>(k), static_cast<const T*>(v), static_cast<const T*>(o),
             static_cast<const T*>(dO), static_cast<const float*>(lse),
             static_cast<const T*>(a), static_cast<const T*>(b), static_cast<const T*>(c),
             static_cast<T*>(gq), static_cast<T*>(gdO), stats, Nq, part_stats, part_q,
             part_o);
    };
    if (S > 1) {
      query_kernel(flash_dd_q_mma<T, Frag, kD, 1>, S);
      launch_combine(flash_dd_stats_combine<float>, NH, stream, NH, S,
                     static_cast<const float*>(part_stats), stats);
      query_kernel(flash_dd_q_mma<T, Frag, kD, 2>, S);
      launch_combine(flash_sum_splits<T>, NH * d.dh, stream, NH * d.dh, S, scale,
                     static_cast<const float*>(part_q), static_cast<T*>(gq));
      launch_combine(flash_sum_splits<T>, NH * d.dh, stream, NH * d.dh, S, 1.f,
                     static_cast<const float*>(part_o), static_cast<T*>(gdO));
    } else {
      query_kernel(flash_dd_q_mma<T, Frag, kD, 0>, 1);
    }
    launch(flash_dd_kv_mma<T, Frag, kD>, d.num_k_blocks, d.heads, 1,
           DdMmaSmem<kD, 3, 4, Elem>::bytes,
           stream, key_side(d), scale, scale_log2, static_cast<const T*>(q),
           static_cast<const T*>(k), static_cast<const T*>(v), static_cast<const T*>(dO),
           static_cast<const float*>(lse), static_cast<const T*>(a), static_cast<const T*>(b),
           static_cast<const T*>(c), static_cast<T*>(gk), static_cast<T*>(gv),
           static_cast<const float*>(stats), Nq);
  });
  return true;
}

template <class T>
bool double_backward(const FlashDesc& d, const void* q, const void* k,
                     const void* v, const void* o, const void* dO, const void* lse,
                     const void* a, const void* b, const void* c, void* gq, void* gk, void* gv,
                     void* gdO, void* workspace, cudaStream_t stream) {
  using A = acc_t<T>;
  if (double_backward_mma<T>(d, q, k, v, o, dO, lse, a, b, c, gq, gk, gv, gdO, workspace, stream))
    return true;
  const int S = int(d.kv_splits);
  const int64_t Nq = d.num_queries, NH = Nq * d.heads;
  const DdWorkspace<A> ws(workspace, d);
  A *stats = ws.stats, *part_stats = ws.part_stats, *part_q = ws.part_q, *part_o = ws.part_o;
  dispatch_head_dim(d.dh, [&]<int kD>() {
    constexpr int kTile = 32;
    const size_t bytes_q = Smem<A, kD, kTile>::bytes(3, 4, 0, 4);
    auto query_kernel = [&](auto kernel, int splits) {
      launch(kernel, d.num_q_blocks, d.heads, splits, bytes_q, stream, query_side(d),
             A(d.scale), static_cast<const T*>(q), static_cast<const T*>(k),
             static_cast<const T*>(v), static_cast<const T*>(o), static_cast<const T*>(dO),
             static_cast<const A*>(lse), static_cast<const T*>(a), static_cast<const T*>(b),
             static_cast<const T*>(c), static_cast<T*>(gq), static_cast<T*>(gdO), stats, Nq,
             part_stats, part_q, part_o);
    };
    if (S > 1) {
      query_kernel(flash_dd_q<T, kD, kTile, 1>, S);
      launch_combine(flash_dd_stats_combine<A>, NH, stream, NH, S,
                     static_cast<const A*>(part_stats), stats);
      query_kernel(flash_dd_q<T, kD, kTile, 2>, S);
      launch_combine(flash_sum_splits<T>, NH * d.dh, stream, NH * d.dh, S, A(d.scale),
                     static_cast<const A*>(part_q), static_cast<T*>(gq));
      launch_combine(flash_sum_splits<T>, NH * d.dh, stream, NH * d.dh, S, A(1),
                     static_cast<const A*>(part_o), static_cast<T*>(gdO));
    } else {
      query_kernel(flash_dd_q<T, kD, kTile, 0>, 1);
    }
    launch(flash_dd_kv<T, kD, kTile>, d.num_k_blocks, d.heads, 1,
           Smem<A, kD, kTile>::bytes(4, 3, 4, 3), stream, key_side(d), A(d.scale),
           static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v),
           static_cast<const T*>(dO), static_cast<const A*>(lse), static_cast<const T*>(a),
           static_cast<const T*>(b), static_cast<const T*>(c), static_cast<T*>(gk),
           static_cast<T*>(gv), static_cast<const A*>(stats), Nq);
  });
  return false;
}

}  // namespace

bool flash_forward(ScalarType t, const FlashDesc& d, const void* q, const void* k, const void* v,
                   void* o, void* lse, void* workspace, cudaStream_t stream) {
  bool mma = false;
  dispatch_float_storage(t, [&]<class T>() {
    mma = forward<T>(d, q, k, v, o, lse, workspace, stream);
  });
  return mma;
}

bool flash_backward(ScalarType t, const FlashDesc& d, const void* q, const void* k,
                    const void* v, const void* o, const void* dO, const void* lse, void* dq,
                    void* dk, void* dv, void* workspace, cudaStream_t stream) {
  bool mma = false;
  dispatch_float_storage(t, [&]<class T>() {
    mma = backward<T>(d, q, k, v, o, dO, lse, dq, dk, dv, workspace, stream);
  });
  return mma;
}

bool flash_double_backward(ScalarType t, const FlashDesc& d, const void* q,
                           const void* k, const void* v, const void* o, const void* dO,
                           const void* lse, const void* a, const void* b, const void* c,
                           void* gq, void* gk, void* gv, void* gdO, void* workspace,
                           cudaStream_t stream) {
  bool mma = false;
  dispatch_float_storage(t, [&]<class T>() {
    mma = double_backward<T>(d, q, k, v, o, dO, lse, a, b, c, gq, gk, gv, gdO, workspace,
                             stream);
  });
  return mma;
}

}  // namespace mt::gpu
