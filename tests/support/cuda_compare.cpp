#include "support/cuda_compare.h"

#include <cmath>
#include <vector>

namespace mt::testing {

void check_close(const Tensor& got, const Tensor& ref, Tolerance tol, const std::string& what) {
  INFO(what);
  REQUIRE(got.shape() == ref.shape());
  const std::vector<double> g = got.to_vector<double>(), r = ref.to_vector<double>();
  size_t worst = 0, bad = 0;
  double worst_excess = -1;
  for (size_t i = 0; i < g.size(); ++i) {
    if (std::isnan(g[i]) && std::isnan(r[i])) continue;
    if (g[i] == r[i]) continue;  // equal infinities too, whose difference is NaN
    const double err = std::abs(g[i] - r[i]), allowed = tol.atol + tol.rtol * std::abs(r[i]);
    if (!(err <= allowed)) {
      ++bad;
      if (err - allowed > worst_excess || std::isnan(err)) {
        worst_excess = err - allowed;
        worst = i;
      }
    }
  }
  INFO(bad << " of " << g.size() << " elements out of tolerance (atol " << tol.atol << ", rtol "
            << tol.rtol << "); worst at flat index " << worst << ": got "
            << (g.empty() ? 0.0 : g[worst]) << ", expected " << (r.empty() ? 0.0 : r[worst]));
  CHECK(bad == 0);
}

void check_equal(const Tensor& got, const Tensor& ref, const std::string& what) {
  check_close(got, ref, Tolerance{0.0, 0.0}, what);
}

Padded padded(const Shape& shape, DType dtype, Device device, bool pad_all) {
  constexpr int64_t pad = 2;
  Shape big = shape;
  for (int d = 0; d < big.size(); ++d)
    if (pad_all || d == 0) big[d] += 2 * pad;
  Padded p;
  p.buffer = full(big, kSentinel, dtype, device);
  p.window = p.buffer;
  for (int d = 0; d < big.size(); ++d)
    if (pad_all || d == 0) p.window = p.window.narrow(d, pad, shape[d]);
  if (shape.size() == 0) p.window = p.buffer;  // a 0-d tensor has no room for padding
  return p;
}

void check_padded(const Padded& p, const Tensor& ref, Tolerance tol, const std::string& what) {
  check_close(p.window, ref, tol, what + " (inside the window)");
  // Expected buffer: sentinels with the window replaced by what the kernel wrote there.
  Tensor expected = full(p.buffer.shape(), kSentinel, DType::f64);
  Tensor inside = make_view(expected, p.window.shape(), expected.strides(),
                            p.window.offset() - p.buffer.offset());
  inside.copy_(p.window.to(kCPU).to(DType::f64));
  check_equal(p.buffer.to(kCPU).to(DType::f64), expected, what + " (sentinels around the window)");
}

}  // namespace mt::testing
