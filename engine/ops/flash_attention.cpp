// The fused core of variable-length attention, o = softmax(scale q k^T) v per sample and head:
// the forward (online softmax, the row log-sum-exp kept), its backward as a fused op that is
// itself differentiable, and the backward's backward (a fused kernel, or a closed-form composite
// of differentiable ops when that backward is itself being recorded). The CPU kernels here are
// plain loops accumulating in double: the reference that the CUDA kernels
// (kernels/cuda/flash_attention.cu) are compared with. The derivation of every formula is in
// kernels/cuda/flash_attention.md; varlen_attention (attention.cpp) adds rotary around this.
#include <cmath>
#include <memory>

#include "engine/ops/elementwise.h"
#include "engine/ops/kernels.h"

namespace mt {

using autograd::Node;
using autograd::any_requires_grad;
using autograd::record;

DispatchStub<FlashForwardKernel> flash_attention_kernel("flash_attention");
DispatchStub<FlashBackwardKernel> flash_attention_backward_kernel("flash_attention_backward");
DispatchStub<FlashDoubleBackwardKernel> flash_attention_double_backward_kernel(
    "flash_attention_double_backward");

namespace {

DType acc_dtype(DType t) { return t == DType::f64 ? DType::f64 : DType::f32; }

// ---- CPU kernels: one query row at a time, sums in double ----
template <class T>
double dot(const T* x, const T* y, int64_t n) {
  double s = 0;
  for (int64_t c = 0; c < n; ++c) s += double(x[c]) * double(y[c]);
  return s;
}

void flash_forward_cpu(const Tensor& q, const Tensor& k, const Tensor& v,
                       const FlashAttentionLayout& layout, Tensor& o, Tensor& lse) {
  const int64_t H = q.size(1), dh = q.size(2), B = int64_t(layout.cu_q->size()) - 1;
  const auto& cq = *layout.cu_q;
  const auto& ck = *layout.cu_k;
  dispatch_float(q.dtype(), "flash_attention", [&]<class T>() {
    const T *Q = q.data_ptr<T>(), *K = k.data_ptr<T>(), *V = v.data_ptr<T>();
    T* O = o.data_ptr<T>();
    T* L = lse.data_ptr<T>();  // the accumulation dtype is T for f32 and f64
    std::vector<double> s, acc(static_cast<size_t>(dh));
    for (int64_t b = 0; b < B; ++b) {
      const int64_t k0 = ck[size_t(b)], nk = ck[size_t(b) + 1] - k0;
      s.resize(size_t(nk));
      for (int64_t i = cq[size_t(b)]; i < cq[size_t(b) + 1]; ++i)
        for (int64_t h = 0; h < H; ++h) {
          const T* qi = Q + (i * H + h) * dh;
          double m = -INFINITY, l = 0;
          for (int64_t j = 0; j < nk; ++j) {
            s[size_t(j)] = layout.scale * dot(qi, K + ((k0 + j) * H + h) * dh, dh);
            m = std::max(m, s[size_t(j)]);
          }
          std::fill(acc.begin(), acc.end(), 0.0);
          for (int64_t j = 0; j < nk; ++j) {
            const double p = std::exp(s[size_t(j)] - m);
            l += p;
            const T* vj = V + ((k0 + j) * H + h) * dh;
            for (int64_t c = 0; c < dh; ++c) acc[size_t(c)] += p * double(vj[c]);
          }
          for (int64_t c = 0; c < dh; ++c) O[(i * H + h) * dh + c] = T(acc[size_t(c)] / l);
          L[i * H + h] = T(m + std::log(l));
        }
    }
  });
}

void flash_backward_cpu(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o,
                        const Tensor& dO, const Tensor& lse, const FlashAttentionLayout& layout,
                        Tensor& dq, Tensor& dk, Tensor& dv) {
  const int64_t H = q.size(1), dh = q.size(2), B = int64_t(layout.cu_q->size()) - 1;
  const auto& cq = *layout.cu_q;
  const auto& ck = *layout.cu_k;
  const double scale = layout.scale;
  dispatch_float(q.dtype(), "flash_attention_backward", [&]<class T>() {
    const T *Q = q.data_ptr<T>(), *K = k.data_ptr<T>(), *V = v.data_ptr<T>(),
            *Op = o.data_ptr<T>(), *G = dO.data_ptr<T>(), *L = lse.data_ptr<T>();
    T *DQ = dq.data_ptr<T>(), *DK = dk.data_ptr<T>(), *DV = dv.data_ptr<T>();
    std::vector<double> acc(static_cast<size_t>(dh)), gk, gv;
    for (int64_t b = 0; b < B; ++b) {
      const int64_t k0 = ck[size_t(b)], nk = ck[size_t(b) + 1] - k0;
      for (int64_t h = 0; h < H; ++h) {
        gk.assign(size_t(nk * dh), 0.0);
        gv.assign(size_t(nk * dh), 0.0);
        for (int64_t i = cq[size_t(b)]; i < cq[size_t(b) + 1]; ++i) {
          const int64_t row = (i * H + h) * dh;
          const double D = dot(G + row, Op + row, dh), lse_i = double(L[i * H + h]);
          std::fill(acc.begin(), acc.end(), 0.0);
          for (int64_t j = 0; j < nk; ++j) {
            const T *kj = K + ((k0 + j) * H + h) * dh, *vj = V + ((k0 + j) * H + h) * dh;
            const double p = std::exp(scale * dot(Q + row, kj, dh) - lse_i);
            const double ds = p * (dot(G + row, vj, dh) - D);
            for (int64_t c = 0; c < dh; ++c) {
              acc[size_t(c)] += ds * double(kj[c]);
              gk[size_t(j * dh + c)] += ds * double(Q[row + c]);
              gv[size_t(j * dh + c)] += p * double(G[row + c]);
            }
          }
          for (int64_t c = 0; c < dh; ++c) DQ[row + c] = T(scale * acc[size_t(c)]);
        }
        for (int64_t j = 0; j < nk; ++j)
          for (int64_t c = 0; c < dh; ++c) {
            DK[((k0 + j) * H + h) * dh + c] = T(scale * gk[size_t(j * dh + c)]);
            DV[((k0 + j) * H + h) * dh + c] = T(gv[size_t(j * dh + c)]);
          }
      }
    }
  });
}

// Per query row: P from lse, dP = dO v^T, W = scale (a k^T + q b^T), u = dO c^T; the row
// statistics D = rowsum(P dP), r = rowsum(P W), E = rowsum(P gP); then every output term (see
// kernels/cuda/flash_attention.md).
void flash_double_backward_cpu(const Tensor& q, const Tensor& k, const Tensor& v,
                               const Tensor& o, const Tensor& dO, const Tensor& lse,
                               const Tensor& a, const Tensor& bb, const Tensor& cc,
                               const FlashAttentionLayout& layout, Tensor& gq, Tensor& gk,
                               Tensor& gv, Tensor& gdO) {
  const int64_t H = q.size(1), dh = q.size(2), B = int64_t(layout.cu_q->size()) - 1;
  const auto& cq = *layout.cu_q;
  const auto& ck = *layout.cu_k;
  const double scale = layout.scale;
  dispatch_float(q.dtype(), "flash_attention_double_backward", [&]<class T>() {
    const T *Q = q.data_ptr<T>(), *K = k.data_ptr<T>(), *V = v.data_ptr<T>(),
            *Op = o.data_ptr<T>(), *G = dO.data_ptr<T>(), *L = lse.data_ptr<T>(),
            *Ap = a.data_ptr<T>(), *Bp = bb.data_ptr<T>(), *Cp = cc.data_ptr<T>();
    T *GQ = gq.data_ptr<T>(), *GK = gk.data_ptr<T>(), *GV = gv.data_ptr<T>(),
      *GDO = gdO.data_ptr<T>();
    std::vector<double> p, dp, w, u, accq(static_cast<size_t>(dh)), acco(static_cast<size_t>(dh)), sk, sv;
    for (int64_t s = 0; s < B; ++s) {
      const int64_t k0 = ck[size_t(s)], nk = ck[size_t(s) + 1] - k0;
      p.resize(size_t(nk));
      dp.resize(size_t(nk));
      w.resize(size_t(nk));
      u.resize(size_t(nk));
      for (int64_t h = 0; h < H; ++h) {
        sk.assign(size_t(nk * dh), 0.0);
        sv.assign(size_t(nk * dh), 0.0);
        for (int64_t i = cq[size_t(s)]; i < cq[size_t(s) + 1]; ++i) {
          const int64_t row = (i * H + h) * dh;
          const double D = dot(G + row, Op + row, dh), lse_i = double(L[i * H + h]);
          double r = 0;
          for (int64_t j = 0; j < nk; ++j) {
            const int64_t col = ((k0 + j) * H + h) * dh;
            p[size_t(j)] = std::exp(scale * dot(Q + row, K + col, dh) - lse_i);
            dp[size_t(j)] = dot(G + row, V + col, dh);
            w[size_t(j)] = scale * (dot(Ap + row, K + col, dh) + dot(Q + row, Bp + col, dh));
            u[size_t(j)] = dot(G + row, Cp + col, dh);
            r += p[size_t(j)] * w[size_t(j)];
          }
          auto gP = [&](int64_t j) {
            return w[size_t(j)] * (dp[size_t(j)] - D) - r * dp[size_t(j)] + u[size_t(j)];
          };
          double E = 0;
          for (int64_t j = 0; j < nk; ++j) E += p[size_t(j)] * gP(j);
          std::fill(accq.begin(), accq.end(), 0.0);
          std::fill(acco.begin(), acco.end(), 0.0);
          for (int64_t j = 0; j < nk; ++j) {
            const int64_t col = ((k0 + j) * H + h) * dh;
            const double pj = p[size_t(j)];
            const double ds = pj * (dp[size_t(j)] - D), gS = pj * (gP(j) - E),
                         gdP = pj * (w[size_t(j)] - r);
            for (int64_t c = 0; c < dh; ++c) {
              accq[size_t(c)] += ds * double(Bp[col + c]) + gS * double(K[col + c]);
              acco[size_t(c)] += gdP * double(V[col + c]) + pj * double(Cp[col + c]);
              sk[size_t(j * dh + c)] += ds * double(Ap[row + c]) + gS * double(Q[row + c]);
              sv[size_t(j * dh + c)] += gdP * double(G[row + c]);
            }
          }
          for (int64_t c = 0; c < dh; ++c) {
            GQ[row + c] = T(scale * accq[size_t(c)]);
            GDO[row + c] = T(acco[size_t(c)]);
          }
        }
        for (int64_t j = 0; j < nk; ++j)
          for (int64_t c = 0; c < dh; ++c) {
            GK[((k0 + j) * H + h) * dh + c] = T(scale * sk[size_t(j * dh + c)]);
            GV[((k0 + j) * H + h) * dh + c] = T(sv[size_t(j * dh + c)]);
          }
      }
    }
  });
}

[[maybe_unused]] const bool registered =
    (flash_attention_kernel.set(DeviceType::CPU, &flash_forward_cpu),
     flash_attention_backward_kernel.set(DeviceType::CPU, &flash_backward_cpu),
     flash_attention_double_backward_kernel.set(DeviceType::CPU, &flash_double_backward_cpu),
     true);

// The offsets, shared by every node of one attention call (no copy per recorded op), and the
// device backend's copy of its tables (FlashAttentionLayout::DeviceTables), made by the first
// kernel of the call that needs it.
struct Offsets {
  std::vector<int64_t> cu_q, cu_k;
  mutable FlashAttentionLayout::DeviceTables device_tables;
};
using OffsetsPtr = std::shared_ptr<const Offsets>;

// The checked entry: shapes, offsets and a key for every sample with queries.
OffsetsPtr check_layout(const char* op, const Tensor& q, const Tensor& k, const Tensor& v,
                        const std::vector<int64_t>& cu_q, const std::vector<int64_t>& cu_k) {
  check_operands(op, {&q, &k, &v});
  MT_CHECK(q.dim() == 3 && k.dim() == 3 && k.shape() == v.shape() && q.size(1) == k.size(1) &&
               q.size(2) == k.size(2),
           "{}: q must be (Nq, heads, dh) and k, v (Nk, heads, dh); got {}, {}, {}", op,
           q.shape().str(), k.shape().str(), v.shape().str());
  MT_CHECK(is_floating(q.dtype()), "{}: dtype {} is not a float type", op,
           dtype_name(q.dtype()));
  MT_CHECK(cu_q.size() == cu_k.size() && !cu_q.empty(),
           "{}: cu_q has {} offsets and cu_k {}; give B+1 of each", op, cu_q.size(), cu_k.size());
  MT_CHECK(cu_q.front() == 0 && cu_k.front() == 0 && cu_q.back() == q.size(0) &&
               cu_k.back() == k.size(0),
           "{}: offsets must run from 0 to the row counts ({} queries, {} keys); they run "
           "{}..{} and {}..{}",
           op, q.size(0), k.size(0), cu_q.front(), cu_q.back(), cu_k.front(), cu_k.back());
  for (size_t b = 0; b + 1 < cu_q.size(); ++b) {
    const int64_t nq = cu_q[b + 1] - cu_q[b], nk = cu_k[b + 1] - cu_k[b];
    MT_CHECK(nq >= 0 && nk >= 0, "{}: offsets of sample {} decrease", op, b);
    MT_CHECK(nq == 0 || nk > 0, "{}: sample {} has {} queries but no keys to attend to", op, b,
             nq);
  }
  return std::make_shared<const Offsets>(Offsets{cu_q, cu_k, {}});
}

TensorList backward_impl(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o,
                         const Tensor& dO, const Tensor& lse, const OffsetsPtr& off,
                         double scale);

Tensor forward_impl(const Tensor& q, const Tensor& k, const Tensor& v, const OffsetsPtr& off,
                    double scale, Tensor* lse_out) {
  Tensor o = empty(q.shape(), q.dtype(), q.device());
  Tensor lse = empty(Shape{q.size(0), q.size(1)}, acc_dtype(q.dtype()), q.device());
  const FlashAttentionLayout layout{&off->cu_q, &off->cu_k, scale, &off->device_tables};
  flash_attention_kernel(q.device(), contiguous_nograd(q), contiguous_nograd(k),
                         contiguous_nograd(v), layout, o, lse);
  if (any_requires_grad(q, k, v)) {
    auto& node = record("flash_attention", o, {&q, &k, &v},
                        [off, scale](const Node& n, const Tensor& g) -> TensorList {
                          return backward_impl(n.saved(0), n.saved(1), n.saved(2), n.saved(3),
                                               g, n.saved(4), off, scale);
                        });
    node.save(q);
    node.save(k);
    node.save(v);
    node.save_output(o);
    node.save(lse);
  }
  if (lse_out) *lse_out = lse;
  return o;
}

// Differentiable {gq, gk, gv, gdO}: the fused kernel unless this backward is itself recorded
// (then the closed-form composite, so that higher orders are right).
TensorList double_backward_impl(const Tensor& q, const Tensor& k, const Tensor& v,
                                const Tensor& o, const Tensor& dO, const Tensor& lse,
                                const Tensor& a, const Tensor& b, const Tensor& c,
                                const OffsetsPtr& off, double scale) {
  if (any_requires_grad(q, k, v, dO, a, b, c))
    return flash_attention_double_backward_composite(q, k, v, dO, a, b, c, off->cu_q, off->cu_k,
                                                     scale);
  Tensor gq = empty(q.shape(), q.dtype(), q.device()), gk = empty(k.shape(), k.dtype(), k.device()),
         gv = empty(k.shape(), k.dtype(), k.device()), gdO = empty(q.shape(), q.dtype(), q.device());
  const FlashAttentionLayout layout{&off->cu_q, &off->cu_k, scale, &off->device_tables};
  flash_attention_double_backward_kernel(
      q.device(), contiguous_nograd(q), contiguous_nograd(k), contiguous_nograd(v),
      contiguous_nograd(o), contiguous_nograd(dO), contiguous_nograd(lse), contiguous_nograd(a),
      contiguous_nograd(b), contiguous_nograd(c), layout, gq, gk, gv, gdO);
  return {gq, gk, gv, gdO};
}

// One packed output (dq, dk, dv flattened one after the other: a node has one output) and
// views of it for the caller. o and lse enter as values: the double-backward formulas already
// hold their whole dependence on q, k and v.
TensorList backward_impl(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o,
                         const Tensor& dO, const Tensor& lse, const OffsetsPtr& off,
                         double scale) {
  const int64_t nq = q.numel(), nk = k.numel();
  const Shape q_shape = q.shape(), k_shape = k.shape();
  Tensor packed = empty(Shape{nq + 2 * nk}, q.dtype(), q.device());
  {
    Tensor dq = packed.narrow(0, 0, nq).reshape(q_shape);
    Tensor dk = packed.narrow(0, nq, nk).reshape(k_shape);
    Tensor dv = packed.narrow(0, nq + nk, nk).reshape(k_shape);
    const FlashAttentionLayout layout{&off->cu_q, &off->cu_k, scale, &off->device_tables};
    flash_attention_backward_kernel(q.device(), contiguous_nograd(q), contiguous_nograd(k),
                                    contiguous_nograd(v), contiguous_nograd(o),
                                    contiguous_nograd(dO), contiguous_nograd(lse), layout, dq,
                                    dk, dv);
  }
  if (any_requires_grad(q, k, v, dO)) {
    auto& node = record(
        "flash_attention_backward", packed, {&q, &k, &v, &dO},
        [off, scale, nq, nk, q_shape, k_shape](const Node& n, const Tensor& g) -> TensorList {
          Tensor a = g.narrow(0, 0, nq).reshape(q_shape);
          Tensor b = g.narrow(0, nq, nk).reshape(k_shape);
          Tensor c = g.narrow(0, nq + nk, nk).reshape(k_shape);
          return double_backward_impl(n.saved(0), n.saved(1), n.saved(2), n.saved(4),
                                      n.saved(3), n.saved(5), a, b, c, off, scale);
        });
    node.save(q);
    node.save(k);
    node.save(v);
    node.save(dO);
    node.save(o.detach());
    node.save(lse.detach());
  }
  return {packed.narrow(0, 0, nq).reshape(q_shape), packed.narrow(0, nq, nk).reshape(k_shape),
          packed.narrow(0, nq + nk, nk).reshape(k_shape)};
}

}  // namespace

Tensor flash_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                       const std::vector<int64_t>& cu_q, const std::vector<int64_t>& cu_k,
                       double scale, Tensor* lse) {
  MT_CHECK(std::isfinite(scale), "flash_attention: scale is {}; give a finite softmax scale "
           "(usually 1/sqrt(dh))", scale);
  return forward_impl(q, k, v, check_layout("flash_attention", q, k, v, cu_q, cu_k), scale, lse);
}

TensorList flash_attention_backward(const Tensor& q, const Tensor& k, const Tensor& v,
                                    const Tensor& o, const Tensor& dO, const Tensor& lse,
                                    const std::vector<int64_t>& cu_q,
                                    const std::vector<int64_t>& cu_k, double scale) {
  MT_CHECK(std::isfinite(scale), "flash_attention_backward: scale is {}; give the forward's "
           "finite softmax scale", scale);
  OffsetsPtr off = check_layout("flash_attention_backward", q, k, v, cu_q, cu_k);
  check_operands("flash_attention_backward", {&q, &o, &dO});
  MT_CHECK(o.shape() == q.shape() && dO.shape() == q.shape(),
           "flash_attention_backward: o {} and dO {} must have q's shape {}", o.shape().str(),
           dO.shape().str(), q.shape().str());
  const Shape lse_shape{q.size(0), q.size(1)};
  MT_CHECK(lse.shape() == lse_shape && lse.dtype() == acc_dtype(q.dtype()) &&
               lse.device() == q.device(),
           "flash_attention_backward: lse must be ({}, {}) {} on {}, got {}", q.size(0), q.size(1),
           dtype_name(acc_dtype(q.dtype())), q.device().str(), lse.str());
  return backward_impl(q, k, v, o, dO, lse, off, scale);
}

TensorList flash_attention_double_backward_composite(
    const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& dO, const Tensor& a,
    const Tensor& b, const Tensor& c, const std::vector<int64_t>& cu_q,
    const std::vector<int64_t>& cu_k, double scale) {
  check_layout("flash_attention_double_backward_composite", q, k, v, cu_q, cu_k);
  check_operands("flash_attention_double_backward_composite", {&q, &k, &dO, &a, &b, &c});
  MT_CHECK(dO.shape() == q.shape() && a.shape() == q.shape() && b.shape() == k.shape() &&
               c.shape() == k.shape(),
           "flash_attention_double_backward_composite: dO {} and a {} must be q's shape, b {} "
           "and c {} k's",
           dO.shape().str(), a.shape().str(), b.shape().str(), c.shape().str());
  const int64_t H = q.size(1), dh = q.size(2);
  TensorList gq, gk, gv, gdO;
  auto rows = [](const Tensor& x, int64_t start, int64_t n) {  // (H, n, dh)
    return x.narrow(0, start, n).permute(Shape{1, 0, 2});
  };
  auto back = [](const Tensor& x) { return x.permute(Shape{1, 0, 2}); };  // (n, H, dh)
  for (size_t s = 0; s + 1 < cu_q.size(); ++s) {
    const int64_t q0 = cu_q[s], nq = cu_q[s + 1] - q0, k0 = cu_k[s], nk = cu_k[s + 1] - k0;
    if (nk == 0) continue;
    if (nq == 0) {  // keys nobody attends to: zero gradients
      gk.push_back(zeros(Shape{nk, H, dh}, q.dtype(), q.device()));
      gv.push_back(zeros(Shape{nk, H, dh}, q.dtype(), q.device()));
      continue;
    }
    Tensor Q = rows(q, q0, nq), G = rows(dO, q0, nq), A = rows(a, q0, nq);
    Tensor K = rows(k, k0, nk), V = rows(v, k0, nk), Bk = rows(b, k0, nk), C = rows(c, k0, nk);
    Tensor Kt = K.transpose(1, 2);
    Tensor P = softmax(mul(matmul(Q, Kt), scale), -1);             // (H, nq, nk)
    Tensor dP = matmul(G, V.transpose(1, 2));                       // dO v^T
    Tensor D = sum(mul(P, dP), {2}, true);                          // rowsum(P dP) = rowsum(dO o)
    Tensor dS = mul(P, sub(dP, D));
    Tensor W = mul(add(matmul(A, Kt), matmul(Q, Bk.transpose(1, 2))), scale);
    Tensor r = sum(mul(W, P), {2}, true);
    Tensor gP = add(sub(mul(W, sub(dP, D)), mul(r, dP)), matmul(G, C.transpose(1, 2)));
    Tensor gdP = mul(P, sub(W, r));
    Tensor E = sum(mul(P, gP), {2}, true);
    Tensor gS = mul(P, sub(gP, E));
    gq.push_back(back(mul(add(matmul(dS, Bk), matmul(gS, K)), scale)));
    gk.push_back(back(
        mul(add(matmul(dS.transpose(1, 2), A), matmul(gS.transpose(1, 2), Q)), scale)));
    gv.push_back(back(matmul(gdP.transpose(1, 2), G)));
    gdO.push_back(back(add(matmul(gdP, V), matmul(P, C))));
  }
  auto join = [&](const TensorList& parts) {
    return parts.empty() ? zeros(Shape{0, H, dh}, q.dtype(), q.device()) : cat(parts, 0);
  };
  return {join(gq), join(gk), join(gv), join(gdO)};
}

}  // namespace mt
