#include "models/poco.h"

#include <nlohmann/json.hpp>

#include <cmath>
#include <numbers>
#include <numeric>

#include "engine/autograd/grad_mode.h"

namespace mt::models {

void PocoConfig::validate() const {
  auto positive = [](int64_t v, const char* name) {
    MT_CHECK(v > 0, "POCO config: {} must be positive, got {}", name, v);
  };
  positive(dim, "dim");
  positive(dim_head, "dim_head");
  positive(cross_heads, "cross_heads");
  positive(self_heads, "self_heads");
  positive(num_latents, "num_latents");
  positive(seq_length, "seq_length");
  positive(pred_length, "pred_length");
  positive(patch, "patch");
  positive(conditioning_dim, "conditioning_dim");
  MT_CHECK(depth >= 0, "POCO config: depth must be >= 0, got {}", depth);
  MT_CHECK(pred_length < seq_length,
           "POCO config: pred_length {} must be smaller than seq_length {} (the context is their "
           "difference)",
           pred_length, seq_length);
  MT_CHECK(context() % patch == 0,
           "POCO config: the context seq_length - pred_length = {} must be a multiple of patch {}",
           context(), patch);
  MT_CHECK(dim_head % 4 == 0, "POCO config: dim_head {} must be a multiple of 4 (rotary pairs)",
           dim_head);
  // Its highest rotary frequency, 2 pi / (rotary_t_max / 1000), must be a finite f32.
  MT_CHECK(std::isfinite(rotary_t_max) && rotary_t_max > 0 &&
               std::isfinite(static_cast<float>(2000.0 * std::numbers::pi / rotary_t_max)),
           "POCO config: rotary_t_max must be a positive number (a time span in frames; its "
           "highest rotary frequency is 2 pi 1000 / rotary_t_max), got {}",
           rotary_t_max);
  MT_CHECK(std::isfinite(emb_init_std) && emb_init_std >= 0,
           "POCO config: emb_init_std must be >= 0 (the embeddings' initial standard deviation), "
           "got {}",
           emb_init_std);
  MT_CHECK(dropout_ffn >= 0 && dropout_ffn < 1 && dropout_lin >= 0 && dropout_lin < 1,
           "POCO config: dropout rates must be in [0, 1) (dropout_ffn {}, dropout_lin {})",
           dropout_ffn, dropout_lin);
}

namespace {
// One list of (key, member) pairs serves both directions, so they cannot drift apart.
template <class Config, class Fn>
void for_each_field(Config& c, Fn&& fn) {
  fn("dim", c.dim);
  fn("dim_head", c.dim_head);
  fn("cross_heads", c.cross_heads);
  fn("self_heads", c.self_heads);
  fn("num_latents", c.num_latents);
  fn("depth", c.depth);
  fn("seq_length", c.seq_length);
  fn("pred_length", c.pred_length);
  fn("patch", c.patch);
  fn("conditioning_dim", c.conditioning_dim);
  fn("rotary_t_max", c.rotary_t_max);
  fn("dropout_ffn", c.dropout_ffn);
  fn("dropout_lin", c.dropout_lin);
  fn("emb_init_std", c.emb_init_std);
}
}  // namespace

nlohmann::json PocoConfig::to_json() const {
  nlohmann::json j = nlohmann::json::object();
  PocoConfig c = *this;
  for_each_field(c, [&](const char* key, auto& v) { j[key] = v; });
  return j;
}

PocoConfig PocoConfig::from_json(const nlohmann::json& j) { return from_json(j, PocoConfig{}); }

PocoConfig PocoConfig::from_json(const nlohmann::json& j, const PocoConfig& defaults) {
  MT_CHECK(j.is_object(), "POCO config: expected a JSON object, got {}", j.type_name());
  PocoConfig c = defaults;
  std::string known;
  for_each_field(c, [&](const char* key, auto&) { known += std::string(known.empty() ? "" : ", ") + key; });
  for (auto it = j.begin(); it != j.end(); ++it) {
    bool found = false;
    for_each_field(c, [&](const char* key, auto& v) {
      if (it.key() != key) return;
      found = true;
      using T = std::remove_reference_t<decltype(v)>;
      MT_CHECK(it.value().is_number(), "POCO config: '{}' must be a number, got {}", key,
               it.value().dump());
      if constexpr (std::is_integral_v<T>) {
        MT_CHECK(it.value().is_number_integer(), "POCO config: '{}' must be an integer, got {}",
                 key, it.value().dump());
      }
      v = it.value().get<T>();
    });
    MT_CHECK(found, "POCO config: unknown key '{}' (known keys: {})", it.key(), known);
  }
  c.validate();
  return c;
}

PocoConfig PocoConfig::paper() { return PocoConfig{}; }

PocoConfig PocoConfig::seed() {
  PocoConfig c;
  c.dim = 512;
  c.num_latents = 64;
  c.depth = 2;
  c.self_heads = 8;
  c.seq_length = 24;
  c.pred_length = 12;
  c.patch = 4;
  return c;
}

PocoConfig PocoConfig::named(const std::string& name) {
  if (name == "poco-paper") return paper();
  if (name == "poco-seed") return seed();
  MT_FAIL("unknown POCO configuration '{}'; the named ones are poco-paper and poco-seed", name);
}

// ---- blocks ----

namespace {
// Output features [begin, begin + count) of a Linear: x W[begin:begin+count]^T (+ the bias
// slice). The attention's fused projections (kv, qkv) are split this way so that the backward
// narrows the small weight instead of the large activation.
// One linear() op, so on CUDA the bias slice is the GEMM's epilogue.
Tensor linear_rows(const nn::Linear& l, const Tensor& x, int64_t begin, int64_t count,
                   const nn::ParamMap* ov) {
  const Tensor b = l.bias(ov);
  return linear(x, l.weight(ov).narrow(0, begin, count),
                b.defined() ? b.narrow(0, begin, count) : Tensor());
}
}  // namespace

FeedForward::FeedForward(int64_t dim, double dropout, Generator& gen, DType dtype)
    : dropout_(dropout) {
  norm_ = register_module("norm", std::make_shared<nn::LayerNorm>(dim, 1e-5, dtype));
  fc1_ = register_module("fc1", std::make_shared<nn::Linear>(dim, 8 * dim, true, gen, dtype));
  fc2_ = register_module("fc2", std::make_shared<nn::Linear>(4 * dim, dim, true, gen, dtype));
}

Tensor FeedForward::forward(const Tensor& x, const nn::ParamMap* ov, Generator* gen) const {
  // GEGLU: fc1's rows are [value; gate]: one product over the whole weight, then the fused
  // value * gelu(gate) (engine/ops/geglu.cpp), whose backward writes both halves of the
  // gradient of fc1's output, so fc1's backward is again one product per direction.
  Tensor xn = norm_->forward(x, ov);
  Tensor a = geglu(fc1_->forward(xn, ov));
  if (gen) a = dropout(a, dropout_, true, *gen);
  return fc2_->forward(a, ov);
}

CrossAttention::CrossAttention(int64_t dim, int64_t heads, int64_t dim_head, bool rotate_value,
                               Generator& gen, DType dtype)
    : heads_(heads), dim_head_(dim_head), rotate_value_(rotate_value) {
  const int64_t inner = heads * dim_head;
  norm_ = register_module("norm", std::make_shared<nn::LayerNorm>(dim, 1e-5, dtype));
  norm_context_ = register_module("norm_context", std::make_shared<nn::LayerNorm>(dim, 1e-5, dtype));
  q_proj_ = register_module("q_proj", std::make_shared<nn::Linear>(dim, inner, false, gen, dtype));
  kv_proj_ =
      register_module("kv_proj", std::make_shared<nn::Linear>(dim, 2 * inner, false, gen, dtype));
  out_proj_ = register_module("out_proj", std::make_shared<nn::Linear>(inner, dim, true, gen, dtype));
}

Tensor CrossAttention::forward(const Tensor& xq, const Tensor& xc, const AttentionLayout& layout,
                               const Tensor& inv_freq, const nn::ParamMap* ov) const {
  const int64_t inner = heads_ * dim_head_;
  Tensor q = q_proj_->forward(norm_->forward(xq, ov), ov);                  // (nq, inner)
  Tensor xcn = norm_context_->forward(xc, ov);
  Tensor k = linear_rows(*kv_proj_, xcn, 0, inner, ov);                      // (nk, inner)
  Tensor v = linear_rows(*kv_proj_, xcn, inner, inner, ov);                  // (nk, inner)
  VarlenAttention spec{heads_, layout.q_lengths, layout.k_lengths, layout.q_times,
                       layout.k_times, inv_freq, layout.q_tables, layout.k_tables,
                       rotate_value_};
  Tensor o = varlen_attention(q, k, v, spec);
  return out_proj_->forward(o, ov);
}

SelfAttention::SelfAttention(int64_t dim, int64_t heads, int64_t dim_head, Generator& gen,
                             DType dtype)
    : heads_(heads), dim_head_(dim_head) {
  const int64_t inner = heads * dim_head;
  norm_ = register_module("norm", std::make_shared<nn::LayerNorm>(dim, 1e-5, dtype));
  qkv_proj_ =
      register_module("qkv_proj", std::make_shared<nn::Linear>(dim, 3 * inner, false, gen, dtype));
  out_proj_ = register_module("out_proj", std::make_shared<nn::Linear>(inner, dim, true, gen, dtype));
}

Tensor SelfAttention::forward(const Tensor& x, const AttentionLayout& layout,
                              const Tensor& inv_freq, const nn::ParamMap* ov) const {
  const int64_t inner = heads_ * dim_head_;
  Tensor xn = norm_->forward(x, ov);
  VarlenAttention spec{heads_, layout.q_lengths, layout.k_lengths, layout.q_times,
                       layout.k_times, inv_freq, layout.q_tables, layout.k_tables,
                       /*rotate_value=*/true};
  Tensor o = varlen_attention(linear_rows(*qkv_proj_, xn, 0, inner, ov),
                              linear_rows(*qkv_proj_, xn, inner, inner, ov),
                              linear_rows(*qkv_proj_, xn, 2 * inner, inner, ov), spec);
  return out_proj_->forward(o, ov);
}

// ---- the model ----

Poco::Poco(const PocoConfig& config, std::vector<int64_t> session_sizes, Generator& gen,
           DType dtype)
    : config_(config), session_sizes_(std::move(session_sizes)), dtype_(dtype) {
  config_.validate();
  MT_CHECK(!session_sizes_.empty(), "POCO: at least one session is needed");
  int64_t total = 0;
  for (size_t s = 0; s < session_sizes_.size(); ++s) {
    MT_CHECK(session_sizes_[s] > 0, "POCO: session {} has {} neurons", s, session_sizes_[s]);
    unit_offsets_.push_back(total);
    total += session_sizes_[s];
  }
  const PocoConfig& c = config_;
  const int64_t D = c.dim;
  unit_emb_ = register_module("unit_emb",
                              std::make_shared<nn::Embedding>(total, D, c.emb_init_std, gen, dtype));
  session_emb_ = register_module(
      "session_emb", std::make_shared<nn::Embedding>(int64_t(session_sizes_.size()), D,
                                                     c.emb_init_std, gen, dtype));
  latent_emb_ = register_module(
      "latent_emb", std::make_shared<nn::Embedding>(c.num_latents, D, c.emb_init_std, gen, dtype));
  input_proj_ =
      register_module("input_proj", std::make_shared<nn::Linear>(c.patch, D, true, gen, dtype));

  auto encoder = register_module("encoder", std::make_shared<Group>());
  enc_cross_ = encoder->register_module(
      "cross", std::make_shared<CrossAttention>(D, c.cross_heads, c.dim_head, true, gen, dtype));
  enc_ffn_ = encoder->register_module("ffn",
                                      std::make_shared<FeedForward>(D, c.dropout_ffn, gen, dtype));
  auto process = register_module("process", std::make_shared<Group>());
  for (int64_t i = 0; i < c.depth; ++i) {
    auto layer = process->register_module(std::to_string(i), std::make_shared<Group>());
    proc_attn_.push_back(layer->register_module(
        "attn", std::make_shared<SelfAttention>(D, c.self_heads, c.dim_head, gen, dtype)));
    proc_ffn_.push_back(
        layer->register_module("ffn", std::make_shared<FeedForward>(D, c.dropout_ffn, gen, dtype)));
  }
  auto decoder = register_module("decoder", std::make_shared<Group>());
  dec_cross_ = decoder->register_module(
      "cross", std::make_shared<CrossAttention>(D, c.cross_heads, c.dim_head, false, gen, dtype));
  dec_ffn_ = decoder->register_module("ffn",
                                      std::make_shared<FeedForward>(D, c.dropout_ffn, gen, dtype));

  auto head = register_module("head", std::make_shared<Group>());
  const int64_t H = c.conditioning_dim;
  head_in_ = head->register_module("in_proj",
                                   std::make_shared<nn::Linear>(c.context(), H, true, gen, dtype));
  head_alpha_ = head->register_module("alpha", std::make_shared<nn::Linear>(D, H, true, gen, dtype));
  head_beta_ = head->register_module("beta", std::make_shared<nn::Linear>(D, H, true, gen, dtype));
  head_out_ = head->register_module(
      "out_proj", std::make_shared<nn::Linear>(H, c.pred_length, true, gen, dtype));
  {
    // FiLM starts as the identity-free map: alpha = beta = 0, so the prediction begins as the
    // out_proj bias and the population conditioning is learned from there (as POCO does).
    NoGradGuard no_grad;
    for (auto& t : head_alpha_->parameters()) t.zero_();
    for (auto& t : head_beta_->parameters()) t.zero_();
  }
  inv_freq_ = register_buffer("inv_freq", rotary_inv_freq(c.dim_head, c.rotary_t_max, dtype));
}

int64_t Poco::unit_offset(int64_t session) const {
  MT_CHECK(session >= 0 && session < int64_t(session_sizes_.size()),
           "POCO: session {} does not exist (the model has {})", session, session_sizes_.size());
  return unit_offsets_[size_t(session)];
}

int64_t Poco::backbone_parameter_count() const {
  int64_t n = 0;
  for (const auto& [name, t] : named_parameters())
    if (name.rfind("unit_emb.", 0) != 0 && name.rfind("session_emb.", 0) != 0 &&
        name.rfind("latent_emb.", 0) != 0)
      n += t.numel();
  return n;
}

void Poco::check_batch(const PocoBatch& b) const {
  const int64_t Tin = config_.context();
  MT_CHECK(b.x.defined() && b.x.dim() == 2 && b.x.size(1) == Tin,
           "POCO batch: x must be (neurons, {}) (the context seq_length - pred_length), got {}",
           Tin, b.x.defined() ? b.x.shape().str() : "undefined");
  MT_CHECK(b.x.dtype() == dtype_, "POCO batch: x is {} but the model is {}",
           dtype_name(b.x.dtype()), dtype_name(dtype_));
  const int64_t n = b.x.size(0);
  // One device check here names the fix; a mismatch would otherwise surface deep in an op.
  const Device device = inv_freq_.device();
  MT_CHECK(b.x.device() == device &&
               (!b.unit_index.defined() || b.unit_index.device() == device) &&
               (!b.neuron_session.defined() || b.neuron_session.device() == device) &&
               (!b.target.defined() || b.target.device() == device),
           "POCO batch: every tensor of the batch must be on the model's device {} (x is on {}); "
           "move the batch with batch.to(device)",
           device.str(), b.x.device().str());
  MT_CHECK(b.unit_index.defined() && b.unit_index.shape() == Shape{n} &&
               b.neuron_session.defined() && b.neuron_session.shape() == Shape{n},
           "POCO batch: unit_index and neuron_session must be ({}) i64", n);
  MT_CHECK(b.sample_neurons.size() == b.sample_sessions.size() && !b.sample_neurons.empty(),
           "POCO batch: sample_neurons ({}) and sample_sessions ({}) must be non-empty and equal "
           "in length",
           b.sample_neurons.size(), b.sample_sessions.size());
  for (size_t i = 0; i < b.sample_neurons.size(); ++i)
    MT_CHECK(b.sample_neurons[i] >= 1,
             "POCO batch: sample {} has {} neurons; every sample holds at least one (leave an "
             "empty one out of the batch)",
             i, b.sample_neurons[i]);
  const int64_t total = std::accumulate(b.sample_neurons.begin(), b.sample_neurons.end(), int64_t(0));
  MT_CHECK(total == n, "POCO batch: sample_neurons add up to {} but x has {} rows", total, n);
  for (int64_t s : b.sample_sessions) unit_offset(s);  // range check
  if (b.target.defined())
    MT_CHECK(b.target.shape() == (Shape{n, config_.pred_length}),
             "POCO batch: target must be ({}, {}), got {}", n, config_.pred_length,
             b.target.shape().str());
}

Tensor Poco::forward(const PocoBatch& b, const nn::ParamMap* ov, Generator* gen) const {
  check_batch(b);
  const PocoConfig& c = config_;
  const int64_t N = b.total_neurons(), L = c.patches(), P = c.patch, D = c.dim;
  const int64_t B = int64_t(b.sample_neurons.size()), NL = c.num_latents;
  const double Tin = double(c.context());

  // Layout data: lengths and rotary times of tokens, latents and output queries (the times
  // built once per batch when it carries a PocoReuse).
  std::vector<int64_t> tokens_per_sample, latents_per_sample(size_t(B), NL);
  for (int64_t n : b.sample_neurons) tokens_per_sample.push_back(n * L);
  PocoReuse* reuse = b.reuse.get();
  if (reuse != nullptr && reuse->model != this) {
    const bool layout_only = reuse->layout_only;
    *reuse = PocoReuse();
    reuse->layout_only = layout_only;
    reuse->model = this;
  }
  PocoReuse times_here;
  PocoReuse& times = reuse != nullptr ? *reuse : times_here;
  if (!times.t_tokens.defined()) {
    std::vector<double> token_t(size_t(N * L)), latent_t(size_t(B * NL)), query_t(size_t(N), Tin);
    for (int64_t i = 0; i < N; ++i)
      for (int64_t l = 0; l < L; ++l) token_t[size_t(i * L + l)] = double(l * P);
    for (int64_t s = 0; s < B; ++s)
      for (int64_t j = 0; j < NL; ++j) latent_t[size_t(s * NL + j)] = double(j) * Tin / double(NL);
    // Built on the host and queued to the batch's device (no wait: copies go through pinned
    // staging, engine/ops view.cpp to_device).
    const Device device = b.x.device();
    times.t_tokens = from_vector(token_t, Shape{N * L}, dtype_).to(device);
    times.t_latents = from_vector(latent_t, Shape{B * NL}, dtype_).to(device);
    times.t_queries = from_vector(query_t, Shape{N}, dtype_).to(device);
    times.r_tokens = rotary_tables(times.t_tokens, inv_freq_, dtype_);
    times.r_latents = rotary_tables(times.t_latents, inv_freq_, dtype_);
    times.r_queries = rotary_tables(times.t_queries, inv_freq_, dtype_);
  }
  const AttentionLayout encode{latents_per_sample, tokens_per_sample, times.t_latents,
                               times.t_tokens,     times.r_latents,   times.r_tokens};
  const AttentionLayout process{latents_per_sample, latents_per_sample, times.t_latents,
                                times.t_latents,    times.r_latents,    times.r_latents};
  const AttentionLayout decode{b.sample_neurons, latents_per_sample, times.t_queries,
                               times.t_latents,  times.r_queries,   times.r_latents};

  // 1. Tokens: unit identity + projected patch.
  Tensor unit = add(unit_emb_->forward(b.unit_index, ov), session_emb_->forward(b.neuron_session, ov));
  Tensor patches = b.x.reshape(Shape{N, L, P});
  Tensor tokens = add(unit.unsqueeze(1), input_proj_->forward(patches, ov)).reshape(Shape{N * L, D});
  // 2. Latents, one set per sample.
  Tensor lat = latent_emb_->table(ov).unsqueeze(0).expand(Shape{B, NL, D}).reshape(Shape{B * NL, D});
  // 3.-4. Perceiver-IO.
  lat = add(lat, enc_cross_->forward(lat, tokens, encode, inv_freq_, ov));
  lat = add(lat, enc_ffn_->forward(lat, ov, gen));
  for (size_t i = 0; i < proc_attn_.size(); ++i) {
    Tensor a = proc_attn_[i]->forward(lat, process, inv_freq_, ov);
    if (gen) a = dropout(a, c.dropout_lin, true, *gen);
    lat = add(lat, a);
    Tensor f = proc_ffn_[i]->forward(lat, ov, gen);
    if (gen) f = dropout(f, c.dropout_lin, true, *gen);
    lat = add(lat, f);
  }
  Tensor q = add(unit, dec_cross_->forward(unit, lat, decode, inv_freq_, ov));
  Tensor e = add(q, dec_ffn_->forward(q, ov, gen));  // (N, D)
  // 5. FiLM head: out(h * alpha + beta) = out(h * alpha) + W_out beta. The shift goes through the
  // output layer first, W_out (W_beta e + b_beta) = (W_out W_beta) e + W_out b_beta: a
  // (pred_length, D) product per neuron instead of (H, D) then (pred_length, H), and no
  // (N, H) beta tensor. The same function and parameters (rounding aside); about a fifth of the
  // model's forward FLOPs at poco-paper's sizes, and of its backward's.
  Tensor alpha = head_alpha_->forward(e, ov);
  Tensor h = head_input(b, ov);                                             // (N, H)
  auto [w_shift, b_shift] = head_shift(b, ov);                              // (P, D), (P)
  return add(head_out_->forward(mul(h, alpha), ov), linear(e, w_shift, b_shift));  // (N, P)
}

namespace {
// The cache keys of PocoReuse: the same tensor at the same storage version, with the same
// requires_grad.
PocoReuse::Key reuse_key(const Tensor& t) {
  return PocoReuse::Key{t, t.defined() ? t.storage().version() : 0u,
                        t.defined() && t.requires_grad()};
}
bool reuse_same(const PocoReuse::Key& k, const Tensor& t) {
  return k.tensor.impl() == t.impl() &&
         (!t.defined() ||
          (k.version == t.storage().version() && k.requires_grad == t.requires_grad()));
}
}  // namespace

std::pair<Tensor, Tensor> Poco::head_shift(const PocoBatch& b, const nn::ParamMap* ov) const {
  const Tensor& w_out = head_out_->weight(ov);  // (P, H)
  const Tensor& w_beta = head_beta_->weight(ov);
  const Tensor b_beta = head_beta_->bias(ov);
  PocoReuse* r = b.reuse.get();
  if (r != nullptr && r->layout_only) r = nullptr;
  if (r != nullptr && r->w_shift.defined() && r->shift_grad_mode == GradMode::is_enabled() &&
      reuse_same(r->shift_w_out, w_out) && reuse_same(r->shift_w_beta, w_beta) &&
      reuse_same(r->shift_b_beta, b_beta))
    return {r->w_shift, r->b_shift};
  Tensor w_shift = matmul(w_out, w_beta);  // (P, D)
  Tensor b_shift = matmul(w_out, b_beta);  // (P)
  if (r != nullptr) {
    r->shift_w_out = reuse_key(w_out);
    r->shift_w_beta = reuse_key(w_beta);
    r->shift_b_beta = reuse_key(b_beta);
    r->shift_grad_mode = GradMode::is_enabled();
    r->w_shift = w_shift;
    r->b_shift = b_shift;
  }
  return {w_shift, b_shift};
}

Tensor Poco::head_input(const PocoBatch& b, const nn::ParamMap* ov) const {
  const Tensor& w = head_in_->weight(ov);
  const Tensor bias = head_in_->bias(ov);
  PocoReuse* r = b.reuse.get();
  if (r != nullptr && r->layout_only) r = nullptr;
  if (r != nullptr && r->head_h.defined() && r->head_grad_mode == GradMode::is_enabled() &&
      reuse_same(r->head_x, b.x) && reuse_same(r->head_w, w) && reuse_same(r->head_b, bias))
    return r->head_h;
  Tensor h = head_in_->forward(b.x, Activation::relu, ov);
  if (r != nullptr) {
    r->head_x = reuse_key(b.x);
    r->head_w = reuse_key(w);
    r->head_b = reuse_key(bias);
    r->head_grad_mode = GradMode::is_enabled();
    r->head_h = h;
  }
  return h;
}

PocoBatch PocoBatch::to(Device device) const {
  PocoBatch out = *this;
  bool moved = false;
  for (Tensor* t : {&out.x, &out.unit_index, &out.neuron_session, &out.target})
    if (t->defined() && t->device() != device) {
      *t = t->to(device);
      moved = true;
    }
  if (moved) out.reuse.reset();  // what it holds was computed from the tensors as they were
  return out;
}

}  // namespace mt::models
