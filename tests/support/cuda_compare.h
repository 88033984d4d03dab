// Helpers of the [cuda] test cases: the skip when no device is present, and comparisons of a
// device result with the CPU backend's (the reference).
#pragma once

#include <catch2/catch.hpp>

#include <string>

#include "engine/core/backend.h"
#include "engine/ops.h"
#include "support/gradcheck.h"

// Ends the enclosing test case, saying why, when no CUDA device is present. Catch2 2 has no
// SKIP(), so the case passes with this warning in the log instead of being reported skipped.
#define MT_SKIP_WITHOUT_CUDA()                                                               \
  do {                                                                                       \
    if (!::mt::cuda_is_available()) {                                                        \
      WARN("SKIP: no CUDA device: " << (::mt::built_with_cuda()                              \
                                            ? "built with CUDA but no GPU/driver is visible" \
                                            : "built without CUDA (METATAPE_CUDA=OFF)"));    \
      return;                                                                                \
    }                                                                                        \
  } while (0)

namespace mt::testing {

inline Device gpu0() { return cuda(0); }

// 16-bit storage: both sides compute in f32 and round once to 16 bits; the f32 results may sit
// on either side of a rounding boundary: one 16-bit ulp (2^-10 for f16, 2^-7 for bf16) relative
// to the value, twice for margin.
constexpr Tolerance kF16{1e-3, 2.0 / 1024};
constexpr Tolerance kBF16{1e-2, 2.0 / 128};

// Checks |got - ref| <= atol + rtol * |ref| for every element (both read on the host in f64; NaN
// matches NaN). Reports the worst element and its index.
void check_close(const Tensor& got, const Tensor& ref, Tolerance tol, const std::string& what);

// Checks got == ref bitwise-equivalently (as f64 values; NaN matches NaN).
void check_equal(const Tensor& got, const Tensor& ref, const std::string& what);

// A device buffer of shape `shape` grown by `pad` on every dim (or only on dim 0 when
// pad_all is false) and filled with kSentinel; window() is the view of shape `shape` inside it.
// A kernel writing the window must leave every sentinel untouched.
inline constexpr double kSentinel = -1024.0;  // exact in every float dtype, far from test values
struct Padded {
  Tensor buffer;  // (shape + padding), filled with kSentinel
  Tensor window;  // a strided view of `shape` inside buffer
};
Padded padded(const Shape& shape, DType dtype, Device device, bool pad_all);
// Checks the window holds `ref` (within tol) and everything around it is still kSentinel.
void check_padded(const Padded& p, const Tensor& ref, Tolerance tol, const std::string& what);

}  // namespace mt::testing
