// The CPU's GEMM on strided operands, used by matmul and by the fused CPU linear: OpenBLAS (the
// OpenMP build, see third_party/README.md: inside a parallel region it runs on the calling
// thread) for f32 and f64, except for the skinny products where Eigen's GEMM is faster, and Eigen
// for the 16-bit types. Measured at 2 threads on the POCO shapes (2-core AMD EPYC, AVX-512):
// OpenBLAS 158-200 GFLOP/s against Eigen's 125-165 on 4096 x 128 x 1024 and its transposes; with
// N <= 48 outputs or K <= 16 Eigen is up to 2.7x faster (4096 x 1024 x 16: 114 vs 68;
// 12288 x 16 x 128: 48 vs 18).
//
// Threads: a large product is cut into one block per thread (rows of C, or columns when C is
// wide, or K for a long reduction into a small C), each computed by a single-threaded GEMM call:
// the threads share no packed panels and never wait for each other inside the product. OpenBLAS's and Eigen's own threading do share
// them, and on the virtual machine the benchmarks run on that costs up to 1.7x whenever its
// two vCPUs sit far apart (for seconds to minutes at a time: OpenBLAS's 2-thread GEMM drops from
// ~200 to ~145 GFLOP/s on 512^3 while two independent single-threaded GEMMs keep ~104 each; the
// seven largest shapes of the E2E-TTT meta-step took 225 ms with OpenBLAS's threads and 135 ms
// split, and 140 vs 130 ms otherwise).
#pragma once

#include <cblas.h>

#include <Eigen/Core>
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "engine/core/error.h"

namespace mt::cpu {

// How a (rows x cols) operand with the given strides is handed to BLAS: as stored (row-major,
// leading dim = row stride), as the transpose of a row-major matrix (leading dim = column stride),
// or neither (then it is packed into `packed`, row-major).
template <class T>
inline CBLAS_TRANSPOSE blas_operand(const T*& p, int64_t rows, int64_t cols, int64_t row_stride,
                                    int64_t col_stride, std::vector<T>& packed, blasint& ld) {
  if (col_stride == 1 && row_stride >= std::max<int64_t>(cols, 1)) {
    ld = blasint(row_stride);
    return CblasNoTrans;
  }
  if (row_stride == 1 && col_stride >= std::max<int64_t>(rows, 1)) {
    ld = blasint(col_stride);
    return CblasTrans;
  }
  packed.resize(size_t(rows * cols));
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j)
      packed[size_t(i * cols + j)] = p[i * row_stride + j * col_stride];
  p = packed.data();
  ld = blasint(std::max<int64_t>(cols, 1));
  return CblasNoTrans;
}

// c (M x N, row stride ldc) = a (M x K) b (K x N) + beta c, K > 0; T is float or double. With
// beta = 0, c's prior contents are ignored (NaN included). Dimensions and strides are within the
// BLAS integer range (checked by gemm()).
template <class T>
void blas_gemm(const T* a, int64_t as0, int64_t as1, const T* b, int64_t bs0, int64_t bs1, T* c,
               int64_t ldc, int64_t M, int64_t N, int64_t K, T beta) {
  std::vector<T> packed_a, packed_b;
  blasint lda = 0, ldb = 0;
  const CBLAS_TRANSPOSE ta = blas_operand(a, M, K, as0, as1, packed_a, lda);
  const CBLAS_TRANSPOSE tb = blas_operand(b, K, N, bs0, bs1, packed_b, ldb);
  if constexpr (std::is_same_v<T, float>) {
    cblas_sgemm(CblasRowMajor, ta, tb, blasint(M), blasint(N), blasint(K), 1.0f, a, lda, b, ldb,
                beta, c, blasint(std::max<int64_t>(ldc, 1)));
  } else {
    cblas_dgemm(CblasRowMajor, ta, tb, blasint(M), blasint(N), blasint(K), 1.0, a, lda, b, ldb,
                beta, c, blasint(std::max<int64_t>(ldc, 1)));
  }
}

template <class T>
using RowMajor = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using ConstMap = Eigen::Map<const RowMajor<T>, Eigen::Unaligned, Eigen::OuterStride<>>;

// Calls fn with an Eigen expression for the (rows x cols) matrix at p with the given strides:
// a row-major map, the transpose of a row-major map, or (for other layouts) a packed copy.
template <class T, class Fn>
void with_matrix(const T* p, int64_t rows, int64_t cols, int64_t row_stride, int64_t col_stride,
                 Fn&& fn) {
  if (col_stride == 1 && row_stride >= std::max<int64_t>(cols, 1)) {
    fn(ConstMap<T>(p, rows, cols, Eigen::OuterStride<>(row_stride)));
  } else if (row_stride == 1 && col_stride >= std::max<int64_t>(rows, 1)) {
    fn(ConstMap<T>(p, cols, rows, Eigen::OuterStride<>(col_stride)).transpose());
  } else {
    RowMajor<T> packed(rows, cols);
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = 0; j < cols; ++j) packed(i, j) = p[i * row_stride + j * col_stride];
    fn(packed);
  }
}

// c (M x N, row stride ldc) = a (M x K) b (K x N), plus c's prior contents when accumulate;
// K > 0. One GEMM call: OpenBLAS or Eigen threads it only when called outside a parallel region.
template <class T>
void gemm_block(const T* a, int64_t as0, int64_t as1, const T* b, int64_t bs0, int64_t bs1, T* c,
                int64_t ldc, int64_t M, int64_t N, int64_t K, bool accumulate) {
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
    if (N > 48 && K > 16) {
      blas_gemm(a, as0, as1, b, bs0, bs1, c, ldc, M, N, K, accumulate ? T(1) : T(0));
      return;
    }
  }
  Eigen::Map<RowMajor<T>, Eigen::Unaligned, Eigen::OuterStride<>> C(c, M, N,
                                                                    Eigen::OuterStride<>(ldc));
  with_matrix(a, M, K, as0, as1, [&](const auto& A) {
    with_matrix(b, K, N, bs0, bs1, [&](const auto& B) {
      if (accumulate) {
        C.noalias() += A * B;
      } else {
        C.noalias() = A * B;
      }
    });
  });
}

// Products of at least this many multiply-adds are split across threads, in blocks of whole
// multiples of kGemmBlockAlign rows or columns (the register tiles of the GEMM kernels). 2^18 is
// where OpenBLAS starts threading a product itself (SMP_THRESHOLD_MIN x
// GEMM_MULTITHREAD_THRESHOLD = 65536 x 4): smaller ones run on one thread either way.
inline constexpr int64_t kGemmSplitMacs = int64_t(1) << 18;
inline constexpr int64_t kGemmBlockAlign = 16;
// f32/f64 products whose reduction is long and whose C is small (K >= kGemmKSplitRatio x
// max(M, N), M N <= kGemmKSplitMaxC: the weight gradients X^T dY, K = the batch's rows) are split
// over K instead: each thread multiplies its own rows of X and dY (the rows it wrote in the ops
// before, when those split by rows too) into its own C, and the per-thread Cs are summed in
// thread order. Measured at 2 threads (2-core AMD EPYC): 64 x 128 x 12288 at 155 against 121
// GFLOP/s split by rows, the other weight-gradient shapes of the meta-step equal.
inline constexpr int64_t kGemmKSplitRatio = 4;
inline constexpr int64_t kGemmKSplitMaxC = int64_t(1) << 18;

// c (M x N, contiguous) = a (M x K) b (K x N), plus c's prior contents when accumulate; K > 0.
// Outside a parallel region a large product runs as one block per thread (see the top of this
// file): blocks of C's rows or columns, each element of C written by one thread with the
// arithmetic of the unsplit call; or, for a long reduction into a small C (f32/f64), blocks of
// K whose partial products are added in thread order (the same result for the same thread count).
template <class T>
void gemm(const T* a, int64_t as0, int64_t as1, const T* b, int64_t bs0, int64_t bs1, T* c,
          int64_t M, int64_t N, int64_t K, bool accumulate) {
  constexpr bool kBlas = std::is_same_v<T, float> || std::is_same_v<T, double>;
  if constexpr (kBlas) {
    MT_CHECK(std::max({M, N, K, as0, as1, bs0, bs1}) <= std::numeric_limits<blasint>::max(),
             "matmul: a dimension or stride exceeds the BLAS integer range ({}); split the product",
             std::numeric_limits<blasint>::max());
  }
  const int64_t threads = omp_in_parallel() ? 1 : omp_get_max_threads();
  const bool over_k = kBlas && K >= kGemmKSplitRatio * std::max(M, N) && M * N <= kGemmKSplitMaxC;
  const int64_t extent = over_k ? K : std::max(M, N);
  const int64_t blocks = std::min(threads, extent / kGemmBlockAlign);
  if (blocks <= 1 || M * N * K < kGemmSplitMacs) {
    gemm_block(a, as0, as1, b, bs0, bs1, c, N, M, N, K, accumulate);
    return;
  }
  const int64_t units = (extent + kGemmBlockAlign - 1) / kGemmBlockAlign;
  auto range = [&](int64_t t, int64_t n) {
    return std::pair{std::min(extent, units * t / n * kGemmBlockAlign),
                     std::min(extent, units * (t + 1) / n * kGemmBlockAlign)};
  };
  if (over_k) {
    // Thread 0 writes c (onto its prior contents when accumulating), thread t > 0 its partial.
    std::vector<T> partials(size_t((blocks - 1) * M * N));
#pragma omp parallel num_threads(int(blocks))
    {
      const int64_t t = omp_get_thread_num(), n = omp_get_num_threads();
      const auto [begin, end] = range(t, n);
      T* out = t == 0 ? c : partials.data() + (t - 1) * M * N;
      if (begin < end) {
        gemm_block(a + begin * as1, as0, as1, b + begin * bs0, bs0, bs1, out, N, M, N,
                   end - begin, t == 0 && accumulate);
      } else if (t > 0) {
        std::fill(out, out + M * N, T(0));
      } else if (!accumulate) {
        std::fill(c, c + M * N, T(0));
      }
#pragma omp barrier
      // Rows of c split across the threads; each adds the partials in thread order.
      const int64_t r0 = M * t / n, r1 = M * (t + 1) / n;
      for (int64_t p = 1; p < n; ++p) {
        const T* part = partials.data() + (p - 1) * M * N;
        for (int64_t i = r0 * N; i < r1 * N; ++i) c[i] += part[i];
      }
    }
    return;
  }
  const bool by_rows = M >= N;
#pragma omp parallel num_threads(int(blocks))
  {
    const auto [begin, end] = range(omp_get_thread_num(), omp_get_num_threads());
    if (begin < end) {
      if (by_rows)  // rows [begin, end) of a and c
        gemm_block(a + begin * as0, as0, as1, b, bs0, bs1, c + begin * N, N, end - begin, N, K,
                   accumulate);
      else  // columns [begin, end) of b and c
        gemm_block(a, as0, as1, b + begin * bs1, bs0, bs1, c + begin, N, M, end - begin, K,
                   accumulate);
    }
  }
}

}  // namespace mt::cpu
