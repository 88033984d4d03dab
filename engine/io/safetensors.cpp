#include "engine/io/safetensors.h"
#include "engine/io/temp_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <limits>
#include <set>
#include <system_error>

#include <fmt/ranges.h>
#include <nlohmann/json.hpp>
#include <sys/stat.h>
#include <zlib.h>

#include "engine/autograd/grad_mode.h"
#include "engine/core/error.h"

namespace mt::io {

static_assert(std::endian::native == std::endian::little,
              "safetensors stores little-endian data; this reader copies bytes as they are");

namespace {

// ordered_json keeps the header's key order, so a file is written in the order it was given.
using Json = nlohmann::ordered_json;

constexpr const char* kMetadataKey = "__metadata__";
// The metadata entry that carries the CRC-32 of the byte buffer (written by save_safetensors,
// checked and removed from the metadata by the readers).
constexpr const char* kChecksumKey = "metatape.crc32";

// CRC-32 (zlib's) of n bytes, continuing `crc`.
uint32_t crc32_of(uint32_t crc, const void* data, uint64_t n) {
  return uint32_t(crc32_z(crc, static_cast<const Bytef*>(data), size_t(n)));
}

// The data checksum: CRC-32 of every tensor's bytes, taken in name order (byte-wise, as Python
// sorts ASCII names), so that a writer that lays the tensors out in another order (safetensors'
// save_file sorts them) keeps it valid. `order` gives the tensors' positions in `tensors`.
uint32_t crc32_in_order(const std::vector<std::pair<std::string, Tensor>>& tensors,
                        const std::vector<size_t>& order) {
  uint32_t crc = uint32_t(crc32_z(0, Z_NULL, 0));
  for (const size_t i : order) {
    const Tensor& t = tensors[i].second;
    crc = crc32_of(crc, t.raw_data(), uint64_t(t.numel()) * itemsize(t.dtype()));
  }
  return crc;
}
std::vector<size_t> name_order(const std::vector<std::pair<std::string, Tensor>>& tensors) {
  std::vector<size_t> order(tensors.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(),
            [&](size_t a, size_t b) { return tensors[a].first < tensors[b].first; });
  return order;
}
constexpr const char* kReexport =
    "the file is corrupt or was not written by a safetensors writer; re-export it (in Python: "
    "safetensors.torch.save_file)";

// Throws mt::Error "safetensors file '<path>': <message>" (a macro, so the error's source
// location is the check that fired).
#define MT_FAIL_FILE(path, ...) MT_FAIL("safetensors file '{}': {}", path, fmt::format(__VA_ARGS__))

std::string errno_text(int err) {
  return std::generic_category().message(err);
}

// A file descriptor closed on scope exit.
class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  // Closes now and returns close()'s result (a deferred write error shows up here).
  int close() {
    int r = ::close(fd_);
    fd_ = -1;
    return r;
  }

 private:
  int fd_;
};

// Reads exactly n bytes at `offset`; returns false at end of file.
bool read_at(int fd, void* data, uint64_t n, uint64_t offset) {
  auto* p = static_cast<char*>(data);
  while (n > 0) {
    const size_t chunk = size_t(std::min<uint64_t>(n, uint64_t(1) << 30));
    ssize_t r = ::pread(fd, p, chunk, off_t(offset));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    p += r;
    n -= uint64_t(r);
    offset += uint64_t(r);
  }
  return true;
}

// Writes all n bytes; returns errno on failure, 0 on success.
int write_all(int fd, const void* data, uint64_t n) {
  const auto* p = static_cast<const char*>(data);
  while (n > 0) {
    const size_t chunk = size_t(std::min<uint64_t>(n, uint64_t(1) << 30));
    ssize_t w = ::write(fd, p, chunk);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) return errno;
    p += w;
    n -= uint64_t(w);
  }
  return 0;
}

bool parse_dtype(const std::string& s, DType& out) {
  for (DType d : {DType::f32, DType::f64, DType::f16, DType::bf16, DType::i64}) {
    if (s == safetensors_dtype_name(d)) {
      out = d;
      return true;
    }
  }
  return false;
}

std::string json_kind(const Json& j) {
  if (j.is_null()) return "null";
  if (j.is_boolean()) return "a boolean";
  if (j.is_number()) return fmt::format("the number {}", j.dump());
  if (j.is_string()) return fmt::format("the string {}", j.dump());
  if (j.is_array()) return "an array";
  return "an object";
}

// A non-negative integer that fits in int64 (shapes) or uint64 (offsets).
bool as_count(const Json& j, uint64_t& out) {
  if (!j.is_number_unsigned()) {
    if (j.is_number_integer() && j.get<int64_t>() >= 0) {
      out = uint64_t(j.get<int64_t>());
      return true;
    }
    return false;
  }
  out = j.get<uint64_t>();
  return true;
}

SafetensorsEntry parse_entry(const std::string& path, const std::string& name, const Json& v,
                             uint64_t buffer_size) {
  SafetensorsEntry e;
  e.name = name;
  if (!v.is_object()) {
    MT_FAIL_FILE(
        path,
        "the header entry of tensor '{}' is {}, not an object with \"dtype\", \"shape\" and "
        "\"data_offsets\"; {}",
        name, json_kind(v), kReexport);
  }
  for (const char* key : {"dtype", "shape", "data_offsets"}) {
    if (!v.contains(key)) {
      MT_FAIL_FILE(path, "the header entry of tensor '{}' has no \"{}\" field; {}", name, key,
                   kReexport);
    }
  }
  const Json& dtype = v["dtype"];
  if (!dtype.is_string()) {
    MT_FAIL_FILE(path, "tensor '{}' has dtype {}; dtypes are strings such as \"F32\"; {}", name,
                 json_kind(dtype), kReexport);
  }
  if (!parse_dtype(dtype.get<std::string>(), e.dtype)) {
    MT_FAIL_FILE(
        path,
        "tensor '{}' has unknown or unsupported dtype \"{}\" (metatape reads F32, F64, F16, "
        "BF16 and I64); convert the tensor before saving it, e.g. in Python "
        "t.to(torch.float32) or t.to(torch.int64)",
        name, dtype.get<std::string>());
  }
  const Json& shape = v["shape"];
  if (!shape.is_array()) {
    MT_FAIL_FILE(path, "tensor '{}' has shape {}, not an array of sizes; {}", name,
                 json_kind(shape), kReexport);
  }
  if (shape.size() > size_t(kMaxDims)) {
    MT_FAIL_FILE(path,
                 "tensor '{}' has rank {}, more than the engine's maximum of {} dims; reshape "
                 "it before saving",
                 name, shape.size(), kMaxDims);
  }
  uint64_t numel = 1;
  bool overflow = false;
  for (const Json& d : shape) {
    uint64_t n = 0;
    if (!as_count(d, n) || n > uint64_t(std::numeric_limits<int64_t>::max())) {
      MT_FAIL_FILE(path,
                   "tensor '{}' has shape {} with the size {}; sizes are non-negative "
                   "integers; {}",
                   name, shape.dump(), json_kind(d), kReexport);
    }
    e.shape.push_back(int64_t(n));
    overflow |= __builtin_mul_overflow(numel, n, &numel);
  }
  const Json& offsets = v["data_offsets"];
  uint64_t begin = 0, end = 0;
  if (!offsets.is_array() || offsets.size() != 2 || !as_count(offsets[0], begin) ||
      !as_count(offsets[1], end)) {
    MT_FAIL_FILE(path,
                 "tensor '{}' has data_offsets {}; they must be [begin, end], two "
                 "non-negative byte offsets; {}",
                 name, offsets.dump(), kReexport);
  }
  if (begin > end) {
    MT_FAIL_FILE(path, "tensor '{}' has data_offsets [{}, {}] whose end is before its begin; {}",
                 name, begin, end, kReexport);
  }
  uint64_t nbytes = 0;
  overflow |= __builtin_mul_overflow(numel, uint64_t(itemsize(e.dtype)), &nbytes);
  if (overflow || nbytes != end - begin) {
    MT_FAIL_FILE(path,
                 "tensor '{}' has dtype {} and shape {} ({} bytes) but its data_offsets [{}, {}] "
                 "span {} bytes (shape x itemsize must equal the span); {}",
                 name, dtype.get<std::string>(), shape.dump(),
                 overflow ? std::string("an overflowing number of") : std::to_string(nbytes), begin,
                 end, end - begin, kReexport);
  }
  if (end > buffer_size) {
    MT_FAIL_FILE(
        path,
        "tensor '{}' has data_offsets [{}, {}], past the end of the {}-byte data buffer; the "
        "file is truncated (copy or download it again) or its header is wrong",
        name, begin, end, buffer_size);
  }
  e.begin = begin;
  e.end = end;
  return e;
}

SafetensorsHeader parse_header(const std::string& path, int fd, uint64_t file_size) {
  if (file_size < 8) {
    MT_FAIL_FILE(
        path,
        "the file is {} bytes long, shorter than the 8-byte header length that starts every "
        "safetensors file; it is truncated (copy or download it again) or not a safetensors "
        "file",
        file_size);
  }
  unsigned char len_bytes[8];
  if (!read_at(fd, len_bytes, 8, 0)) MT_FAIL_FILE(path, "could not read the header length");
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= uint64_t(len_bytes[i]) << (8 * i);
  if (n > file_size - 8) {
    MT_FAIL_FILE(path,
                 "the header length field says {} bytes but only {} bytes follow it; the file is "
                 "truncated (copy or download it again) or not a safetensors file",
                 n, file_size - 8);
  }
  std::string text(size_t(n), '\0');
  if (!read_at(fd, text.data(), n, 8)) MT_FAIL_FILE(path, "could not read the {}-byte header", n);

  // Duplicate keys are legal JSON but make a tensor name ambiguous: the parser callback sees
  // every key, one set of keys per open object.
  std::vector<std::set<std::string>> open_objects;
  std::vector<std::string> duplicates;
  auto on_event = [&](int, Json::parse_event_t event, Json& parsed) {
    switch (event) {
      case Json::parse_event_t::object_start:
        open_objects.emplace_back();
        break;
      case Json::parse_event_t::object_end:
        open_objects.pop_back();
        break;
      case Json::parse_event_t::key:
        if (!open_objects.back().insert(parsed.get<std::string>()).second)
          duplicates.push_back(parsed.get<std::string>());
        break;
      default:
        break;
    }
    return true;
  };
  Json header;
  try {
    header = Json::parse(text, on_event);
  } catch (const Json::exception& e) {
    MT_FAIL_FILE(path, "the {}-byte header is not valid JSON ({}); {}", n, e.what(), kReexport);
  }
  if (!header.is_object()) {
    MT_FAIL_FILE(path, "the header is {}, not a JSON object mapping tensor names to entries; {}",
                 json_kind(header), kReexport);
  }
  if (!duplicates.empty()) {
    MT_FAIL_FILE(path, "the header names '{}' more than once; tensor names must be unique; {}",
                 fmt::join(duplicates, "', '"), kReexport);
  }

  SafetensorsHeader h;
  h.buffer_offset = 8 + n;
  const uint64_t buffer_size = file_size - h.buffer_offset;
  for (const auto& [key, value] : header.items()) {
    if (key == kMetadataKey) {
      if (value.is_null()) continue;  // written by some tools for "no metadata"
      if (!value.is_object()) {
        MT_FAIL_FILE(path, "\"__metadata__\" is {}, not an object of strings; {}", json_kind(value),
                     kReexport);
      }
      for (const auto& [mk, mv] : value.items()) {
        if (!mv.is_string()) {
          MT_FAIL_FILE(path,
                       "metadata key '{}' holds {}; safetensors metadata values must be strings "
                       "(store numbers and structures as JSON text)",
                       mk, json_kind(mv));
        }
        if (mk == kChecksumKey) {
          const std::string text = mv.get<std::string>();
          char* end = nullptr;
          const unsigned long v = std::strtoul(text.c_str(), &end, 16);
          if (text.size() != 8 || end != text.c_str() + 8 || v > 0xffffffffUL) {
            MT_FAIL_FILE(path, "metadata '{}' is '{}', not 8 hex digits; the header is corrupt "
                         "(restore the file from a good copy)", kChecksumKey, text);
          }
          h.data_crc32 = uint32_t(v);
          h.has_data_crc32 = true;
          continue;
        }
        h.metadata.emplace(mk, mv.get<std::string>());
      }
      continue;
    }
    h.entries.push_back(parse_entry(path, key, value, buffer_size));
  }

  // File order is the order of the data in the buffer (empty tensors may share an offset; they
  // keep their header order). The tensors must cover the buffer exactly, as the reference
  // implementation requires (no gaps that could hide other content, no overlaps).
  std::stable_sort(h.entries.begin(), h.entries.end(),
                   [](const SafetensorsEntry& a, const SafetensorsEntry& b) {
                     return a.begin < b.begin || (a.begin == b.begin && a.end < b.end);
                   });
  uint64_t pos = 0;
  const SafetensorsEntry* prev = nullptr;
  for (const SafetensorsEntry& e : h.entries) {
    if (e.begin < pos) {
      MT_FAIL_FILE(path, "tensors '{}' (bytes [{}, {})) and '{}' (bytes [{}, {})) overlap; {}",
                   prev->name, prev->begin, prev->end, e.name, e.begin, e.end, kReexport);
    }
    if (e.begin > pos) {
      MT_FAIL_FILE(
          path,
          "bytes [{}, {}) of the data buffer, before tensor '{}', belong to no tensor; the "
          "format requires the tensors to cover the buffer without gaps; {}",
          pos, e.begin, e.name, kReexport);
    }
    pos = e.end;
    prev = &e;
  }
  if (pos != buffer_size) {
    MT_FAIL_FILE(path,
                 "{} bytes of trailing data follow the last tensor (the tensors end at buffer byte "
                 "{} of {}); the file has trailing garbage, e.g. from an interrupted copy or an "
                 "append; {}",
                 buffer_size - pos, pos, buffer_size, kReexport);
  }
  return h;
}

// Opens `path` for reading and returns its size; errors name the file.
int open_for_reading(const std::string& path, uint64_t& size) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    if (err == ENOENT) {
      MT_FAIL_FILE(path,
                   "the file does not exist; check the path (relative paths start at the "
                   "working directory '{}')",
                   std::filesystem::current_path().string());
    }
    MT_FAIL_FILE(path, "cannot open the file: {}", errno_text(err));
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    MT_FAIL_FILE(path, "not a regular file; pass the path of a .safetensors file");
  }
  size = uint64_t(st.st_size);
  return fd;
}

}  // namespace

const char* safetensors_dtype_name(DType dtype) {
  switch (dtype) {
    case DType::f32:
      return "F32";
    case DType::f64:
      return "F64";
    case DType::f16:
      return "F16";
    case DType::bf16:
      return "BF16";
    case DType::i64:
      return "I64";
  }
  return "?";
}

const Tensor* SafetensorsContents::find(const std::string& name) const {
  for (const auto& [n, t] : tensors)
    if (n == name) return &t;
  return nullptr;
}

SafetensorsHeader read_safetensors_header(const std::string& path) {
  uint64_t size = 0;
  Fd fd(open_for_reading(path, size));
  return parse_header(path, fd.get(), size);
}

SafetensorsContents load_safetensors(const std::string& path) {
  uint64_t size = 0;
  Fd fd(open_for_reading(path, size));
  SafetensorsHeader h = parse_header(path, fd.get(), size);
  SafetensorsContents out;
  out.metadata = std::move(h.metadata);
  out.tensors.reserve(h.entries.size());
  for (const SafetensorsEntry& e : h.entries) {  // file order: the buffer from start to end
    Tensor t = empty(e.shape, e.dtype);
    if (!read_at(fd.get(), t.raw_data(), e.end - e.begin, h.buffer_offset + e.begin)) {
      MT_FAIL_FILE(path,
                   "could not read the data of tensor '{}' (the file changed while it was "
                   "read?)",
                   e.name);
    }
    out.tensors.emplace_back(e.name, std::move(t));
  }
  if (h.has_data_crc32) {
    // In name order (see crc32_in_order); files written before 2026-12-07 took it in file
    // order, which is accepted too.
    const uint32_t crc = crc32_in_order(out.tensors, name_order(out.tensors));
    auto in_file_order = [&] {
      std::vector<size_t> order(out.tensors.size());
      for (size_t i = 0; i < order.size(); ++i) order[i] = i;
      return crc32_in_order(out.tensors, order);
    };
    if (crc != h.data_crc32 && in_file_order() != h.data_crc32) {
      MT_FAIL_FILE(path,
                   "the tensor data do not match the checksum written with them (CRC-32 {:08x}, "
                   "written {:08x}): the file is corrupt (changed bytes, a bad disk or copy); "
                   "restore it from a good copy or write it again (a file another tool changed "
                   "on purpose: remove the '{}' metadata entry)",
                   crc, h.data_crc32, kChecksumKey);
    }
  }
  return out;
}

void save_safetensors(const std::string& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata) {
  // Everything that can be checked is checked before the first byte is written.
    MT_CHECK(metadata.count(kChecksumKey) == 0,
             "save_safetensors '{}': the metadata key '{}' is reserved for the data checksum; "
             "rename it",
             path, kChecksumKey);
  std::set<std::string> names;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto& [name, t] = tensors[i];
    MT_CHECK(!name.empty(), "save_safetensors '{}': tensor #{} has an empty name; name it", path,
             i);
    MT_CHECK(name != kMetadataKey,
             "save_safetensors '{}': '__metadata__' is reserved for the metadata; rename the "
             "tensor",
             path);
    MT_CHECK(names.insert(name).second,
             "save_safetensors '{}': the name '{}' is given twice; tensor names must be unique",
             path, name);
    MT_CHECK(t.defined(), "save_safetensors '{}': tensor '{}' is undefined", path, name);
    MT_CHECK(t.device().is_cpu(),
             "save_safetensors '{}': tensor '{}' is on {}; copy it to the CPU first", path, name,
             t.device().str());
  }

  // The data as written (contiguous), and their checksum, which the header carries.
  NoGradGuard no_grad;  // contiguous() of a parameter must not be recorded
  std::vector<Tensor> data;
  data.reserve(tensors.size());
  std::vector<std::pair<std::string, Tensor>> written;
  written.reserve(tensors.size());
  for (const auto& [name, t] : tensors) {
    data.push_back(t.contiguous());
    written.emplace_back(name, data.back());
  }
  const uint32_t crc = crc32_in_order(written, name_order(written));
  Json header = Json::object();
  {
    Json m = Json::object();
    for (const auto& [k, v] : metadata) m[k] = v;
    m[kChecksumKey] = fmt::format("{:08x}", crc);
    header[kMetadataKey] = std::move(m);
  }
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    const uint64_t nbytes = uint64_t(t.numel()) * itemsize(t.dtype());
    header[name] = Json{{"dtype", safetensors_dtype_name(t.dtype())},
                        {"shape", t.shape().vec()},
                        {"data_offsets", Json::array({offset, offset + nbytes})}};
    offset += nbytes;
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const Json::exception& e) {
    MT_FAIL(
        "save_safetensors '{}': a tensor name or metadata string is not valid UTF-8 ({}); "
        "names and metadata must be UTF-8 text",
        path, e.what());
  }
  // Pad with spaces (valid JSON whitespace) so the buffer starts 8-byte aligned, as the reference
  // writer does.
  text.append((8 - text.size() % 8) % 8, ' ');

  const std::filesystem::path target(path);
  MT_CHECK(!target.filename().empty(),
           "save_safetensors '{}': the path names a folder; give a file name", path);
  std::filesystem::path dir = target.parent_path();
  if (dir.empty()) dir = ".";
  std::string tmp;
  Fd fd(create_temp_beside(target, tmp));
  if (fd.get() < 0) {
    const int err = errno;
    if (err == ENOENT) {
      MT_FAIL("save_safetensors '{}': the folder '{}' does not exist; create it first", path,
              dir.string());
    }
    MT_FAIL("save_safetensors '{}': cannot create a file in the folder '{}': {}", path,
            dir.string(), errno_text(err));
  }
  // Removes the temporary file unless it was renamed into place.
  struct TempFile {
    const std::string& name;
    bool keep = false;
    ~TempFile() {
      if (!keep) ::unlink(name.c_str());
    }
  } guard{tmp};
  auto check_io = [&](int err, const char* what) {
    if (err != 0) {
      MT_FAIL("save_safetensors '{}': {} failed: {}; nothing was written to the destination", path,
              what, errno_text(err));
    }
  };

  unsigned char len_bytes[8];
  for (int i = 0; i < 8; ++i) len_bytes[i] = static_cast<unsigned char>(text.size() >> (8 * i));
  check_io(write_all(fd.get(), len_bytes, 8), "writing the header");
  check_io(write_all(fd.get(), text.data(), text.size()), "writing the header");
  for (const Tensor& c : data) {
    if (c.numel() == 0) continue;
    check_io(write_all(fd.get(), c.raw_data(), uint64_t(c.numel()) * itemsize(c.dtype())),
             "writing the tensor data");
  }
  check_io(::fsync(fd.get()) == 0 ? 0 : errno, "fsync");
  check_io(fd.close() == 0 ? 0 : errno, "closing the file");
  check_io(::rename(tmp.c_str(), path.c_str()) == 0 ? 0 : errno, "renaming into place");
  guard.keep = true;
  sync_folder_of(target);  // the rename itself, durable
}

uint32_t crc32_of_bytes(const void* data, size_t n, uint32_t crc) {
  return crc32_of(crc, data, n);
}

}  // namespace mt::io

#undef MT_FAIL_FILE
