// Elementwise unary kernels (the CUDA side of engine/ops/unary.cpp, clamp, and Tensor::mul_).
// Each op is a functor in the accumulation type; the formulas are the CPU kernels' formulas.
#include "kernels/cuda/elementwise.cuh"

namespace mt::gpu {
namespace {

#define MT_UNARY_FUNCTOR(Name, expr)                   \
  struct Name {                                        \
    template <class A>                                 \
    __device__ __forceinline__ A operator()(A v) const { \
      return expr;                                     \
    }                                                  \
  };
MT_UNARY_FUNCTOR(NegF, -v)
MT_UNARY_FUNCTOR(ExpF, m_exp(v))
MT_UNARY_FUNCTOR(LogF, m_log(v))
MT_UNARY_FUNCTOR(SqrtF, m_sqrt(v))
MT_UNARY_FUNCTOR(RsqrtF, A(1) / m_sqrt(v))
MT_UNARY_FUNCTOR(AbsF, m_abs(v))
MT_UNARY_FUNCTOR(SignF, A(int(v > A(0)) - int(v < A(0))))
MT_UNARY_FUNCTOR(TanhF, m_tanh(v))
MT_UNARY_FUNCTOR(SigmoidF, A(1) / (A(1) + m_exp(-v)))
MT_UNARY_FUNCTOR(ReluF, v <= A(0) ? A(0) : v)  // NaN stays NaN (the CPU kernel's rule)
MT_UNARY_FUNCTOR(ErfF, m_erf(v))
// gelu''(x) = phi(x) (2 - x^2), phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
MT_UNARY_FUNCTOR(GeluSecondDerivativeF,
                 m_exp(A(-0.5) * v * v) * A(0.39894228040143267794) * (A(2) - v * v))
MT_UNARY_FUNCTOR(SinF, m_sin(v))
MT_UNARY_FUNCTOR(CosF, m_cos(v))
// gelu(x) = x Phi(x) = x (1 + erf(x / sqrt2)) / 2
MT_UNARY_FUNCTOR(GeluF, A(0.5) * v * (A(1) + m_erf(v * A(0.70710678118654752440))))
#undef MT_UNARY_FUNCTOR

// Bounds as doubles, NaN = none; compared in the accumulation type (as the CPU compares in T).
struct ClampF {
  double lo, hi;
  template <class A>
  __device__ __forceinline__ A operator()(A v) const {
    const A l = isnan(lo) ? A(-INFINITY) : A(lo);
    const A h = isnan(hi) ? A(INFINITY) : A(hi);
    return v < l ? l : (v > h ? h : v);
  }
};

// x * value with the product in double, then rounded: what the CPU's T(v * value) does.
struct ScaleF {
  double value;
  template <class A>
  __device__ __forceinline__ A operator()(A v) const {
    return A(double(v) * value);
  }
};

template <class T>
void run(UnaryOp op, const Iter& it, void* out, const void* x, double p0, double p1,
         cudaStream_t s, int sms) {
  const void* const in[1] = {x};
  switch (op) {
    case UnaryOp::neg: launch_elementwise<T, 1>(it, out, in, NegF{}, s, sms); break;
    case UnaryOp::exp: launch_elementwise<T, 1>(it, out, in, ExpF{}, s, sms); break;
    case UnaryOp::log: launch_elementwise<T, 1>(it, out, in, LogF{}, s, sms); break;
    case UnaryOp::sqrt: launch_elementwise<T, 1>(it, out, in, SqrtF{}, s, sms); break;
    case UnaryOp::rsqrt: launch_elementwise<T, 1>(it, out, in, RsqrtF{}, s, sms); break;
    case UnaryOp::abs: launch_elementwise<T, 1>(it, out, in, AbsF{}, s, sms); break;
    case UnaryOp::sign: launch_elementwise<T, 1>(it, out, in, SignF{}, s, sms); break;
    case UnaryOp::tanh: launch_elementwise<T, 1>(it, out, in, TanhF{}, s, sms); break;
    case UnaryOp::sigmoid: launch_elementwise<T, 1>(it, out, in, SigmoidF{}, s, sms); break;
    case UnaryOp::relu: launch_elementwise<T, 1>(it, out, in, ReluF{}, s, sms); break;
    case UnaryOp::erf: launch_elementwise<T, 1>(it, out, in, ErfF{}, s, sms); break;
    case UnaryOp::sin: launch_elementwise<T, 1>(it, out, in, SinF{}, s, sms); break;
    case UnaryOp::cos: launch_elementwise<T, 1>(it, out, in, CosF{}, s, sms); break;
    case UnaryOp::gelu: launch_elementwise<T, 1>(it, out, in, GeluF{}, s, sms); break;
    case UnaryOp::gelu_second_derivative:
      launch_elementwise<T, 1>(it, out, in, GeluSecondDerivativeF{}, s, sms);
      break;
    case UnaryOp::clamp: launch_elementwise<T, 1>(it, out, in, ClampF{p0, p1}, s, sms); break;
    case UnaryOp::scale: launch_elementwise<T, 1>(it, out, in, ScaleF{p0}, s, sms); break;
  }
}

}  // namespace

void unary(UnaryOp op, ScalarType t, const Iter& it, void* out, const void* x, double p0,
           double p1, cudaStream_t stream, int sm_count) {
  switch (t) {
    case ScalarType::f32: run<float>(op, it, out, x, p0, p1, stream, sm_count); break;
    case ScalarType::f64: run<double>(op, it, out, x, p0, p1, stream, sm_count); break;
    case ScalarType::f16: run<__half>(op, it, out, x, p0, p1, stream, sm_count); break;
    case ScalarType::bf16: run<__nv_bfloat16>(op, it, out, x, p0, p1, stream, sm_count); break;
    case ScalarType::i64: break;  // refused by the launcher in ops.cpp
  }
}

}  // namespace mt::gpu
