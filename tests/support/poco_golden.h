// Shared by the POCO and meta-learning tests: the batches stored in the PyTorch golden file
// tests/golden/poco_tiny_v1.bin and e2e_ttt_tiny_v1.bin (written by
// tools/reference/poco_reference.py).
#pragma once

#include <string>
#include <vector>

#include "models/poco.h"
#include "support/golden_file.h"

namespace mt::testing {

// Float values of a golden tensor rounded to the integers they hold (indices, sizes).
std::vector<int64_t> as_indices(const GoldenTensor& t);

// The golden batch whose contexts are `x_name` and targets `target_name`, in f64, with the
// golden file's sample sizes, sessions and unit indices.
models::PocoBatch golden_batch(const GoldenFile& g, const std::string& x_name,
                               const std::string& target_name);

// A batch stored with its own layout under `prefix` (tests/golden/e2e_ttt_tiny_v1.bin):
// `<prefix>x_all`, `<prefix>targets`, `<prefix>sample_sizes`, `<prefix>sample_sessions` and
// `<prefix>unit_index`.
models::PocoBatch golden_batch_at(const GoldenFile& g, const std::string& prefix);

}  // namespace mt::testing
