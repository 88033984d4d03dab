// Element types and the dispatch from a runtime dtype to a compile-time C++ type.
// f32/f64 compute on every backend; f16/bf16 are storage types for the CUDA and mixed-precision
// work (the CPU converts them but does not compute in them); i64 holds indices.
#pragma once

#include <cstddef>
#include <cstdint>

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
