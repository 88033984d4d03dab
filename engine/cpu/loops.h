// CPU loop helpers shared by the op files: broadcasting elementwise maps and strided index walks.
// The output of a map is always a fresh contiguous tensor; inputs may be any strided views.
#pragma once

#include <omp.h>

#include <array>
#include <cstdint>
#include <utility>

#include "engine/core/tensor.h"

namespace mt::cpu {

// Strides of t as seen from a tensor of shape `out` it broadcasts to (0 on broadcast dims).
inline Shape broadcast_strides(const Tensor& t, const Shape& out) {
  Shape s = Shape::filled(out.size(), 0);
  int lead = out.size() - t.dim();
  for (int i = 0; i < t.dim(); ++i) s[lead + i] = t.shape()[i] == 1 ? 0 : t.strides()[i];
  return s;
}

// Elements below which a loop stays on one thread (thread start-up costs more than it saves).
inline constexpr int64_t kParallelGrain = int64_t(1) << 15;

// Calls body(begin, end) over [0, n) split into one contiguous chunk per OpenMP thread when n
// is at least `grain` elements' worth of work, else once. Chunks are fixed by n and the thread
// count, and each element is computed by exactly one thread, so results do not depend on timing.
template <class Body>
void parallel_range(int64_t n, int64_t work_per_item, Body&& body) {
  if (n <= 1 || n * work_per_item < kParallelGrain) {
    body(int64_t(0), n);
    return;
  }
#pragma omp parallel
  {
    const int64_t threads = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t begin = n * t / threads, end = n * (t + 1) / threads;
    if (begin < end) body(begin, end);
  }
}

// Walks every index of `shape` in row-major order, rows [row_begin, row_end) of the innermost
// dim; offsets[k] tracks the element offset of operand k under strides[k]. Calls
// body(row, offsets, len, inner_strides) once per innermost row, so the hot loop is a plain
// strided loop.
template <size_t N, class Body>
void for_rows(const Shape& shape, const std::array<Shape, N>& strides, int64_t row_begin,
              int64_t row_end, Body&& body) {
  const int rank = shape.size();
  const int64_t inner_len = shape[rank - 1];
  std::array<int64_t, N> inner{}, off{};
  for (size_t k = 0; k < N; ++k) inner[k] = strides[k][rank - 1];
  // Unravel row_begin into the index of the outer dims.
  std::array<int64_t, kMaxDims> idx{};
  for (int64_t r = row_begin, d = rank - 2; d >= 0; --d) {
    idx[size_t(d)] = r % shape[int(d)];
    r /= shape[int(d)];
    for (size_t k = 0; k < N; ++k) off[k] += idx[size_t(d)] * strides[k][int(d)];
  }
  for (int64_t r = row_begin; r < row_end; ++r) {
    body(r, off, inner_len, inner);
    for (int d = rank - 2; d >= 0; --d) {
      if (++idx[size_t(d)] < shape[d]) {
        for (size_t k = 0; k < N; ++k) off[k] += strides[k][d];
        break;
      }
      for (size_t k = 0; k < N; ++k) off[k] -= strides[k][d] * (shape[d] - 1);
      idx[size_t(d)] = 0;
    }
  }
}

// Simplifies an iteration space without changing the elements visited or their order: drops
// dims of size 1 and merges neighbouring dims that every operand steps through as one
// (strides[d] == strides[d+1] * shape[d+1]), so the innermost rows are as long as possible
// (a (n, 1) broadcast or a permuted view becomes one long strided row where it can).
template <size_t N>
void coalesce(Shape& shape, std::array<Shape, N>& strides) {
  Shape s;
  std::array<Shape, N> st;
  for (int d = 0; d < shape.size(); ++d) {
    if (shape[d] == 1) continue;
    if (s.size() > 0) {
      const int last = s.size() - 1;
      bool merge = true;
      for (size_t k = 0; k < N; ++k) merge &= st[k][last] == strides[k][d] * shape[d];
      if (merge) {
        s[last] *= shape[d];
        for (size_t k = 0; k < N; ++k) st[k][last] = strides[k][d];
        continue;
      }
    }
    s.push_back(shape[d]);
    for (size_t k = 0; k < N; ++k) st[k].push_back(strides[k][d]);
  }
  if (s.size() == 0 && shape.numel() == 1 && shape.size() > 0) {  // all ones: one element
    s.push_back(1);
    for (size_t k = 0; k < N; ++k) st[k].push_back(0);
  }
  shape = s;
  strides = st;
}

// for_rows over all rows (after coalescing), split across threads by parallel_range when large.
template <size_t N, class Body>
void parallel_rows(Shape shape, std::array<Shape, N> strides, Body&& body) {
  coalesce<N>(shape, strides);
  if (shape.size() == 0) {
    std::array<int64_t, N> zero{};
    body(int64_t(0), zero, int64_t(1), zero);
    return;
  }
  if (shape.numel() == 0) return;
  const int64_t len = shape[shape.size() - 1], rows = shape.numel() / len;
  parallel_range(rows, len, [&](int64_t begin, int64_t end) {
    for_rows<N>(shape, strides, begin, end, body);
  });
}

// Walks every index of `shape` in row-major order on one thread; offsets[k] tracks the element
// offset of operand k under strides[k]. Calls body(offsets, len, inner_strides) once per
// innermost row.
template <size_t N, class Body>
void for_each_row(Shape shape, std::array<Shape, N> strides, Body&& body) {
  coalesce<N>(shape, strides);
  int rank = shape.size();
  std::array<int64_t, N> off{};
  if (rank == 0) {
    std::array<int64_t, N> inner{};
    body(off, int64_t(1), inner);
    return;
  }
  if (shape.numel() == 0) return;
  int64_t inner_len = shape[rank - 1];
  std::array<int64_t, N> inner{};
  for (size_t k = 0; k < N; ++k) inner[k] = strides[k][rank - 1];
  int64_t rows = shape.numel() / inner_len;
  std::array<int64_t, kMaxDims> idx{};
  for (int64_t r = 0; r < rows; ++r) {
    body(off, inner_len, inner);
    for (int d = rank - 2; d >= 0; --d) {
      if (++idx[d] < shape[d]) {
        for (size_t k = 0; k < N; ++k) off[k] += strides[k][d];
        break;
      }
      for (size_t k = 0; k < N; ++k) off[k] -= strides[k][d] * (shape[d] - 1);
      idx[d] = 0;
    }
  }
}

// out[i] = f(in0[i], in1[i], ...) with broadcasting; out is contiguous with the broadcast shape.
// Fast path: every input is either laid out like out or a single element (scalar operands).
template <class Tout, class Tin, class F, class... Ins>
void map(Tensor& out, F f, const Ins&... ins) {
  constexpr size_t N = sizeof...(Ins);
  Tout* o = out.data_ptr<Tout>();
  const int64_t n = out.numel();
  std::array<const Tin*, N> p{ins.template data_ptr<Tin>()...};
  const bool flat =
      (((ins.is_contiguous() && ins.shape() == out.shape()) || ins.numel() == 1) && ...);
  if (flat) {
    const std::array<int64_t, N> step{int64_t(ins.numel() == 1 && n != 1 ? 0 : 1)...};
    parallel_range(n, 1, [&](int64_t begin, int64_t end) {
      [&]<size_t... K>(std::index_sequence<K...>) {
        if (((step[K] == 1) && ...)) {
          for (int64_t i = begin; i < end; ++i) o[i] = f(p[K][i]...);
        } else {
          for (int64_t i = begin; i < end; ++i) o[i] = f(p[K][i * step[K]]...);
        }
      }(std::make_index_sequence<N>{});
    });
    return;
  }
  // Output first, then the inputs' broadcast strides; coalescing treats them alike.
  std::array<Shape, N + 1> strides{out.strides(), broadcast_strides(ins, out.shape())...};
  parallel_rows<N + 1>(out.shape(), strides,
                       [&](int64_t, const std::array<int64_t, N + 1>& off, int64_t len,
                           const std::array<int64_t, N + 1>& step) {
                         Tout* orow = o + off[0];
                         const int64_t os = step[0];
                         [&]<size_t... K>(std::index_sequence<K...>) {
                           for (int64_t j = 0; j < len; ++j)
                             orow[j * os] = f(p[K][off[K + 1] + j * step[K + 1]]...);
                         }(std::make_index_sequence<N>{});
                       });
}

// dst[i] = src[i] over dst's shape, both strided, src broadcast to dst (with type conversion).
template <class Tdst, class Tsrc, class Convert>
void copy_into(const Tensor& src, Tensor& dst, Convert convert) {
  const Tsrc* s = src.data_ptr<Tsrc>();
  Tdst* d = dst.data_ptr<Tdst>();
  if (src.is_contiguous() && dst.is_contiguous() && src.shape() == dst.shape()) {
    parallel_range(dst.numel(), 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) d[i] = convert(s[i]);
    });
    return;
  }
  parallel_rows<2>(dst.shape(), {dst.strides(), broadcast_strides(src, dst.shape())},
                   [&](int64_t, const std::array<int64_t, 2>& off, int64_t len,
                       const std::array<int64_t, 2>& step) {
                     for (int64_t j = 0; j < len; ++j)
                       d[off[0] + j * step[0]] = convert(s[off[1] + j * step[1]]);
                   });
}

// Copies a strided tensor into a contiguous buffer of the same shape (possibly converting type).
template <class Tdst, class Tsrc>
void copy_strided(const Tensor& src, Tdst* dst) {
  const Tsrc* p = src.data_ptr<Tsrc>();
  if (src.is_contiguous()) {
    for (int64_t i = 0, n = src.numel(); i < n; ++i) dst[i] = static_cast<Tdst>(p[i]);
    return;
  }
  int64_t pos = 0;
  for_each_row<1>(src.shape(), {src.strides()},
                  [&](const std::array<int64_t, 1>& off, int64_t len,
                      const std::array<int64_t, 1>& step) {
                    for (int64_t j = 0; j < len; ++j)
                      dst[pos + j] = static_cast<Tdst>(p[off[0] + j * step[0]]);
                    pos += len;
                  });
}

}  // namespace mt::cpu
