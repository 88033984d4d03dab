// The POCO population forecaster (models/POCO.md is the exact definition): a Perceiver-IO
// encoder over one token per neuron and time patch, conditioning a per-neuron MLP through FiLM.
// Every forward takes an optional ParamMap so meta-learning can substitute fast weights.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "engine/core/generator.h"
#include "engine/nn/module.h"

namespace mt::models {

struct PocoConfig {
  int64_t dim = 128;
  int64_t dim_head = 64;
  int64_t cross_heads = 1;
  int64_t self_heads = 16;
  int64_t num_latents = 8;
  int64_t depth = 1;
  int64_t seq_length = 64;
  int64_t pred_length = 16;
  int64_t patch = 16;
  int64_t conditioning_dim = 1024;
  double rotary_t_max = 100.0;
  double dropout_ffn = 0.2;
  double dropout_lin = 0.4;
  double emb_init_std = 0.02;

  int64_t context() const { return seq_length - pred_length; }  // Tin
  int64_t patches() const { return context() / patch; }          // L
  void validate() const;  // throws naming the field and the fix

  // JSON with the field names above; unknown keys are errors naming the key and the known ones.
  nlohmann::json to_json() const;
  // Keys not given keep the values of `defaults` (poco-paper when omitted).
  static PocoConfig from_json(const nlohmann::json& j);
  static PocoConfig from_json(const nlohmann::json& j, const PocoConfig& defaults);

  static PocoConfig paper();  // "poco-paper"
  static PocoConfig seed();   // "poco-seed"
  static PocoConfig named(const std::string& name);
};

class Poco;

// What a forward computes from one batch that stays the same while only the embeddings change:
// the rotary times and tables of the attention layout, the FiLM head's input layer
// relu(W_in x + b_in) (an (N, conditioning_dim) tensor) and its shift through the output layer
// (W_out W_beta, W_out b_beta). An inner loop that runs the model several times on one
// support batch gives that batch a PocoReuse (meta/maml.cpp), and POCO computes these once.
// The head input is reused only while x, W_in and b_in are the same tensors at the same storage
// version, with the same requires_grad and grad mode (the shift: W_out, W_beta and b_beta);
// otherwise it is recomputed and replaces the entry. A reused entry is one graph node shared by
// every forward that reads it: their backward passes must keep the graph (create_graph or
// retain_graph) until the last one, as the inner loops do. A checkpointed region must not keep
// the weight-dependent entries (they would hold the region's intermediates alive and take the
// gradient of W_in, W_out, ... past the region's inputs): its batches carry a PocoReuse with
// `layout_only`, which keeps the times and tables (constants) and nothing else. One PocoReuse
// serves one model.
struct PocoReuse {
  bool layout_only = false;  // keep the rotary times and tables only (checkpointed regions)
  const Poco* model = nullptr;
  Tensor t_tokens, t_latents, t_queries;  // rotary times of tokens, latents, output queries
  RotaryTables r_tokens, r_latents, r_queries;  // their rotary tables (the model's dtype)
  struct Key {
    Tensor tensor;
    uint32_t version = 0;
    bool requires_grad = false;
  };
  Key head_x, head_w, head_b;
  bool head_grad_mode = false;
  Tensor head_h;  // relu(W_in x + b_in), (N, conditioning_dim)
  // The FiLM shift through the output layer, W_out W_beta (pred_length, dim) and W_out b_beta
  // (pred_length): a property of the weights alone, kept under the same rules while W_out,
  // W_beta and b_beta stay the same tensors (the inner loops adapt embeddings).
  Key shift_w_out, shift_w_beta, shift_b_beta;
  bool shift_grad_mode = false;
  Tensor w_shift, b_shift;
};

// One batch: B samples, sample b from session sample_sessions[b] with sample_neurons[b] neurons;
// all neurons of all samples concatenated (sum_b N_b rows).
struct PocoBatch {
  Tensor x;               // (sum N, Tin) context of each neuron
  Tensor unit_index;      // (sum N) i64, row of unit_emb
  Tensor neuron_session;  // (sum N) i64, session of each neuron's sample
  std::vector<int64_t> sample_neurons;   // (B)
  std::vector<int64_t> sample_sessions;  // (B)
  Tensor target;          // (sum N, pred_length), may be undefined
  // Set by a caller that runs the model repeatedly on this batch (see PocoReuse); copies of the
  // batch share it. Null: nothing is kept between forwards.
  std::shared_ptr<PocoReuse> reuse;
  int64_t total_neurons() const { return x.size(0); }
  Device device() const { return x.device(); }
  // A copy with every tensor on `device` (the same tensors when already there); the lengths
  // stay on the host, where the model reads them.
  PocoBatch to(Device device) const;
};

// A module whose children are registered from outside (Perceiver stages, layer lists).
class Group : public nn::Module {
 public:
  using nn::Module::register_module;
};

class FeedForward : public nn::Module {
 public:
  FeedForward(int64_t dim, double dropout, Generator& gen, DType dtype);
  Tensor forward(const Tensor& x, const nn::ParamMap* ov, Generator* dropout_gen) const;

 private:
  double dropout_;
  std::shared_ptr<nn::LayerNorm> norm_;
  std::shared_ptr<nn::Linear> fc1_, fc2_;  // D -> 8D (value, gate), 4D -> D
};

// Attention inputs that depend on the batch layout, not on parameters.
struct AttentionLayout {
  std::vector<int64_t> q_lengths, k_lengths;
  Tensor q_times, k_times;
  RotaryTables q_tables, k_tables;  // rotary_tables of the times
};

class CrossAttention : public nn::Module {
 public:
  CrossAttention(int64_t dim, int64_t heads, int64_t dim_head, bool rotate_value, Generator& gen,
                 DType dtype);
  Tensor forward(const Tensor& xq, const Tensor& xc, const AttentionLayout& layout,
                 const Tensor& inv_freq, const nn::ParamMap* ov) const;

 private:
  int64_t heads_, dim_head_;
  bool rotate_value_;
  std::shared_ptr<nn::LayerNorm> norm_, norm_context_;
  std::shared_ptr<nn::Linear> q_proj_, kv_proj_, out_proj_;
};

class SelfAttention : public nn::Module {
 public:
  SelfAttention(int64_t dim, int64_t heads, int64_t dim_head, Generator& gen, DType dtype);
  Tensor forward(const Tensor& x, const AttentionLayout& layout, const Tensor& inv_freq,
                 const nn::ParamMap* ov) const;

 private:
  int64_t heads_, dim_head_;
  std::shared_ptr<nn::LayerNorm> norm_;
  std::shared_ptr<nn::Linear> qkv_proj_, out_proj_;
};

class Poco : public nn::Module {
 public:
  // session_sizes[s] = neurons of session s (rows of unit_emb are allocated per session).
  Poco(const PocoConfig& config, std::vector<int64_t> session_sizes, Generator& gen,
       DType dtype = DType::f32);

  // Predictions (sum N, pred_length). Dropout is applied when dropout_gen is given (training).
  Tensor forward(const PocoBatch& batch, const nn::ParamMap* ov = nullptr,
                 Generator* dropout_gen = nullptr) const;

  const PocoConfig& config() const { return config_; }
  const std::vector<int64_t>& session_sizes() const { return session_sizes_; }
  int64_t unit_offset(int64_t session) const;
  DType dtype() const { return dtype_; }
  // Parameters outside the three embedding tables.
  int64_t backbone_parameter_count() const;

 private:
  void check_batch(const PocoBatch& batch) const;
  // relu(W_in x + b_in), from batch.reuse when it holds it for the same tensors.
  Tensor head_input(const PocoBatch& batch, const nn::ParamMap* ov) const;
  // W_out W_beta and W_out b_beta (through the batch's PocoReuse when it has one).
  std::pair<Tensor, Tensor> head_shift(const PocoBatch& batch, const nn::ParamMap* ov) const;

  PocoConfig config_;
  std::vector<int64_t> session_sizes_, unit_offsets_;
  DType dtype_;
  Tensor inv_freq_;  // (dim_head/2) rotary frequencies: buffer "inv_freq", not a parameter
  std::shared_ptr<nn::Embedding> unit_emb_, session_emb_, latent_emb_;
  std::shared_ptr<nn::Linear> input_proj_;
  std::shared_ptr<CrossAttention> enc_cross_, dec_cross_;
  std::shared_ptr<FeedForward> enc_ffn_, dec_ffn_;
  std::vector<std::shared_ptr<SelfAttention>> proc_attn_;
  std::vector<std::shared_ptr<FeedForward>> proc_ffn_;
  std::shared_ptr<nn::Linear> head_in_, head_alpha_, head_beta_, head_out_;
};

}  // namespace mt::models
