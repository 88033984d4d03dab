#include "engine/io/checkpoint.h"

#include <map>

#include <fmt/ranges.h>

#include "engine/autograd/grad_mode.h"
#include "engine/core/error.h"

namespace mt::io {

namespace {

constexpr const char* kVersionKey = "metatape.checkpoint";
constexpr const char* kMetadataKey = "metatape.metadata";

nlohmann::json parse_metadata(const std::string& path,
                              const std::map<std::string, std::string>& metadata) {
  auto it = metadata.find(kMetadataKey);
  if (it == metadata.end()) return nullptr;
  try {
    return nlohmann::json::parse(it->second);
  } catch (const nlohmann::json::exception& e) {
    MT_FAIL(
        "checkpoint '{}': the metadata under \"{}\" is not valid JSON ({}); the file was "
        "edited or corrupted",
        path, kMetadataKey, e.what());
  }
}

std::string describe(const Tensor& t) {
  return fmt::format("{} {}", dtype_name(t.dtype()), t.shape().str());
}

NamedTensors to_named(const nn::ParamMap& params) {
  return {params.begin(), params.end()};
}

}  // namespace

std::string LoadReport::summary() const {
  std::vector<std::string> skip;
  for (const auto& s : skipped) skip.push_back(s.name + ": " + s.reason);
  return fmt::format("loaded {}; skipped {}{}{}{}; missing {}{}{}{}", loaded.size(), skipped.size(),
                     skip.empty() ? "" : " (", fmt::join(skip, "; "), skip.empty() ? "" : ")",
                     missing.size(), missing.empty() ? "" : " (", fmt::join(missing, ", "),
                     missing.empty() ? "" : ")");
}

void save_checkpoint(const std::string& path, const NamedTensors& params,
                     const nlohmann::json& metadata) {
  std::string text;
  try {
    text = metadata.dump();
  } catch (const nlohmann::json::exception& e) {
    MT_FAIL("save_checkpoint '{}': the metadata cannot be written as JSON ({})", path, e.what());
  }
  save_safetensors(path, params, {{"format", "pt"}, {kVersionKey, "1"}, {kMetadataKey, text}});
}

void save_checkpoint(const std::string& path, const nn::Module& module,
                     const nlohmann::json& metadata) {
  // Parameters on a device are written from CPU copies (a host read: a checkpoint is one).
  NoGradGuard no_grad;
  NamedTensors params = module.named_parameters();
  for (auto& [name, t] : params) t = t.to(kCPU);
  save_checkpoint(path, params, metadata);
}

void save_checkpoint(const std::string& path, const nn::ParamMap& params,
                     const nlohmann::json& metadata) {
  save_checkpoint(path, to_named(params), metadata);
}

LoadReport load_parameters(const NamedTensors& params, const std::string& path, LoadMode mode) {
  SafetensorsContents file = load_safetensors(path);
  LoadReport report;
  report.metadata = parse_metadata(path, file.metadata);

  std::map<std::string, const Tensor*> by_name;
  for (const auto& [name, t] : params) {
    MT_CHECK(t.defined(), "load_parameters '{}': parameter '{}' is an undefined tensor", path,
             name);
    MT_CHECK(by_name.emplace(name, &t).second,
             "load_parameters '{}': the parameter name '{}' is given twice", path, name);
  }
  std::map<std::string, const Tensor*> in_file;
  for (const auto& [name, t] : file.tensors) in_file.emplace(name, &t);

  // Pairs (parameter, file tensor) to copy, decided before anything is written.
  std::vector<std::pair<Tensor, const Tensor*>> copies;
  if (mode == LoadMode::strict) {
    std::vector<std::string> problems;
    for (const auto& [name, p] : params) {
      auto it = in_file.find(name);
      if (it == in_file.end()) {
        problems.push_back(
            fmt::format("parameter '{}' ({}) is not in the file", name, describe(p)));
        continue;
      }
      const Tensor& f = *it->second;
      if (!(f.shape() == p.shape()))
        problems.push_back(
            fmt::format("parameter '{}' has shape {} in the file but {} in the model", name,
                        f.shape().str(), p.shape().str()));
      if (f.dtype() != p.dtype())
        problems.push_back(
            fmt::format("parameter '{}' has dtype {} in the file but {} in the model", name,
                        dtype_name(f.dtype()), dtype_name(p.dtype())));
      copies.emplace_back(p, &f);
    }
    for (const auto& [name, f] : file.tensors) {
      if (!by_name.count(name))
        problems.push_back(fmt::format(
            "the file's tensor '{}' ({}) is not a parameter of the model", name, describe(f)));
    }
    if (!problems.empty()) {
      MT_FAIL(
          "load_parameters '{}' (strict): {} problem{}, nothing was loaded:\n  - {}\nfix the "
          "model or the file, or load with LoadMode::partial to copy only the tensors whose "
          "name and shape match",
          path, problems.size(), problems.size() == 1 ? "" : "s", fmt::join(problems, "\n  - "));
    }
    for (const auto& [name, p] : params) report.loaded.push_back(name);
  } else {
    std::map<std::string, bool> loaded;
    for (const auto& [name, f] : file.tensors) {
      auto it = by_name.find(name);
      if (it == by_name.end()) {
        report.skipped.push_back({name, "not a parameter of the model"});
        continue;
      }
      const Tensor& p = *it->second;
      if (!(f.shape() == p.shape())) {
        report.skipped.push_back({name, fmt::format("shape {} in the file, {} in the model",
                                                    f.shape().str(), p.shape().str())});
        continue;
      }
      copies.emplace_back(p, &f);
      loaded[name] = true;
    }
    for (const auto& [name, p] : params) {
      if (loaded.count(name))
        report.loaded.push_back(name);
      else
        report.missing.push_back(name);
    }
  }

  NoGradGuard no_grad;
  for (auto& [p, f] : copies) p.copy_(*f);
  return report;
}

LoadReport load_parameters(nn::Module& module, const std::string& path, LoadMode mode) {
  return load_parameters(module.named_parameters(), path, mode);
}

LoadReport load_parameters(const nn::ParamMap& params, const std::string& path, LoadMode mode) {
  return load_parameters(to_named(params), path, mode);
}

nlohmann::json read_checkpoint_metadata(const std::string& path) {
  return parse_metadata(path, read_safetensors_header(path).metadata);
}

}  // namespace mt::io
