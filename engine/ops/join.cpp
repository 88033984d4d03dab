// cat, stack and split. cat copies each input into its window of the output; its backward
// narrows the gradient back into pieces. stack is unsqueeze + cat, split is a list of narrows.
#include <vector>

#include "engine/ops/elementwise.h"

namespace mt {

using autograd::Node;
using autograd::record_list;

Tensor cat(const TensorList& xs, int64_t dim) {
  MT_CHECK(!xs.empty(), "cat: no tensors given");
  const Tensor& first = xs[0];
  const int d = wrap_dim(dim, first.dim(), "cat");
  MT_CHECK(first.dim() > 0, "cat: cannot concatenate 0-d tensors; use stack");
  Shape shape = first.shape();
  shape[d] = 0;
  std::vector<int64_t> sizes;
  bool requires_grad = false;
  for (size_t i = 0; i < xs.size(); ++i) {
    const Tensor& x = xs[i];
    check_operands("cat", {&first, &x});
    MT_CHECK(x.dim() == first.dim(), "cat: tensor #{} has rank {} but tensor #0 has rank {}", i,
             x.dim(), first.dim());
    for (int k = 0; k < x.dim(); ++k)
      MT_CHECK(k == d || x.shape()[k] == first.shape()[k],
               "cat: tensor #{} has shape {} but tensor #0 has {}; only dim {} may differ", i,
               x.shape().str(), first.shape().str(), d);
    shape[d] += x.shape()[d];
    sizes.push_back(x.shape()[d]);
    requires_grad |= x.requires_grad();
  }
  Tensor out = empty(shape, first.dtype(), first.device());
  int64_t offset = 0;
  for (const Tensor& x : xs) {
    Tensor window = make_view(out, x.shape(), out.strides(), offset * out.strides()[d]);
    copy_into(x, window);
    offset += x.shape()[d];
  }
  if (requires_grad && GradMode::is_enabled()) {
    record_list("cat", out, xs, [sizes, d](const Node& n, const Tensor& g) -> TensorList {
      TensorList grads(sizes.size());
      int64_t start = 0;
      for (size_t i = 0; i < sizes.size(); ++i) {
        if (n.needs_input_grad(i)) grads[i] = narrow(g, d, start, sizes[i]);
        start += sizes[i];
      }
      return grads;
    });
  }
  return out;
}

Tensor stack(const TensorList& xs, int64_t dim) {
  MT_CHECK(!xs.empty(), "stack: no tensors given");
  const int d = wrap_dim(dim, xs[0].dim() + 1, "stack");
  TensorList expanded;
  expanded.reserve(xs.size());
  for (size_t i = 0; i < xs.size(); ++i) {
    MT_CHECK(xs[i].shape() == xs[0].shape(),
             "stack: tensor #{} has shape {} but tensor #0 has {}; all must match", i,
             xs[i].shape().str(), xs[0].shape().str());
    expanded.push_back(unsqueeze(xs[i], d));
  }
  return cat(expanded, d);
}

TensorList split(const Tensor& x, const std::vector<int64_t>& sizes, int64_t dim) {
  const int d = wrap_dim(dim, x.dim(), "split");
  int64_t total = 0;
  for (int64_t s : sizes) {
    MT_CHECK(s >= 0, "split: negative size {}", s);
    total += s;
  }
  MT_CHECK(total == x.shape()[d], "split: sizes add up to {} but dim {} has size {}", total, d,
           x.shape()[d]);
  TensorList parts;
  int64_t start = 0;
  for (int64_t s : sizes) {
    parts.push_back(narrow(x, d, start, s));
    start += s;
  }
  return parts;
}

TensorList split(const Tensor& x, int64_t chunk, int64_t dim) {
  const int d = wrap_dim(dim, x.dim(), "split");
  MT_CHECK(chunk > 0, "split: chunk size must be positive, got {}", chunk);
  std::vector<int64_t> sizes;
  for (int64_t left = x.shape()[d]; left > 0; left -= chunk) sizes.push_back(std::min(chunk, left));
  return split(x, sizes, d);
}

}  // namespace mt
