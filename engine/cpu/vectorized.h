// Elementwise maps evaluated with Eigen's vectorised array functions (exp, log, erf, tanh, sin,
// cos, sqrt). libm's scalar erff / expf cost 15-60 ns per element here; Eigen's packet versions
// run at memory speed. They are used for f32 only: f64 keeps libm's correctly rounded functions
// (the precision the gradient checks and the CPU reference rely on), and the 16-bit types go
// through f32 arithmetic in the scalar map.
//
// Accuracy of Eigen 3.4's f32 packet functions, measured against libm in double over 4M normal
// samples (sd 3) plus 0, -0, +-inf, NaN, subnormals and overflow: exp 1.1 ulp, erf 6.3 ulp,
// tanh 4.8 ulp, log 0.9 ulp, sin and cos 1.4 ulp; special values as libm.
#pragma once

#include <Eigen/Core>
#include <unsupported/Eigen/SpecialFunctions>

#include <array>
#include <type_traits>
#include <utility>

#include "engine/cpu/loops.h"

namespace mt::cpu {

template <class T>
using ArrayMap = Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>>;
template <class T>
using ConstArrayMap = Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>;

// out = array_fn(ins...) where every input is a contiguous f32 tensor of out's shape: each
// thread evaluates its contiguous chunk as one Eigen expression (fused, no temporaries). Any
// other dtype or layout: out[i] = scalar_fn(ins[i]...) through map(), with broadcasting.
// array_fn takes and returns Eigen array expressions; scalar_fn takes and returns T.
template <class T, class ArrayFn, class ScalarFn, class... Ins>
void map_vectorized(Tensor& out, ArrayFn array_fn, ScalarFn scalar_fn, const Ins&... ins) {
  if constexpr (std::is_same_v<T, float>) {
    if (((ins.is_contiguous() && ins.shape() == out.shape()) && ...) && out.is_contiguous()) {
      T* o = out.data_ptr<T>();
      const std::array<const T*, sizeof...(Ins)> p{ins.template data_ptr<T>()...};
      // Transcendental work per element: worth a thread from 4096 elements.
      parallel_range(out.numel(), 8, [&](int64_t begin, int64_t end) {
        const Eigen::Index len = end - begin;
        [&]<size_t... K>(std::index_sequence<K...>) {
          ArrayMap<T>(o + begin, len) = array_fn(ConstArrayMap<T>(p[K] + begin, len)...);
        }(std::make_index_sequence<sizeof...(Ins)>{});
      });
      return;
    }
  }
  map<T, T>(out, scalar_fn, ins...);
}

}  // namespace mt::cpu
