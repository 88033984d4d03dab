#include "support/poco_golden.h"

#include <cmath>

#include <fmt/format.h>

namespace mt::testing {

std::vector<int64_t> as_indices(const GoldenTensor& t) {
  std::vector<int64_t> v;
  for (double x : t.values) v.push_back(int64_t(std::llround(x)));
  return v;
}

namespace {
models::PocoBatch make_batch(const GoldenFile& g, const std::string& x_name,
                             const std::string& target_name, const std::string& layout_prefix) {
  models::PocoBatch b;
  b.sample_neurons = as_indices(g.at(fmt::format("{}sample_sizes", layout_prefix)));
  b.sample_sessions = as_indices(g.at(fmt::format("{}sample_sessions", layout_prefix)));
  const GoldenTensor& x = g.at(x_name);
  b.x = from_vector(x.values, Shape(x.shape), DType::f64);
  b.unit_index = from_indices(as_indices(g.at(fmt::format("{}unit_index", layout_prefix))), Shape{b.x.size(0)});
  std::vector<int64_t> owner;
  for (size_t s = 0; s < b.sample_neurons.size(); ++s)
    for (int64_t n = 0; n < b.sample_neurons[s]; ++n) owner.push_back(b.sample_sessions[s]);
  b.neuron_session = from_indices(owner, Shape{int64_t(owner.size())});
  const GoldenTensor& t = g.at(target_name);
  b.target = from_vector(t.values, Shape(t.shape), DType::f64);
  return b;
}
}  // namespace

models::PocoBatch golden_batch(const GoldenFile& g, const std::string& x_name,
                               const std::string& target_name) {
  return make_batch(g, x_name, target_name, "");
}

models::PocoBatch golden_batch_at(const GoldenFile& g, const std::string& prefix) {
  return make_batch(g, fmt::format("{}x_all", prefix), fmt::format("{}targets", prefix), prefix);
}

}  // namespace mt::testing
