// Model checkpoints: a model's parameters in a safetensors file (engine/io/safetensors.h), under
// their dotted names, plus JSON metadata. The file is a plain safetensors file: PyTorch reads it
// with `safetensors.torch.load_file` (Linear weights have torch's layout), and a state dict saved
// from PyTorch with `save_file` loads here.
//
// Safetensors metadata is string -> string; a checkpoint stores
//   "format": "pt", "metatape.checkpoint": "1", "metatape.metadata": <the JSON metadata as text>.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/io/safetensors.h"
#include "engine/nn/module.h"

namespace mt::io {

enum class LoadMode {
  // Every parameter present with the same shape and dtype, and no tensor that is not a
  // parameter; otherwise nothing is loaded and the error lists every problem.
  strict,
  // Copies the tensors whose name and shape match (converting the dtype if it differs) and
  // reports the rest: warm starts, or sessions whose embedding tables have other sizes.
  partial,
};

struct SkippedTensor {
  std::string name;
  std::string reason;
};

struct LoadReport {
  std::vector<std::string> loaded;     // parameters copied from the file, in the model's order
  std::vector<SkippedTensor> skipped;  // tensors of the file left unused, in file order
  std::vector<std::string> missing;    // parameters left unchanged, in the model's order
  nlohmann::json metadata;             // the checkpoint's metadata (null if it has none)

  // One line per category, e.g. "loaded 4, skipped 1 (emb.weight: shape ...), missing 1 (...)".
  std::string summary() const;
};

// Writes the parameters in the given order (a module's registration order) with `metadata`,
// atomically (see save_safetensors).
void save_checkpoint(const std::string& path, const NamedTensors& params,
                     const nlohmann::json& metadata = nlohmann::json::object());
void save_checkpoint(const std::string& path, const nn::Module& module,
                     const nlohmann::json& metadata = nlohmann::json::object());
void save_checkpoint(const std::string& path, const nn::ParamMap& params,
                     const nlohmann::json& metadata = nlohmann::json::object());

// Copies the file's tensors into the existing parameter tensors, in place (Tensor::copy_ under a
// NoGradGuard), so modules, optimizers and anything else holding the parameters see the new
// values. Errors name the file.
LoadReport load_parameters(const NamedTensors& params, const std::string& path,
                           LoadMode mode = LoadMode::strict);
LoadReport load_parameters(nn::Module& module, const std::string& path,
                           LoadMode mode = LoadMode::strict);
LoadReport load_parameters(const nn::ParamMap& params, const std::string& path,
                           LoadMode mode = LoadMode::strict);

// The checkpoint's JSON metadata without reading the tensors (null if the file has none).
nlohmann::json read_checkpoint_metadata(const std::string& path);

}  // namespace mt::io
