// engine/io/checkpoint: saving a module's parameters with JSON metadata, strict loads that list
// every mismatch, partial loads with their report, and in-place copies into the parameters.
#include <cstring>

#include <catch2/catch.hpp>

#include "engine/autograd/grad_mode.h"
#include "engine/core/generator.h"
#include "engine/io/checkpoint.h"
#include "support/temp_dir.h"
#include "support/golden_file.h"

using namespace mt;
using namespace mt::io;
using Catch::Contains;
using mt::testing::TempDir;

namespace {

// Two layers with an embedding-like table whose row count varies between sessions.
class Net : public nn::Module {
 public:
  Net(Generator& gen, int64_t rows, int64_t hidden, DType dtype = DType::f32) {
    table_ = register_parameter("table", normal(Shape{rows, 4}, 0, 1, gen, dtype));
    fc1_ = register_module("fc1", std::make_shared<nn::Linear>(4, hidden, true, gen, dtype));
    fc2_ = register_module("fc2", std::make_shared<nn::Linear>(hidden, 2, true, gen, dtype));
  }

 private:
  Tensor table_;
  std::shared_ptr<nn::Linear> fc1_, fc2_;
};

bool same_bits(const Tensor& a, const Tensor& b) {
  if (!(a.shape() == b.shape()) || a.dtype() != b.dtype()) return false;
  const Tensor ca = a.contiguous(), cb = b.contiguous();
  return std::memcmp(ca.raw_data(), cb.raw_data(), size_t(ca.numel()) * itemsize(ca.dtype())) == 0;
}

void scramble(nn::Module& m) {
  NoGradGuard no_grad;
  for (auto& [name, p] : m.named_parameters()) p.fill_(-7.0);
}

}  // namespace

TEST_CASE("checkpoint round trip: strict load restores every parameter in place", "[io]") {
  TempDir dir("test_io_checkpoint");
  const std::string path = dir.file("net.safetensors");
  Generator gen(1);
  Net net(gen, 5, 8);
  std::vector<Tensor> saved;
  for (auto& [name, p] : net.named_parameters()) saved.push_back(p.clone());
  const nlohmann::json metadata = {
      {"model", "Net"}, {"step", 1200}, {"lr", 3e-4}, {"sessions", {"a", "b"}}};
  save_checkpoint(path, net, metadata);
  CHECK(read_checkpoint_metadata(path) == metadata);

  // The file is a plain safetensors file with the parameters in registration order.
  const SafetensorsContents raw = load_safetensors(path);
  std::vector<std::string> names;
  for (const auto& [n, t] : raw.tensors) names.push_back(n);
  CHECK(names ==
        std::vector<std::string>{"table", "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"});
  CHECK(raw.metadata.at("format") == "pt");

  const Tensor held = net.named_parameters()[1].second;  // e.g. an optimizer's handle
  const uint32_t version = held.storage().version();
  scramble(net);
  const LoadReport report = load_parameters(net, path);  // strict by default
  CHECK(report.loaded == names);
  CHECK(report.skipped.empty());
  CHECK(report.missing.empty());
  CHECK(report.metadata == metadata);
  const auto params = net.named_parameters();
  for (size_t i = 0; i < params.size(); ++i) {
    INFO(params[i].first);
    CHECK(same_bits(params[i].second, saved[i]));
    CHECK(params[i].second.requires_grad());
  }
  CHECK(same_bits(held, saved[1]));  // same storage, written in place
  CHECK(held.storage().version() > version);

  // A ParamMap works the same way, in both directions.
  const std::string map_path = dir.file("map.safetensors");
  save_checkpoint(map_path, net.parameter_map());
  scramble(net);
  const LoadReport from_map = load_parameters(net.parameter_map(), map_path, LoadMode::strict);
  CHECK(from_map.loaded.size() == 5);
  CHECK(from_map.metadata == nlohmann::json::object());
  for (size_t i = 0; i < params.size(); ++i) CHECK(same_bits(params[i].second, saved[i]));
}

TEST_CASE("strict load lists every mismatch and loads nothing", "[io]") {
  TempDir dir("test_io_checkpoint");
  const std::string path = dir.file("ckpt.safetensors");
  save_checkpoint(path,
                  NamedTensors{{"a", zeros(Shape{3, 4})},
                               {"b", zeros(Shape{4})},
                               {"c", zeros(Shape{2})},
                               {"e", full(Shape{2}, 5.0)}},
                  {{"note", "mismatch"}});
  const NamedTensors model = {{"a", ones(Shape{3, 4}, DType::f64)},  // dtype differs
                              {"b", ones(Shape{5})},                 // shape differs
                              {"d", ones(Shape{1})},                 // not in the file
                              {"e", ones(Shape{2})}};                // matches
  REQUIRE_THROWS_WITH(
      load_parameters(model, path, LoadMode::strict),
      Contains(path) && Contains("4 problems, nothing was loaded") &&
          Contains("parameter 'a' has dtype f32 in the file but f64 in the model") &&
          Contains("parameter 'b' has shape (4,) in the file but (5,) in the model") &&
          Contains("parameter 'd' (f32 (1,)) is not in the file") &&
          Contains("the file's tensor 'c' (f32 (2,)) is not a parameter of the model") &&
          Contains("LoadMode::partial"));
  for (const auto& [name, t] : model) {
    INFO(name);
    for (double v : t.to_vector<double>()) CHECK(v == 1.0);  // untouched, 'e' included
  }

  Generator gen(3);
  Net small(gen, 5, 8), big(gen, 5, 16);
  save_checkpoint(path, small);
  REQUIRE_THROWS_WITH(load_parameters(big, path), Contains("3 problems") &&
                                                      Contains("'fc1.weight' has shape (8, 4)") &&
                                                      Contains("'fc1.bias' has shape (8,)") &&
                                                      Contains("'fc2.weight' has shape (2, 8)"));
  REQUIRE_THROWS_WITH(load_parameters(big, dir.file("absent.safetensors")),
                      Contains("absent.safetensors") && Contains("does not exist"));
}

TEST_CASE("partial load copies matching tensors and reports the rest", "[io]") {
  TempDir dir("test_io_checkpoint");
  const std::string path = dir.file("warm.safetensors");
  Generator gen(5);
  // A new session: the table has 7 rows instead of 5, and the file has an extra tensor.
  Net old_net(gen, 5, 8), new_net(gen, 7, 8);
  NamedTensors with_extra = old_net.named_parameters();
  with_extra.emplace_back("head.scale", ones(Shape{2}));
  save_checkpoint(path, with_extra, {{"session", "old"}});

  const Tensor table_before = new_net.named_parameters()[0].second.clone();
  const LoadReport report = load_parameters(new_net, path, LoadMode::partial);
  CHECK(report.loaded ==
        std::vector<std::string>{"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"});
  REQUIRE(report.skipped.size() == 2);
  CHECK(report.skipped[0].name == "table");
  CHECK(report.skipped[0].reason == "shape (5, 4) in the file, (7, 4) in the model");
  CHECK(report.skipped[1].name == "head.scale");
  CHECK(report.skipped[1].reason == "not a parameter of the model");
  CHECK(report.missing == std::vector<std::string>{"table"});
  CHECK(report.metadata.at("session") == "old");
  CHECK(report.summary() ==
        "loaded 4; skipped 2 (table: shape (5, 4) in the file, (7, 4) in the model; head.scale: "
        "not a parameter of the model); missing 1 (table)");

  const auto olds = old_net.named_parameters();
  const auto news = new_net.named_parameters();
  CHECK(same_bits(news[0].second, table_before));  // kept
  for (size_t i = 1; i < news.size(); ++i) CHECK(same_bits(news[i].second, olds[i].second));

  // Partial loads convert dtypes when names and shapes match; strict ones refuse.
  Net f64_net(gen, 5, 8, DType::f64);
  const LoadReport converted = load_parameters(f64_net, path, LoadMode::partial);
  CHECK(converted.loaded.size() == 5);
  CHECK(f64_net.named_parameters()[1].second.dtype() == DType::f64);
  CHECK(f64_net.named_parameters()[1].second.to_vector<double>() ==
        olds[1].second.to_vector<double>());

  // A safetensors file without checkpoint metadata (written by Python) loads too.
  const std::string fixture = mt::testing::golden_path("optim_io_fixture.safetensors");
  const nn::ParamMap map = {{"layer.0.weight", zeros(Shape{3, 2})}, {"other", zeros(Shape{1})}};
  const LoadReport py = load_parameters(map, fixture, LoadMode::partial);
  CHECK(py.loaded == std::vector<std::string>{"layer.0.weight"});
  CHECK(py.missing == std::vector<std::string>{"other"});
  CHECK(py.skipped.size() == 7);
  CHECK(py.metadata.is_null());
  CHECK(map.at("layer.0.weight").to_vector<double>() ==
        std::vector<double>{0, 0.25, 0.5, 0.75, 1.0, 1.25});
}
