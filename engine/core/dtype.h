// Element types and the dispatch from a runtime dtype to a compile-time C++ type.
// f32/f64 compute on every backend; f16/bf16 are storage types for the CUDA and mixed-precision
// work (the CPU converts them but does not compute in them); i64 holds indices.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>

#include "engine/core/error.h"

namespace mt {

enum class DType : uint8_t { f32, f64, f16, bf16, i64 };

constexpr size_t itemsize(DType t) {
  switch (t) {
    case DType::f32: return 4;
    case DType::f64: return 8;
    case DType::f16: return 2;
    case DType::bf16: return 2;
    case DType::i64: return 8;
  }
  return 0;
}

constexpr const char* dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "f32";
    case DType::f64: return "f64";
    case DType::f16: return "f16";
    case DType::bf16: return "bf16";
    case DType::i64: return "i64";
  }
  return "?";
}

constexpr bool is_floating(DType t) { return t != DType::i64; }

// Floating point to i64 as every backend converts it (copies, casts, fill_): toward zero, as a
// C++ cast does where that is defined; NaN gives 0 and values beyond the i64 range saturate (the
// cast leaves these undefined). kernels/cuda/copy.cu's float_to_i64 is its device twin. f32
// values convert exactly to double first, so one function serves both.
inline int64_t to_i64(double v) {
  constexpr double kLimit = 9223372036854775808.0;  // 2^63
  if (std::isnan(v)) return 0;
  if (v >= kLimit) return std::numeric_limits<int64_t>::max();
  if (v < -kLimit) return std::numeric_limits<int64_t>::min();
  return static_cast<int64_t>(v);
}

template <class T> constexpr DType dtype_of();
template <> constexpr DType dtype_of<float>() { return DType::f32; }
template <> constexpr DType dtype_of<double>() { return DType::f64; }
template <> constexpr DType dtype_of<int64_t>() { return DType::i64; }

// Calls fn.template operator()<T>() with T = float or double; any other dtype is an error that
// names the op. Usage: dispatch_float(x.dtype(), "exp", [&]<class T>() { ... });
template <class Fn>
decltype(auto) dispatch_float(DType t, const char* op, Fn&& fn) {
  switch (t) {
    case DType::f32: return fn.template operator()<float>();
    case DType::f64: return fn.template operator()<double>();
    default:
      MT_FAIL("{}: dtype {} is not supported on this backend (f32 and f64 are); convert with .to()",
              op, dtype_name(t));
  }
}

}  // namespace mt
