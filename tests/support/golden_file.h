// Reader for the binary golden files written by tools/reference/golden_mlp.py.
//
// Format (version 1, little-endian), see tools/reference/README.md:
//   "MTGOLDEN" | u32 version | u32 n_tensors |
//   n_tensors x { u32 name_len | name | u8 dtype (1 = f64) | u32 rank |
//                 rank x i64 dims | prod(dims) x f64 values (row-major) } |
//   u64 FNV-1a-64 over every preceding byte
//
// This reader depends only on the standard library and fmt, so that golden
// data can be checked independently of the engine under test.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

namespace mt::testing {

// The repository root: the build passes METATAPE_SOURCE_DIR; the environment variable of the same
// name overrides it, for a test binary built on one machine and run from a copy of the tree on
// another (tools/gpu-check.sh --prebuilt).
inline std::string source_dir() {
  const char* env = std::getenv("METATAPE_SOURCE_DIR");
  return (env != nullptr && *env != '\0') ? std::string(env) : std::string(METATAPE_SOURCE_DIR);
}

// Path of a file in tests/golden/ of the source tree.
inline std::string golden_path(const std::string& name) {
  return source_dir() + "/tests/golden/" + name;
}

struct GoldenTensor {
  std::string name;
  std::vector<int64_t> shape;  // empty for a 0-d tensor
  std::vector<double> values;  // row-major, prod(shape) entries (1 for 0-d)
};

class GoldenFile {
 public:
  // Reads and validates the whole file. Throws std::runtime_error with a
  // message naming the file, the problem and how to fix it.
  static GoldenFile load(const std::string& path);

  // Throws std::runtime_error naming the missing tensor and the file.
  const GoldenTensor& at(const std::string& name) const;
  bool contains(const std::string& name) const;
  const std::vector<GoldenTensor>& tensors() const;
  const std::string& path() const;

 private:
  std::string path_;
  std::vector<GoldenTensor> tensors_;
};

// FNV-1a 64-bit hash as used for the golden file checksum.
uint64_t golden_fnv1a64(const unsigned char* data, size_t size);

}  // namespace mt::testing
