#include "golden_file.h"

#include <algorithm>
#include <array>
#include <bit>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <stdexcept>
#include <system_error>
#include <utility>

#include <fmt/format.h>

namespace mt::testing {

namespace {

constexpr std::array<unsigned char, 8> kMagic = {'M', 'T', 'G', 'O', 'L', 'D', 'E', 'N'};
constexpr uint32_t kVersion = 1;
constexpr uint8_t kDtypeFloat64 = 1;
constexpr size_t kHeaderBytes = 8 + 4 + 4;  // magic, version, n_tensors
constexpr size_t kChecksumBytes = 8;
constexpr uint64_t kFnvOffsetBasis = 0xcbf29ce484222325ULL;
constexpr uint64_t kFnvPrime = 0x100000001b3ULL;
constexpr const char* kRegenerate = "regenerate it with python3 tools/reference/golden_mlp.py";

static_assert(sizeof(double) == 8 && std::numeric_limits<double>::is_iec559,
              "golden files store IEEE-754 binary64 values");

// A problem with the file's contents; GoldenFile::load adds the file name and
// the regeneration hint when turning it into std::runtime_error.
struct FormatError {
  std::string what;
};

[[noreturn]] void raise(std::string what) {
  throw FormatError{std::move(what)};
}

std::string message(const std::string& path, const std::string& problem) {
  return fmt::format("golden file '{}': {}; {}", path, problem, kRegenerate);
}

// Bounds-checked little-endian cursor over the file body (checksum excluded).
class Cursor {
 public:
  Cursor(const unsigned char* data, size_t size) : data_(data), size_(size) {}

  size_t offset() const { return pos_; }
  size_t remaining() const { return size_ - pos_; }

  // `what` names the field being read, for truncation messages.
  void need(uint64_t n, const std::string& what) const {
    if (n > remaining()) {
      raise(
          fmt::format("truncated file: {} needs {} bytes at byte offset {} but only {} remain "
                      "before the trailing checksum",
                      what, n, pos_, remaining()));
    }
  }

  uint64_t read_uint(size_t n, const std::string& what) {
    need(n, what);
    uint64_t v = 0;
    for (size_t i = 0; i < n; ++i) v |= static_cast<uint64_t>(data_[pos_ + i]) << (8 * i);
    pos_ += n;
    return v;
  }
  uint8_t u8(const std::string& what) { return static_cast<uint8_t>(read_uint(1, what)); }
  uint32_t u32(const std::string& what) { return static_cast<uint32_t>(read_uint(4, what)); }
  int64_t i64(const std::string& what) { return static_cast<int64_t>(read_uint(8, what)); }
  double f64(const std::string& what) { return std::bit_cast<double>(read_uint(8, what)); }

  std::string bytes(size_t n, const std::string& what) {
    need(n, what);
    std::string s(reinterpret_cast<const char*>(data_ + pos_), n);
    pos_ += n;
    return s;
  }

 private:
  const unsigned char* data_;
  size_t size_;
  size_t pos_ = 0;
};

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// Parses everything after the version field. `cur` must be positioned at n_tensors.
std::vector<GoldenTensor> parse_tensors(Cursor& cur) {
  const uint32_t n_tensors = cur.u32("tensor count");
  std::vector<GoldenTensor> tensors;
  tensors.reserve(std::min<size_t>(n_tensors, 1024));
  for (uint32_t t = 0; t < n_tensors; ++t) {
    const std::string where = fmt::format("tensor {} of {}", t, n_tensors);
    GoldenTensor tensor;
    const uint32_t name_len = cur.u32(where + " name length");
    tensor.name = cur.bytes(name_len, where + " name");
    const std::string label = fmt::format("{} ('{}')", where, tensor.name);
    for (const auto& prev : tensors) {
      if (prev.name == tensor.name) raise(fmt::format("{}: duplicate tensor name", label));
    }
    const size_t dtype_offset = cur.offset();
    const uint8_t dtype = cur.u8(label + " dtype");
    if (dtype != kDtypeFloat64) {
      raise(
          fmt::format("{}: unknown dtype code {} at byte offset {} (only 1 = float64 is supported)",
                      label, dtype, dtype_offset));
    }
    const uint32_t rank = cur.u32(label + " rank");
    cur.need(static_cast<uint64_t>(rank) * 8, fmt::format("{} dims (rank {})", label, rank));
    uint64_t count = 1;
    bool overflow = false;
    for (uint32_t d = 0; d < rank; ++d) {
      const size_t dim_offset = cur.offset();
      const int64_t dim = cur.i64(label + " dim");
      if (dim < 0) {
        raise(fmt::format("{}: negative dimension {} on axis {} at byte offset {}", label, dim, d,
                          dim_offset));
      }
      tensor.shape.push_back(dim);
      const auto udim = static_cast<uint64_t>(dim);
      if (udim != 0 && count > std::numeric_limits<uint64_t>::max() / udim) overflow = true;
      count *= udim;
    }
    if (overflow || count > cur.remaining() / 8) {
      raise(
          fmt::format("truncated file or wrong dims: {} has shape {} ({} values) but only {} bytes "
                      "remain at byte offset {}",
                      label, shape_str(tensor.shape),
                      overflow ? std::string("overflowing count") : std::to_string(count),
                      cur.remaining(), cur.offset()));
    }
    tensor.values.resize(static_cast<size_t>(count));
    for (auto& v : tensor.values) v = cur.f64(label + " values");
    tensors.push_back(std::move(tensor));
  }
  if (cur.remaining() != 0) {
    raise(fmt::format("{} trailing bytes after the last tensor at byte offset {}", cur.remaining(),
                      cur.offset()));
  }
  return tensors;
}

}  // namespace

uint64_t golden_fnv1a64(const unsigned char* data, size_t size) {
  uint64_t h = kFnvOffsetBasis;
  for (size_t i = 0; i < size; ++i) {
    h ^= data[i];
    h *= kFnvPrime;
  }
  return h;
}

GoldenFile GoldenFile::load(const std::string& path) {
  std::error_code ec;
  const auto status = std::filesystem::status(path, ec);
  if (!std::filesystem::exists(status)) {
    throw std::runtime_error(message(path, "file does not exist"));
  }
  if (!std::filesystem::is_regular_file(status)) {
    throw std::runtime_error(message(path, "not a regular file"));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    throw std::runtime_error(message(path, "cannot open file for reading (check permissions)"));
  }
  const std::vector<unsigned char> data((std::istreambuf_iterator<char>(in)),
                                        std::istreambuf_iterator<char>());
  if (in.bad()) throw std::runtime_error(message(path, "I/O error while reading"));

  try {
    // Magic: a file shorter than the magic that matches its prefix is truncated.
    const size_t magic_len = std::min(data.size(), kMagic.size());
    if (!std::equal(data.begin(), data.begin() + static_cast<std::ptrdiff_t>(magic_len),
                    kMagic.begin())) {
      raise("bad magic: not a metatape golden file (expected it to start with 'MTGOLDEN')");
    }
    if (data.size() < kHeaderBytes + kChecksumBytes) {
      raise(
          fmt::format("truncated file: {} bytes is smaller than the {}-byte header plus the "
                      "{}-byte checksum",
                      data.size(), kHeaderBytes, kChecksumBytes));
    }

    const size_t body_size = data.size() - kChecksumBytes;
    Cursor cur(data.data(), body_size);
    cur.bytes(kMagic.size(), "magic");
    // Version comes first so that a file from a newer generator is reported as such.
    const uint32_t version = cur.u32("version");
    if (version != kVersion) {
      raise(
          fmt::format("unsupported version {} (this reader supports version {} only; update "
                      "tests/support/golden_file.cpp for newer formats)",
                      version, kVersion));
    }

    uint64_t stored = 0;
    for (size_t i = 0; i < kChecksumBytes; ++i) {
      stored |= static_cast<uint64_t>(data[body_size + i]) << (8 * i);
    }
    const uint64_t computed = golden_fnv1a64(data.data(), body_size);
    const bool checksum_ok = stored == computed;
    const std::string checksum_note =
        fmt::format("checksum mismatch (stored {:#018x}, computed {:#018x})", stored, computed);

    // The structure is parsed before the checksum is judged so that a
    // truncated file reports where it ends; any structural problem also says
    // whether the checksum agrees.
    GoldenFile file;
    file.path_ = path;
    try {
      file.tensors_ = parse_tensors(cur);
    } catch (const FormatError& e) {
      if (checksum_ok) throw;
      raise(fmt::format("{}; also {}: the file is corrupt", e.what, checksum_note));
    }
    if (!checksum_ok) raise(checksum_note + ": the file is corrupt");
    return file;
  } catch (const FormatError& e) {
    throw std::runtime_error(message(path, e.what));
  }
}

const GoldenTensor& GoldenFile::at(const std::string& name) const {
  for (const auto& t : tensors_) {
    if (t.name == name) return t;
  }
  throw std::runtime_error(message(
      path_, fmt::format("no tensor named '{}' ({} tensors present)", name, tensors_.size())));
}

bool GoldenFile::contains(const std::string& name) const {
  return std::any_of(tensors_.begin(), tensors_.end(),
                     [&](const GoldenTensor& t) { return t.name == name; });
}

const std::vector<GoldenTensor>& GoldenFile::tensors() const {
  return tensors_;
}

const std::string& GoldenFile::path() const {
  return path_;
}

}  // namespace mt::testing
