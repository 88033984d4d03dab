// Elementwise binary and ternary kernels (the CUDA side of engine/ops/binary.cpp, gelu_backward
// and Tensor::add_). Comparisons return 1 or 0 in the operands' dtype, as on the CPU.
#include "kernels/cuda/elementwise.cuh"

namespace mt::gpu {
namespace {

#define MT_BINARY_FUNCTOR(Name, expr)                        \
  struct Name {                                              \
    template <class A>                                       \
    __device__ __forceinline__ A operator()(A x, A y) const { \
      return expr;                                           \
    }                                                        \
  };
MT_BINARY_FUNCTOR(AddF, x + y)
MT_BINARY_FUNCTOR(SubF, x - y)
MT_BINARY_FUNCTOR(MulF, x * y)
MT_BINARY_FUNCTOR(DivF, x / y)
MT_BINARY_FUNCTOR(PowF, m_pow(x, y))
MT_BINARY_FUNCTOR(EqF, A(x == y))
MT_BINARY_FUNCTOR(NeF, A(x != y))
MT_BINARY_FUNCTOR(LtF, A(x < y))
MT_BINARY_FUNCTOR(LeF, A(x <= y))
MT_BINARY_FUNCTOR(GtF, A(x > y))
MT_BINARY_FUNCTOR(GeF, A(x >= y))
// g * gelu'(x), gelu'(x) = Phi(x) + x phi(x)
MT_BINARY_FUNCTOR(GeluBackwardF,
                  x * (A(0.5) * (A(1) + m_erf(y * A(0.70710678118654752440))) +
                       y * m_exp(A(-0.5) * y * y) * A(0.39894228040143267794)))
MT_BINARY_FUNCTOR(ReluBackwardF, y <= A(0) ? A(0) : x)  // NaN passes the gradient
#undef MT_BINARY_FUNCTOR

struct AxpyF {
  double alpha;
  template <class A>
  __device__ __forceinline__ A operator()(A x, A y) const {
    return x + A(alpha) * y;
  }
};

struct WhereF {
  template <class A>
  __device__ __forceinline__ A operator()(A m, A x, A y) const {
    return m != A(0) ? x : y;
  }
};

// (x + y) + z, rounded to T after the first addition as well, so 16-bit results equal two adds.
template <class T>
struct Add3F {
  template <class A>
  __device__ __forceinline__ A operator()(A x, A y, A z) const {
    A s = x + y;
    if constexpr (is_16bit<T>) s = load_acc(store_acc<T>(s));
    return s + z;
  }
};

template <class T>
void run(BinaryOp op, const Iter& it, void* out, const void* a, const void* b, double p0,
         cudaStream_t s, int sms) {
  const void* const in[2] = {a, b};
  switch (op) {
    case BinaryOp::add: launch_elementwise<T, 2>(it, out, in, AddF{}, s, sms); break;
    case BinaryOp::sub: launch_elementwise<T, 2>(it, out, in, SubF{}, s, sms); break;
    case BinaryOp::mul: launch_elementwise<T, 2>(it, out, in, MulF{}, s, sms); break;
    case BinaryOp::div: launch_elementwise<T, 2>(it, out, in, DivF{}, s, sms); break;
    case BinaryOp::pow: launch_elementwise<T, 2>(it, out, in, PowF{}, s, sms); break;
    case BinaryOp::eq: launch_elementwise<T, 2>(it, out, in, EqF{}, s, sms); break;
    case BinaryOp::ne: launch_elementwise<T, 2>(it, out, in, NeF{}, s, sms); break;
    case BinaryOp::lt: launch_elementwise<T, 2>(it, out, in, LtF{}, s, sms); break;
    case BinaryOp::le: launch_elementwise<T, 2>(it, out, in, LeF{}, s, sms); break;
    case BinaryOp::gt: launch_elementwise<T, 2>(it, out, in, GtF{}, s, sms); break;
    case BinaryOp::ge: launch_elementwise<T, 2>(it, out, in, GeF{}, s, sms); break;
    case BinaryOp::gelu_backward:
      launch_elementwise<T, 2>(it, out, in, GeluBackwardF{}, s, sms);
      break;
    case BinaryOp::relu_backward:
      launch_elementwise<T, 2>(it, out, in, ReluBackwardF{}, s, sms);
      break;
    case BinaryOp::axpy: launch_elementwise<T, 2>(it, out, in, AxpyF{p0}, s, sms); break;
  }
}

template <class T>
void run_where(const Iter& it, void* out, const void* m, const void* a, const void* b,
               cudaStream_t s, int sms) {
  const void* const in[3] = {m, a, b};
  launch_elementwise<T, 3>(it, out, in, WhereF{}, s, sms);
}

template <class T>
void run_add3(const Iter& it, void* out, const void* a, const void* b, const void* c,
              cudaStream_t s, int sms) {
  const void* const in[3] = {a, b, c};
  launch_elementwise<T, 3>(it, out, in, Add3F<T>{}, s, sms);
}

}  // namespace

void binary(BinaryOp op, ScalarType t, const Iter& it, void* out, const void* a, const void* b,
            double p0, cudaStream_t stream, int sm_count) {
  switch (t) {
    case ScalarType::f32: run<float>(op, it, out, a, b, p0, stream, sm_count); break;
    case ScalarType::f64: run<double>(op, it, out, a, b, p0, stream, sm_count); break;
    case ScalarType::f16: run<__half>(op, it, out, a, b, p0, stream, sm_count); break;
    case ScalarType::bf16: run<__nv_bfloat16>(op, it, out, a, b, p0, stream, sm_count); break;
    case ScalarType::i64: break;  // refused by the launcher in ops.cpp
  }
}

void where(ScalarType t, const Iter& it, void* out, const void* mask, const void* a,
           const void* b, cudaStream_t stream, int sm_count) {
  switch (t) {
    case ScalarType::f32: run_where<float>(it, out, mask, a, b, stream, sm_count); break;
    case ScalarType::f64: run_where<double>(it, out, mask, a, b, stream, sm_count); break;
    case ScalarType::f16: run_where<__half>(it, out, mask, a, b, stream, sm_count); break;
    case ScalarType::bf16: run_where<__nv_bfloat16>(it, out, mask, a, b, stream, sm_count); break;
    case ScalarType::i64: break;
  }
}

void add3(ScalarType t, const Iter& it, void* out, const void* a, const void* b, const void* c,
          cudaStream_t stream, int sm_count) {
  switch (t) {
    case ScalarType::f32: run_add3<float>(it, out, a, b, c, stream, sm_count); break;
    case ScalarType::f64: run_add3<double>(it, out, a, b, c, stream, sm_count); break;
    case ScalarType::f16: run_add3<__half>(it, out, a, b, c, stream, sm_count); break;
    case ScalarType::bf16: run_add3<__nv_bfloat16>(it, out, a, b, c, stream, sm_count); break;
    case ScalarType::i64: break;
  }
}

}  // namespace mt::gpu
