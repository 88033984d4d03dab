// Elementwise binary ops and comparisons: forward dispatch, backward rules, CPU kernels.
// Inputs broadcast; each rule returns gradients of the broadcast output shape and the engine
// sums them back to each input's shape.
#include <cmath>
#include <compare>
#include <cstring>
#include <map>
#include <mutex>

#include "engine/core/backend.h"
#include "engine/cpu/loops.h"
#include "engine/ops/elementwise.h"

namespace mt {

using autograd::Node;
using autograd::any_requires_grad;
using autograd::record;

// ---- CPU kernels ----
#define MT_CPU_BINARY(name, expr)                                                  \
  DispatchStub<BinaryKernel> name##_kernel(#name);                                \
  static void name##_cpu(const Tensor& a, const Tensor& b, Tensor& out) {         \
    dispatch_float(out.dtype(), #name, [&]<class T>() {                            \
      cpu::map<T, T>(out, [](T x, T y) -> T { return expr; }, a, b);              \
    });                                                                            \
  }                                                                                \
  [[maybe_unused]] static const bool name##_registered =                           \
      (name##_kernel.set(DeviceType::CPU, &name##_cpu), true);

MT_CPU_BINARY(add, x + y)
MT_CPU_BINARY(sub, x - y)
MT_CPU_BINARY(mul, x * y)
MT_CPU_BINARY(div, x / y)
MT_CPU_BINARY(pow, std::pow(x, y))
MT_CPU_BINARY(eq, T(x == y))
MT_CPU_BINARY(ne, T(x != y))
MT_CPU_BINARY(lt, T(x < y))
MT_CPU_BINARY(le, T(x <= y))
MT_CPU_BINARY(gt, T(x > y))
MT_CPU_BINARY(ge, T(x >= y))
#undef MT_CPU_BINARY

DispatchStub<TernaryKernel> where_kernel("where");
static void where_cpu(const Tensor& mask, const Tensor& a, const Tensor& b, Tensor& out) {
  dispatch_float(out.dtype(), "where", [&]<class T>() {
    cpu::map<T, T>(out, [](T m, T x, T y) -> T { return m != T(0) ? x : y; }, mask, a, b);
  });
}
[[maybe_unused]] static const bool where_registered =
    (where_kernel.set(DeviceType::CPU, &where_cpu), true);

// (a + b) + c: the same additions in the same order as two adds, in one pass.
DispatchStub<TernaryKernel> add3_kernel("add3");
static void add3_cpu(const Tensor& a, const Tensor& b, const Tensor& c, Tensor& out) {
  dispatch_float(out.dtype(), "add3", [&]<class T>() {
    cpu::map<T, T>(out, [](T x, T y, T z) -> T { return (x + y) + z; }, a, b, c);
  });
}
[[maybe_unused]] static const bool add3_registered =
    (add3_kernel.set(DeviceType::CPU, &add3_cpu), true);

// ---- forward entry ----
namespace {
Tensor binary_forward(const DispatchStub<BinaryKernel>& kernel, const Tensor& a, const Tensor& b) {
  check_operands(kernel.name, {&a, &b});
  Tensor out = empty(broadcast_shapes(a.shape(), b.shape(), kernel.name), a.dtype(), a.device());
  kernel(a.device(), a, b, out);
  return out;
}
}  // namespace

// Scalar operands are shared 0-d constants, one per (device, dtype, value): on a GPU a fresh one
// costs an allocation and a fill kernel per scalar op, as many launches as the op itself. Read-
// only: in-place writes and requires_grad are refused (Storage::read_only); one written into
// by other means (a raw pointer: its storage version moved) is replaced, never handed out again. Bounded: the table is emptied when it reaches kMaxEntries
// (values are mostly a model's few constants and learning rates). Nothing is added while the
// device is capturing a CUDA graph.
Tensor scalar_like(const Tensor& t, double value) {
  struct Key {
    int device_type, device_index, dtype;
    uint64_t bits;
    auto operator<=>(const Key&) const = default;
  };
  constexpr size_t kMaxEntries = 4096;
  static std::mutex mutex;
  struct Entry {
    Tensor constant;
    uint32_t version;  // the storage version when made: a write moves it
  };
  static auto* cache = new std::map<Key, Entry>();  // never destroyed: outlives the allocators
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof bits);
  const Key key{int(t.device().type), t.device().index, int(t.dtype()), bits};
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache->find(key);
  if (it != cache->end() && it->second.constant.storage().version() == it->second.version &&
      !it->second.constant.requires_grad()) {
    // A capture reading it holds it until its graph is destroyed: the cache may drop it sooner.
    keep_alive_while_captured(it->second.constant);
    return it->second.constant;
  }
  // Made during a CUDA-graph capture, a constant holds its value only once the graph has run:
  // it serves that capture alone and is not kept.
  if (is_capturing(t.device())) {
    Tensor s = scalar_tensor(value, t.dtype(), t.device());
    s.storage().set_read_only();
    return s;
  }
  if (cache->size() >= kMaxEntries) cache->clear();
  Tensor s = scalar_tensor(value, t.dtype(), t.device());
  s.storage().set_read_only();
  (*cache)[key] = Entry{s, s.storage().version()};
  return s;
}

// ---- ops with backward rules ----
Tensor add(const Tensor& a, const Tensor& b) {
  Tensor out = binary_forward(add_kernel, a, b);
  if (any_requires_grad(a, b)) {
    record("add", out, {&a, &b}, [](const Node&, const Tensor& g) -> TensorList {
      return {g, g};
    });
  }
  return out;
}

Tensor sub(const Tensor& a, const Tensor& b) {
  Tensor out = binary_forward(sub_kernel, a, b);
  if (any_requires_grad(a, b)) {
    record("sub", out, {&a, &b}, [](const Node& n, const Tensor& g) -> TensorList {
      return {g, n.needs_input_grad(1) ? neg(g) : Tensor()};
    });
  }
  return out;
}

Tensor mul(const Tensor& a, const Tensor& b) {
  Tensor out = binary_forward(mul_kernel, a, b);
  if (any_requires_grad(a, b)) {
    auto& node = record("mul", out, {&a, &b}, [](const Node& n, const Tensor& g) -> TensorList {
      // d(a*b)/da = b, d(a*b)/db = a
      return {n.needs_input_grad(0) ? mul(g, n.saved(1)) : Tensor(),
              n.needs_input_grad(1) ? mul(g, n.saved(0)) : Tensor()};
    });
    node.save(a);
    node.save(b);
    // One elementwise pass: a later node saving out keeps no copy (engine/autograd/node.h).
    node.set_recompute(
        [](const Node& n, double, int64_t) { return mul(n.saved(0), n.saved(1)); });
  }
  return out;
}

Tensor div(const Tensor& a, const Tensor& b) {
  Tensor out = binary_forward(div_kernel, a, b);
  if (any_requires_grad(a, b)) {
    auto& node = record("div", out, {&a, &b}, [](const Node& n, const Tensor& g) -> TensorList {
      Tensor b = n.saved(1);
      // d(a/b)/da = 1/b, d(a/b)/db = -a/b^2
      return {n.needs_input_grad(0) ? div(g, b) : Tensor(),
              n.needs_input_grad(1) ? neg(div(mul(g, n.saved(0)), mul(b, b))) : Tensor()};
    });
    node.save(a);
    node.save(b);
  }
  return out;
}

Tensor pow(const Tensor& a, const Tensor& b) {
  Tensor out = binary_forward(pow_kernel, a, b);
  if (any_requires_grad(a, b)) {
    auto& node = record("pow", out, {&a, &b}, [](const Node& n, const Tensor& g) -> TensorList {
      Tensor a = n.saved(0), b = n.saved(1);
      const Tensor zero = scalar_like(g, 0.0);
      // d(a^b)/da = b a^(b-1), and 0 where b = 0 (a^0 is constant, also at a = 0, where the
      // product would be 0 * inf); d(a^b)/db = a^b log(a), and 0 where a = 0 and b >= 0 (the
      // limit of a^b log(a)). torch's rules; the masks carry no gradient. Inside a masked
      // branch the operands are made harmless (exponent 1 where b = 0, log(1) where a = 0): the
      // branch is differentiated too, and inf there would make its derivative inf * 0 = NaN.
      const Tensor one = scalar_like(b, 1.0);
      Tensor da, db;
      if (n.needs_input_grad(0)) {
        const Tensor b_zero = eq(b, scalar_like(b, 0.0));
        da = where(b_zero, zero, mul(g, mul(b, pow(a, where(b_zero, one, sub(b, one))))));
      }
      if (n.needs_input_grad(1)) {
        const Tensor limit = mul(eq(a, scalar_like(a, 0.0)), ge(b, scalar_like(b, 0.0)));
        db = where(limit, zero, mul(g, mul(n.saved(2), log(where(limit, one, a)))));
      }
      return {da, db};
    });
    node.save(a);
    node.save(b);
    node.save_output(out);
  }
  return out;
}

Tensor pow(const Tensor& a, double exponent) { return pow(a, scalar_like(a, exponent)); }
Tensor add(const Tensor& a, double b) { return add(a, scalar_like(a, b)); }
Tensor sub(const Tensor& a, double b) { return sub(a, scalar_like(a, b)); }
Tensor mul(const Tensor& a, double b) { return mul(a, scalar_like(a, b)); }
Tensor div(const Tensor& a, double b) { return div(a, scalar_like(a, b)); }

Tensor eq(const Tensor& a, const Tensor& b) { return binary_forward(eq_kernel, a, b); }
Tensor ne(const Tensor& a, const Tensor& b) { return binary_forward(ne_kernel, a, b); }
Tensor lt(const Tensor& a, const Tensor& b) { return binary_forward(lt_kernel, a, b); }
Tensor le(const Tensor& a, const Tensor& b) { return binary_forward(le_kernel, a, b); }
Tensor gt(const Tensor& a, const Tensor& b) { return binary_forward(gt_kernel, a, b); }
Tensor ge(const Tensor& a, const Tensor& b) { return binary_forward(ge_kernel, a, b); }

Tensor add3(const Tensor& a, const Tensor& b, const Tensor& c) {
  check_operands("add3", {&a, &b, &c});
  Shape shape =
      broadcast_shapes(broadcast_shapes(a.shape(), b.shape(), "add3"), c.shape(), "add3");
  Tensor out = empty(shape, a.dtype(), a.device());
  add3_kernel(a.device(), a, b, c, out);
  if (any_requires_grad(a, b, c)) {
    record("add3", out, {&a, &b, &c},
           [](const Node&, const Tensor& g) -> TensorList { return {g, g, g}; });
  }
  return out;
}

Tensor where(const Tensor& mask, const Tensor& a, const Tensor& b) {
  check_operands("where", {&mask, &a, &b});
  Shape shape = broadcast_shapes(broadcast_shapes(mask.shape(), a.shape(), "where"), b.shape(),
                                 "where");
  Tensor out = empty(shape, a.dtype(), a.device());
  where_kernel(a.device(), mask, a, b, out);
  if (any_requires_grad(a, b)) {
    auto& node =
        record("where", out, {&mask, &a, &b}, [](const Node& n, const Tensor& g) -> TensorList {
          Tensor m = n.saved(0), zero = scalar_like(g, 0.0);
          return {Tensor(), n.needs_input_grad(1) ? where(m, g, zero) : Tensor(),
                  n.needs_input_grad(2) ? where(m, zero, g) : Tensor()};
        });
    node.save(mask);
  }
  return out;
}

// ---- operators ----
Tensor operator+(const Tensor& a, const Tensor& b) { return add(a, b); }
Tensor operator-(const Tensor& a, const Tensor& b) { return sub(a, b); }
Tensor operator*(const Tensor& a, const Tensor& b) { return mul(a, b); }
Tensor operator/(const Tensor& a, const Tensor& b) { return div(a, b); }
Tensor operator-(const Tensor& x) { return neg(x); }
Tensor operator+(const Tensor& a, double b) { return add(a, b); }
Tensor operator-(const Tensor& a, double b) { return sub(a, b); }
Tensor operator*(const Tensor& a, double b) { return mul(a, b); }
Tensor operator/(const Tensor& a, double b) { return div(a, b); }
Tensor operator+(double a, const Tensor& b) { return add(scalar_like(b, a), b); }
Tensor operator-(double a, const Tensor& b) { return sub(scalar_like(b, a), b); }
Tensor operator*(double a, const Tensor& b) { return mul(scalar_like(b, a), b); }
Tensor operator/(double a, const Tensor& b) { return div(scalar_like(b, a), b); }

}  // namespace mt
