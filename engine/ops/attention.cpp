// Rotary time embeddings and block-diagonal (variable-length) multi-head attention, composed
// from the engine's differentiable ops. This is the CPU path and the oracle for the fused CUDA
// kernels: because it is made of ops, its gradients of every order are right by construction.
// On devices the attention core (after rotary) is the fused flash_attention op instead.
#include <cmath>
#include <numbers>
#include <numeric>

#include "engine/autograd/grad_mode.h"
#include "engine/cpu/loops.h"
#include "engine/ops/elementwise.h"
#include "engine/ops/kernels.h"

namespace mt {

Tensor rotary_inv_freq(int64_t dim_head, double t_max, DType dtype) {
  MT_CHECK(dim_head > 0 && dim_head % 4 == 0,
           "rotary_inv_freq: dim_head must be a positive multiple of 4, got {}", dim_head);
  MT_CHECK(t_max > 0, "rotary_inv_freq: t_max must be positive, got {}", t_max);
  const double t_min = t_max / 1000.0;
  const int64_t half = dim_head / 2;
  std::vector<double> f(size_t(half), 0.0);
  for (int64_t k = 0; k < dim_head / 4; ++k)
    f[size_t(k)] = 2.0 * std::numbers::pi /
                   (t_min * std::pow(t_max / t_min, double(2 * k) / double(half)));
  return from_vector(f, Shape{half}, dtype);
}

// ---- rotate_pairs: y = R x for the rotation of each pair (x[2k], x[2k+1]) by the angle whose
// cosine and sine are c[i, k], sign * s[i, k] (the same for every head). Linear in x with
// R^T = R(c, -s), so its backward is the same op with the opposite sign, and so on to any order.
// One kernel on the CPU and on CUDA (kernels/cuda/rotary.cu).
DispatchStub<RotatePairsKernel> rotate_pairs_kernel("rotate_pairs");

namespace {
// x (n, heads, 2 half) contiguous, c and s (n, half) contiguous, out like x.
void rotate_pairs_cpu(const Tensor& x, const Tensor& c, const Tensor& s, double sign,
                      Tensor& out) {
  const int64_t n = x.size(0), heads = x.size(1), half = x.size(2) / 2;
  dispatch_float(x.dtype(), "rotate_pairs", [&]<class T>() {
    const T* px = x.data_ptr<T>();
    const T* pc = c.data_ptr<T>();
    const T* ps = s.data_ptr<T>();
    const T sg = T(sign);
    T* po = out.data_ptr<T>();
    cpu::parallel_range(n, heads * half * 2, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const T* ci = pc + i * half;
        const T* si = ps + i * half;
        for (int64_t h = 0; h < heads; ++h) {
          const T* xi = px + (i * heads + h) * 2 * half;
          T* oi = po + (i * heads + h) * 2 * half;
          for (int64_t k = 0; k < half; ++k) {
            const T x0 = xi[2 * k], x1 = xi[2 * k + 1];
            // (x0, x1) -> (x0 cos - x1 sin, x1 cos + x0 sin)
            const T sk = sg * si[k];
            oi[2 * k] = T(x0 * ci[k] - x1 * sk);
            oi[2 * k + 1] = T(x1 * ci[k] + x0 * sk);
          }
        }
      }
    });
  });
}
[[maybe_unused]] const bool rotate_pairs_registered =
    (rotate_pairs_kernel.set(DeviceType::CPU, &rotate_pairs_cpu), true);

// c and s are constants of the graph (built from data under no grad); sign is +1 or -1.
Tensor rotate_pairs(const Tensor& x, const Tensor& c, const Tensor& s, double sign) {
  // The kernels read the tables raw: same device and dtype as x (rotary converts the dtype).
  check_operands("rotary", {&x, &c, &s});
  Tensor y = empty(x.shape(), x.dtype(), x.device());
  rotate_pairs_kernel(x.device(), contiguous_nograd(x), contiguous_nograd(c), contiguous_nograd(s),
                      sign, y);
  if (autograd::any_requires_grad(x)) {
    auto& node = autograd::record("rotate_pairs", y, {&x},
                                  [sign](const autograd::Node& n, const Tensor& g) -> TensorList {
                                    return {rotate_pairs(g, n.saved(0), n.saved(1), -sign)};
                                  });
    node.save(c);
    node.save(s);
  }
  return y;
}

// The rotary angles times[i] * inv_freq[k], (n, dh/2), computed in f32 at least: times reach
// hundreds of seconds and frequencies 2 pi / t_min, so a 16-bit angle would be off by radians
// (cos and sin are rounded once to the target dtype afterwards). Differentiable in both.
Tensor rotary_angles(const Tensor& times, const Tensor& inv_freq, DType dtype) {
  const DType angle_t = dtype == DType::f64 ? DType::f64 : DType::f32;
  return mul(times.to(angle_t).reshape(Shape{times.size(0), 1}),
             inv_freq.to(angle_t).reshape(Shape{1, inv_freq.size(0)}));
}

// The same rotation composed of differentiable ops (other devices; angles that need gradients):
// c, s (n, dh/2), (x0, x1) -> (x0 cos - x1 sin, x1 cos + x0 sin) for every head.
Tensor rotate_pairs_composite(const Tensor& x, const Tensor& c, const Tensor& s) {
  const int64_t n = x.size(0), heads = x.size(1), half = x.size(2) / 2;
  Tensor c4 = c.reshape(Shape{n, 1, half, 1}), s4 = s.reshape(Shape{n, 1, half, 1});
  Tensor pairs = x.reshape(Shape{n, heads, half, 2});
  Tensor even = pairs.narrow(3, 0, 1), odd = pairs.narrow(3, 1, 1);
  Tensor y = cat({sub(mul(even, c4), mul(odd, s4)), add(mul(odd, c4), mul(even, s4))}, 3);
  return y.reshape(x.shape());
}
}  // namespace

Tensor rotary(const Tensor& x, const Tensor& times, const Tensor& inv_freq) {
  MT_CHECK(x.dim() == 3 && x.size(2) % 2 == 0,
           "rotary: x must be (n, heads, dh) with even dh, got {}", x.shape().str());
  MT_CHECK(times.dim() == 1 && times.size(0) == x.size(0),
           "rotary: times must be (n) = ({}), got {}", x.size(0), times.shape().str());
  const int64_t half = x.size(2) / 2;
  MT_CHECK(inv_freq.dim() == 1 && inv_freq.size(0) == half,
           "rotary: inv_freq must be (dh/2) = ({}), got {}", half, inv_freq.shape().str());
  // Angles that are data (the usual case): tables, then the fused CPU op or the composite.
  if (!autograd::any_requires_grad(times, inv_freq))
    return rotary(x, rotary_tables(times, inv_freq, x.dtype()), 1.0);
  // Gradients with respect to the times or the frequencies: the whole rotation composed.
  Tensor angle = rotary_angles(times, inv_freq, x.dtype());  // (n, dh/2)
  return rotate_pairs_composite(x, cos(angle).to(x.dtype()), sin(angle).to(x.dtype()));
}

RotaryTables rotary_tables(const Tensor& times, const Tensor& inv_freq, DType dtype) {
  MT_CHECK(times.dim() == 1 && inv_freq.dim() == 1,
           "rotary_tables: times (n) and inv_freq (dh/2) must be 1-d, got {} and {}",
           times.shape().str(), inv_freq.shape().str());
  MT_CHECK(!autograd::any_requires_grad(times, inv_freq),
           "rotary_tables: times and inv_freq must not require grad (the tables are constants); "
           "call rotary(x, times, inv_freq) to differentiate through the angles");
  NoGradGuard constants;
  Tensor angle = rotary_angles(times, inv_freq, dtype);
  return {cos(angle).to(dtype), sin(angle).to(dtype)};
}

Tensor rotary(const Tensor& x, const RotaryTables& tables, double sign) {
  MT_CHECK(x.dim() == 3 && x.size(2) % 2 == 0,
           "rotary: x must be (n, heads, dh) with even dh, got {}", x.shape().str());
  const int64_t n = x.size(0), half = x.size(2) / 2;
  MT_CHECK(tables.defined() && tables.cos.shape() == (Shape{n, half}) &&
               tables.sin.shape() == (Shape{n, half}),
           "rotary: tables must be (n, dh/2) = ({}, {}), got {}", n, half,
           tables.defined() ? tables.cos.shape().str() : "undefined");
  MT_CHECK(sign == 1.0 || sign == -1.0, "rotary: sign must be 1 or -1, got {}", sign);
  const Tensor c = tables.cos.to(x.dtype()), s = tables.sin.to(x.dtype());
  // The fused op (one pass over x, nothing of x saved): its backward rotates by the opposite
  // angle and is itself differentiable. One kernel instead of the composite's ten (narrows,
  // four products, a cat) forward and some twenty backward.
  return rotate_pairs(x, c, s, sign);
}

namespace {
// Offsets (B+1) of a list of lengths, checked against the rows they must cover.
std::vector<int64_t> offsets(const std::vector<int64_t>& lengths, int64_t total, const char* what) {
  std::vector<int64_t> cu(lengths.size() + 1, 0);
  for (size_t b = 0; b < lengths.size(); ++b) {
    MT_CHECK(lengths[b] >= 0, "varlen_attention: {}[{}] is negative ({})", what, b, lengths[b]);
    cu[b + 1] = cu[b] + lengths[b];
  }
  MT_CHECK(cu.back() == total, "varlen_attention: {} add up to {} but the tensor has {} rows",
           what, cu.back(), total);
  return cu;
}
}  // namespace

namespace {
Tensor per_sample(const Tensor& q3, const Tensor& k3, const Tensor& v3, const VarlenAttention& spec,
                  const std::vector<int64_t>& cq, const std::vector<int64_t>& ck, double scale);
Tensor padded_attention(const Tensor& q3, const Tensor& k3, const Tensor& v3,
                        const VarlenAttention& spec, const std::vector<int64_t>& cq,
                        const std::vector<int64_t>& ck, int64_t max_q, int64_t max_k,
                        double scale);
}  // namespace

Tensor varlen_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                        const VarlenAttention& spec) {
  MT_CHECK(q.dim() == 2 && k.dim() == 2 && v.dim() == 2,
           "varlen_attention: q, k, v must be (rows, heads*dh); got {}, {}, {}", q.shape().str(),
           k.shape().str(), v.shape().str());
  const int64_t H = spec.heads;
  MT_CHECK(H > 0 && q.size(1) % H == 0, "varlen_attention: {} features do not split into {} heads",
           q.size(1), H);
  MT_CHECK(k.shape() == v.shape() && k.size(1) == q.size(1),
           "varlen_attention: k {} and v {} must match each other and q's features {}",
           k.shape().str(), v.shape().str(), q.size(1));
  MT_CHECK(k.dtype() == q.dtype() && v.dtype() == q.dtype(),
           "varlen_attention: q, k, v are {}, {}, {}; give them one dtype (convert with .to())",
           dtype_name(q.dtype()), dtype_name(k.dtype()), dtype_name(v.dtype()));
  MT_CHECK(spec.q_lengths.size() == spec.k_lengths.size(),
           "varlen_attention: {} query lengths but {} key lengths; give one of each per sample",
           spec.q_lengths.size(), spec.k_lengths.size());
  const int64_t dh = q.size(1) / H, Nq = q.size(0), Nk = k.size(0);
  const auto cq = offsets(spec.q_lengths, Nq, "q_lengths");
  const auto ck = offsets(spec.k_lengths, Nk, "k_lengths");
  const bool rotate = spec.q_times.defined();
  MT_CHECK(rotate == spec.k_times.defined(),
           "varlen_attention: give both q_times and k_times for rotary, or neither");
  MT_CHECK(!spec.rotate_value || rotate, "varlen_attention: rotate_value needs rotary times");
  MT_CHECK(!rotate || spec.inv_freq.defined(),
           "varlen_attention: q_times and k_times are set but inv_freq is not; set inv_freq to "
           "the (dh/2) rotary frequencies (rotary_inv_freq)");
  MT_CHECK(!rotate || (spec.q_times.numel() == Nq && spec.k_times.numel() == Nk),
           "varlen_attention: q_times has {} entries and k_times {}; give one time per query row "
           "({}) and per key row ({})",
           spec.q_times.numel(), spec.k_times.numel(), Nq, Nk);

  Tensor q3 = q.reshape(Shape{Nq, H, dh}), k3 = k.reshape(Shape{Nk, H, dh}),
         v3 = v.reshape(Shape{Nk, H, dh});
  // Rotary tables: the caller's, or built once per side here when the angles are constants
  // (keys and values share the key side's, queries and the rotated-back output the query side's).
  RotaryTables q_tab = spec.q_tables, k_tab = spec.k_tables;
  if (rotate && !autograd::any_requires_grad(spec.q_times, spec.k_times, spec.inv_freq)) {
    if (!q_tab.defined()) q_tab = rotary_tables(spec.q_times, spec.inv_freq, q.dtype());
    if (!k_tab.defined()) k_tab = rotary_tables(spec.k_times, spec.inv_freq, q.dtype());
  }
  auto rotate_by = [&](const Tensor& x3, const Tensor& times, const RotaryTables& tab,
                       double sign) {
    if (tab.defined()) return rotary(x3, tab, sign);
    return rotary(x3, sign > 0 ? times : neg(times), spec.inv_freq);
  };
  if (rotate) {
    q3 = rotate_by(q3, spec.q_times, q_tab, 1.0);
    k3 = rotate_by(k3, spec.k_times, k_tab, 1.0);
    if (spec.rotate_value) v3 = rotate_by(v3, spec.k_times, k_tab, 1.0);
  }
  const double scale = 1.0 / std::sqrt(double(dh));
  for (size_t b = 0; b + 1 < cq.size(); ++b)
    MT_CHECK(spec.q_lengths[b] == 0 || spec.k_lengths[b] > 0,
             "varlen_attention: sample {} has {} queries but no keys to attend to", b,
             spec.q_lengths[b]);
  int64_t max_q = 0, max_k = 0, scores = 0;
  for (size_t b = 0; b + 1 < cq.size(); ++b) {
    max_q = std::max(max_q, spec.q_lengths[b]);
    max_k = std::max(max_k, spec.k_lengths[b]);
    scores += spec.q_lengths[b] * spec.k_lengths[b];
  }
  const int64_t B = int64_t(spec.q_lengths.size());
  using Mode = VarlenAttention::Mode;
  // The fused core on devices (engine/ops/flash_attention.cpp; its kernels take dh <= 128);
  // the CPU keeps the composite, which is the oracle the fused kernels are tested against.
  const bool fused = spec.mode == Mode::fused ||
                     (spec.mode == Mode::automatic && !q.device().is_cpu() && dh <= 128);
  bool padded = spec.mode == Mode::padded;
  if (spec.mode == Mode::automatic) padded = B * max_q * max_k <= 4 * scores;
  Tensor o = fused    ? flash_attention(q3, k3, v3, cq, ck, scale)
             : padded ? padded_attention(q3, k3, v3, spec, cq, ck, max_q, max_k, scale)
                      : per_sample(q3, k3, v3, spec, cq, ck, scale);
  if (spec.rotate_value) o = rotate_by(o, spec.q_times, q_tab, -1.0);
  return o.reshape(Shape{Nq, H * dh});
}

namespace {
// Rows of x (n, H, dh) gathered into (B, max_len, H, dh) blocks: block b holds sample b's rows
// [cu[b], cu[b+1]) and zero rows after them. A gather (embedding) from x with one zero row
// appended, so the backward is a scatter-add of size O(n), not one full-size gradient per sample.
// When every sample has max_len rows (a batch of equal neuron counts, the common case) the
// blocks are x itself, reshaped: no gather, no zero row, and a backward without a scatter.
Tensor to_blocks(const Tensor& x, const std::vector<int64_t>& cu, int64_t max_len) {
  const int64_t n = x.size(0), H = x.size(1), dh = x.size(2), B = int64_t(cu.size()) - 1;
  if (n == B * max_len) return x.reshape(Shape{B, max_len, H, dh});
  std::vector<int64_t> index(size_t(B * max_len), n);  // n = the appended zero row
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = cu[size_t(b)]; i < cu[size_t(b) + 1]; ++i)
      index[size_t(b * max_len + i - cu[size_t(b)])] = i;
  Tensor rows = cat({x.reshape(Shape{n, H * dh}), zeros(Shape{1, H * dh}, x.dtype(), x.device())}, 0);
  // The gather's indices are built on the host and copied to x's device (a no-op on the CPU).
  return embedding(rows, from_indices(index, Shape{B * max_len}).to(x.device()))
      .reshape(Shape{B, max_len, H, dh});
}

Tensor padded_attention(const Tensor& q3, const Tensor& k3, const Tensor& v3,
                        const VarlenAttention& spec, const std::vector<int64_t>& cq,
                        const std::vector<int64_t>& ck, int64_t max_q, int64_t max_k,
                        double scale) {
  const int64_t H = q3.size(1), dh = q3.size(2), B = int64_t(spec.q_lengths.size());
  if (q3.size(0) == 0) return zeros(Shape{0, H, dh}, q3.dtype(), q3.device());
  Tensor qb = to_blocks(q3, cq, max_q).permute(Shape{0, 2, 1, 3});  // (B, H, max_q, dh)
  Tensor kb = to_blocks(k3, ck, max_k).permute(Shape{0, 2, 3, 1});  // (B, H, dh, max_k)
  Tensor vb = to_blocks(v3, ck, max_k).permute(Shape{0, 2, 1, 3});  // (B, H, max_k, dh)
  Tensor scores = mul(matmul(qb, kb), scale);  // (B, H, max_q, max_k)
  if (k3.size(0) < B * max_k) {
    // Padded keys get -inf (zero weight); a sample without keys has no queries either, and its
    // padded rows attend uniformly to zero keys instead of producing NaN.
    std::vector<double> mask(size_t(B * max_k), 0.0);
    for (int64_t b = 0; b < B; ++b)
      if (spec.k_lengths[size_t(b)] > 0)
        for (int64_t j = spec.k_lengths[size_t(b)]; j < max_k; ++j)
          mask[size_t(b * max_k + j)] = -INFINITY;
    // Built in f32 on the host (which has no 16-bit fill), converted on the queries' device.
    Tensor bias =
        from_vector(mask, Shape{B, 1, 1, max_k}, DType::f32).to(q3.device()).to(q3.dtype());
    scores = add(scores, bias);
  }
  Tensor p = softmax(scores, -1);
  Tensor ob = matmul(p, vb).permute(Shape{0, 2, 1, 3}).reshape(Shape{B * max_q, H * dh});
  // Back to the samples' rows (the blocks themselves when no sample is padded).
  if (q3.size(0) == B * max_q) return ob.reshape(q3.shape());
  std::vector<int64_t> index;
  index.reserve(size_t(q3.size(0)));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < spec.q_lengths[size_t(b)]; ++i) index.push_back(b * max_q + i);
  return embedding(ob, from_indices(index, Shape{q3.size(0)}).to(q3.device())).reshape(q3.shape());
}

// One dense attention per sample (for batches whose lengths differ too much to pad).
Tensor per_sample(const Tensor& q3, const Tensor& k3, const Tensor& v3, const VarlenAttention& spec,
                  const std::vector<int64_t>& cq, const std::vector<int64_t>& ck, double scale) {
  const int64_t H = q3.size(1), dh = q3.size(2);
  TensorList outs;
  for (size_t b = 0; b + 1 < cq.size(); ++b) {
    const int64_t nq = spec.q_lengths[b], nk = spec.k_lengths[b];
    if (nq == 0) continue;
    MT_CHECK(nk > 0, "varlen_attention: sample {} has {} queries but no keys to attend to", b, nq);
    Tensor qb = q3.narrow(0, cq[b], nq).permute(Shape{1, 0, 2});  // (H, nq, dh)
    Tensor kb = k3.narrow(0, ck[b], nk).permute(Shape{1, 2, 0});  // (H, dh, nk)
    Tensor vb = v3.narrow(0, ck[b], nk).permute(Shape{1, 0, 2});  // (H, nk, dh)
    Tensor p = softmax(mul(matmul(qb, kb), scale), -1);          // (H, nq, nk)
    outs.push_back(matmul(p, vb).permute(Shape{1, 0, 2}));       // (nq, H, dh)
  }
  return outs.empty() ? zeros(Shape{0, H, dh}, q3.dtype(), q3.device()) : cat(outs, 0);
}
}  // namespace

}  // namespace mt
