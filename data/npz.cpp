#include "data/npz.h"

#include <unistd.h>
#include <zip.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <string_view>

#include "data/check.h"
#include "data/files.h"
#include "engine/io/temp_file.h"

namespace mt::data {

static_assert(std::endian::native == std::endian::little,
              "the .npy reader and writer assume a little-endian host");

namespace fs = std::filesystem;

namespace {

constexpr char kNpyMagic[] = "\x93NUMPY";
constexpr size_t kNpyMagicLen = 6;

// ---- .npy header: a Python dict literal such as
// {'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }
class HeaderParser {
 public:
  HeaderParser(std::string_view text, const std::string& what) : s_(text), what_(what) {}

  void parse(std::string& descr, bool& fortran, std::vector<int64_t>& shape) {
    bool has_descr = false, has_fortran = false, has_shape = false;
    skip_ws();
    expect('{');
    while (true) {
      skip_ws();
      if (peek() == '}') break;
      const std::string key = parse_string();
      skip_ws();
      expect(':');
      skip_ws();
      if (key == "descr") {
        MT_DATA_CHECK(peek() == '\'' || peek() == '"',
                      "{}: the .npy header's 'descr' is not a plain dtype string (header: {}); "
                      "structured arrays are not supported: save a plain float array",
                      what_, s_);
        descr = parse_string();
        has_descr = true;
      } else if (key == "fortran_order") {
        fortran = parse_bool();
        has_fortran = true;
      } else if (key == "shape") {
        shape = parse_tuple();
        has_shape = true;
      } else {
        skip_value();
      }
      skip_ws();
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      skip_ws();
      MT_DATA_CHECK(peek() == '}',
                    "{}: malformed .npy header at character {}: expected ',' or "
                    "'}}' (header: {}); the file is corrupt: re-save it with numpy",
                    what_, pos_, s_);
    }
    MT_DATA_CHECK(
        has_descr && has_fortran && has_shape,
        "{}: the .npy header lacks {} (header: {}); the file is corrupt or not written by "
        "numpy: re-save it with np.save / np.savez",
        what_,
        !has_descr     ? "'descr'"
        : !has_fortran ? "'fortran_order'"
                       : "'shape'",
        s_);
  }

 private:
  char peek() const { return pos_ < s_.size() ? s_[pos_] : '\0'; }
  void skip_ws() {
    while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n')) ++pos_;
  }
  [[noreturn]] void bad(const char* expected) const {
    MT_DATA_FAIL(
        "{}: malformed .npy header at character {}: expected {} (header: {}); the file is "
        "corrupt: re-save it with numpy",
        what_, pos_, expected, s_);
  }
  void expect(char c) {
    if (peek() != c) bad(fmt::format("'{}'", c).c_str());
    ++pos_;
  }
  std::string parse_string() {
    const char q = peek();
    if (q != '\'' && q != '"') bad("a quoted string");
    const size_t end = s_.find(q, pos_ + 1);
    if (end == std::string_view::npos) bad("a closing quote");
    std::string out(s_.substr(pos_ + 1, end - pos_ - 1));
    pos_ = end + 1;
    return out;
  }
  bool parse_bool() {
    if (s_.substr(pos_, 4) == "True") {
      pos_ += 4;
      return true;
    }
    if (s_.substr(pos_, 5) == "False") {
      pos_ += 5;
      return false;
    }
    bad("True or False");
  }
  std::vector<int64_t> parse_tuple() {
    expect('(');
    std::vector<int64_t> dims;
    while (true) {
      skip_ws();
      if (peek() == ')') {
        ++pos_;
        return dims;
      }
      if (peek() < '0' || peek() > '9') bad("a dimension (non-negative integer)");
      int64_t v = 0;
      while (peek() >= '0' && peek() <= '9') {
        MT_DATA_CHECK(v < (std::numeric_limits<int64_t>::max() - 9) / 10,
                      "{}: .npy shape dimension is too large (header: {})", what_, s_);
        v = v * 10 + (peek() - '0');
        ++pos_;
      }
      if (peek() == 'L') ++pos_;  // Python 2 longs
      dims.push_back(v);
      skip_ws();
      if (peek() == ',') {
        ++pos_;
      } else if (peek() != ')') {
        bad("',' or ')' in the shape");
      }
    }
  }
  // Skips a value of an unknown key: a string, a bool/None word, or a bracketed literal.
  void skip_value() {
    if (peek() == '\'' || peek() == '"') {
      parse_string();
      return;
    }
    int depth = 0;
    while (pos_ < s_.size()) {
      const char c = s_[pos_];
      if (c == '(' || c == '[' || c == '{') ++depth;
      if (c == ')' || c == ']' || c == '}') {
        if (depth == 0) return;
        --depth;
      }
      if (c == ',' && depth == 0) return;
      ++pos_;
    }
  }

  std::string_view s_;
  const std::string& what_;
  size_t pos_ = 0;
};

template <typename T>
T read_le(const char* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

std::string shape_str(const std::vector<int64_t>& shape) {
  if (shape.size() == 1) return fmt::format("({},)", shape[0]);
  return fmt::format("({})", fmt::join(shape, ", "));
}

// Converts a stored array to C order; `src` reads element k of the stored sequence.
template <typename Out, typename Src>
std::vector<Out> reorder(const std::vector<int64_t>& shape, bool fortran, int64_t n, Src src) {
  std::vector<Out> out(static_cast<size_t>(n));
  if (!fortran || shape.size() <= 1) {
    for (int64_t i = 0; i < n; ++i) out[static_cast<size_t>(i)] = static_cast<Out>(src(i));
    return out;
  }
  if (shape.size() == 2) {
    const int64_t rows = shape[0], cols = shape[1];
    for (int64_t j = 0; j < cols; ++j)
      for (int64_t i = 0; i < rows; ++i)
        out[static_cast<size_t>(i * cols + j)] = static_cast<Out>(src(j * rows + i));
    return out;
  }
  // Any rank: walk the stored (Fortran) order with a multi-index, first dim fastest.
  const size_t rank = shape.size();
  std::vector<int64_t> idx(rank, 0), cstride(rank, 1);
  for (size_t d = rank - 1; d-- > 0;) cstride[d] = cstride[d + 1] * shape[d + 1];
  for (int64_t k = 0; k < n; ++k) {
    int64_t c = 0;
    for (size_t d = 0; d < rank; ++d) c += idx[d] * cstride[d];
    out[static_cast<size_t>(c)] = static_cast<Out>(src(k));
    for (size_t d = 0; d < rank; ++d) {
      if (++idx[d] < shape[d]) break;
      idx[d] = 0;
    }
  }
  return out;
}

template <typename Out>
std::vector<Out> convert(const NpyArray& a) {
  const int64_t n = a.numel();
  const char* base = a.bytes.data() + a.data_offset;
  if (a.descr == "<f4") {
    if (std::is_same_v<Out, float> && (!a.fortran_order || a.shape.size() <= 1)) {
      std::vector<Out> out(static_cast<size_t>(n));
      std::memcpy(out.data(), base, static_cast<size_t>(n) * sizeof(float));
      return out;
    }
    return reorder<Out>(a.shape, a.fortran_order, n,
                        [base](int64_t k) { return read_le<float>(base + k * 4); });
  }
  return reorder<Out>(a.shape, a.fortran_order, n,
                      [base](int64_t k) { return read_le<double>(base + k * 8); });
}

// ---- libzip helpers
std::string zip_code_message(int code) {
  zip_error_t ze;
  zip_error_init_with_code(&ze, code);
  std::string msg = zip_error_strerror(&ze);
  zip_error_fini(&ze);
  return msg;
}

struct ZipCloser {
  void operator()(zip_t* z) const {
    if (z) zip_discard(z);
  }
};
using ZipPtr = std::unique_ptr<zip_t, ZipCloser>;

std::vector<std::string> member_names(zip_t* za) {
  std::vector<std::string> names;
  const zip_int64_t n = zip_get_num_entries(za, 0);
  for (zip_int64_t i = 0; i < n; ++i) {
    const char* name = zip_get_name(za, static_cast<zip_uint64_t>(i), 0);
    names.emplace_back(name ? name : "?");
  }
  return names;
}

// Index of member `key` (as numpy names it, key + ".npy", or bare), or -1.
zip_int64_t locate(zip_t* za, const std::string& key) {
  zip_int64_t idx = zip_name_locate(za, (key + ".npy").c_str(), 0);
  if (idx < 0) idx = zip_name_locate(za, key.c_str(), 0);
  return idx;
}

std::vector<char> read_member(zip_t* za, zip_int64_t idx, const std::string& what) {
  const auto uidx = static_cast<zip_uint64_t>(idx);
  zip_stat_t st;
  zip_stat_init(&st);
  MT_DATA_CHECK(zip_stat_index(za, uidx, 0, &st) == 0,
                "{}: cannot read the member's entry ({}); "
                "the archive is corrupt: re-create it",
                what, zip_strerror(za));
  MT_DATA_CHECK((st.valid & ZIP_STAT_SIZE) && (st.valid & ZIP_STAT_COMP_SIZE),
                "{}: the archive does not record the member's size; re-create it with numpy", what);
  if (st.valid & ZIP_STAT_ENCRYPTION_METHOD)
    MT_DATA_CHECK(st.encryption_method == ZIP_EM_NONE,
                  "{}: the member is encrypted; save the archive without a password", what);
  if (st.valid & ZIP_STAT_COMP_METHOD) {
    MT_DATA_CHECK(st.comp_method == ZIP_CM_STORE || st.comp_method == ZIP_CM_DEFLATE,
                  "{}: the member uses zip compression method {}; only stored and deflated "
                  "members are read: save with np.savez or np.savez_compressed",
                  what, st.comp_method);
    // A size field far beyond what the compressed bytes can hold means a corrupt directory;
    // refuse it before allocating.
    const bool plausible = st.comp_method == ZIP_CM_STORE ? st.size == st.comp_size
                                                          : st.size <= st.comp_size * 1100 + 4096;
    MT_DATA_CHECK(plausible,
                  "{}: the member's recorded sizes are inconsistent ({} bytes stored, {} "
                  "bytes uncompressed); the archive is corrupt: re-create it",
                  what, st.comp_size, st.size);
  }
  std::vector<char> buf(static_cast<size_t>(st.size));
  zip_file_t* zf = zip_fopen_index(za, uidx, 0);
  MT_DATA_CHECK(zf != nullptr,
                "{}: cannot open the member ({}); the archive is corrupt or "
                "truncated: re-create it",
                what, zip_strerror(za));
  size_t got = 0;
  std::string err;
  while (got < buf.size()) {
    const zip_int64_t n = zip_fread(zf, buf.data() + got, buf.size() - got);
    if (n < 0) {
      err = zip_file_strerror(zf);
      break;
    }
    if (n == 0) break;
    got += static_cast<size_t>(n);
  }
  // One more read reaches the end of the member, where libzip checks the CRC.
  if (err.empty() && got == buf.size()) {
    char extra;
    const zip_int64_t n = zip_fread(zf, &extra, 1);
    if (n < 0) err = zip_file_strerror(zf);
    if (n > 0) err = "the member is longer than its recorded size";
  }
  zip_fclose(zf);
  MT_DATA_CHECK(err.empty(),
                "{}: reading the member failed ({}); the archive is corrupt or "
                "truncated: re-create it",
                what, err);
  MT_DATA_CHECK(got == buf.size(),
                "{}: the member ends after {} of its {} bytes; the archive is "
                "truncated: re-create it",
                what, got, buf.size());
  return buf;
}

ZipPtr open_archive(const std::string& path, const std::string& where) {
  std::error_code ec;
  MT_DATA_CHECK(fs::exists(path, ec),
                "load_npz: {}: no such file; check the path (a POCO-format "
                "folder holds one .npz per session)",
                path);
  MT_DATA_CHECK(fs::is_regular_file(path, ec), "load_npz: {}: not a regular file", path);
  int code = 0;
  zip_t* za = zip_open(path.c_str(), ZIP_RDONLY | ZIP_CHECKCONS, &code);
  MT_DATA_CHECK(za != nullptr || code != ZIP_ER_EXISTS,
                "{}: the archive holds two members of the same name (e.g. two M.npy), so which "
                "one is the recording is unclear; re-create it with np.savez(path, M=activity)",
                where);
  MT_DATA_CHECK(za != nullptr,
                "{}: not a readable zip archive ({}); the file is truncated or "
                "corrupt, or is not an .npz: re-create it with np.savez(path, M=activity)",
                where, zip_code_message(code));
  return ZipPtr(za);
}

std::vector<char> build_npy(const std::string& descr, const std::vector<int64_t>& shape,
                            const void* data, size_t bytes) {
  std::string header = fmt::format("{{'descr': '{}', 'fortran_order': False, 'shape': {}, }}",
                                   descr, shape_str(shape));
  // Pad with spaces so that magic + version + length + header ends on a 64-byte boundary,
  // newline last, as numpy does.
  const size_t prefix = kNpyMagicLen + 2 + 2;
  size_t total = prefix + header.size() + 1;
  total = (total + 63) / 64 * 64;
  header.append(total - prefix - header.size() - 1, ' ');
  header.push_back('\n');
  MT_DATA_CHECK(header.size() <= 65535, "save_npz: .npy header too long for shape {}",
                shape_str(shape));
  std::vector<char> out(prefix + header.size() + bytes);
  std::memcpy(out.data(), kNpyMagic, kNpyMagicLen);
  out[6] = 1;
  out[7] = 0;
  const auto hlen = static_cast<uint16_t>(header.size());
  std::memcpy(out.data() + 8, &hlen, 2);
  std::memcpy(out.data() + prefix, header.data(), header.size());
  if (bytes > 0) std::memcpy(out.data() + prefix + header.size(), data, bytes);
  return out;
}

}  // namespace

// ---- NpyArray

int64_t NpyArray::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::vector<float> NpyArray::to_float() const {
  return convert<float>(*this);
}
std::vector<double> NpyArray::to_double() const {
  return convert<double>(*this);
}

NpyArray parse_npy(std::vector<char> bytes, const std::string& what) {
  MT_DATA_CHECK(bytes.size() >= 10 && std::memcmp(bytes.data(), kNpyMagic, kNpyMagicLen) == 0,
                "{}: not a .npy array (no \\x93NUMPY magic at the start of its {} bytes); the "
                "member is corrupt or was not written by numpy: save it with np.savez",
                what, bytes.size());
  const int major = static_cast<unsigned char>(bytes[6]);
  const int minor = static_cast<unsigned char>(bytes[7]);
  size_t header_len = 0, header_start = 0;
  if (major == 1) {
    header_len = read_le<uint16_t>(bytes.data() + 8);
    header_start = 10;
  } else if (major == 2 || major == 3) {
    MT_DATA_CHECK(bytes.size() >= 12, "{}: .npy file truncated inside its header", what);
    header_len = read_le<uint32_t>(bytes.data() + 8);
    header_start = 12;
  } else {
    MT_DATA_FAIL(
        "{}: .npy format version {}.{} is not supported (1.0, 2.0 and 3.0 are); re-save "
        "it with a current numpy",
        what, major, minor);
  }
  MT_DATA_CHECK(header_start + header_len <= bytes.size(),
                "{}: .npy file truncated inside its header ({} header bytes announced, {} "
                "present); re-create the file",
                what, header_len, bytes.size() - header_start);
  const std::string header(bytes.data() + header_start, header_len);

  NpyArray a;
  HeaderParser(header, what).parse(a.descr, a.fortran_order, a.shape);
  if (a.descr != "<f4" && a.descr != "<f8") {
    // The array's name in the fix: an archive's member (M, t), or the array of a .npy file.
    const size_t member_at = what.rfind(", member ");
    const std::string array = member_at == std::string::npos ? "x" : what.substr(member_at + 9);
    MT_DATA_FAIL("{}: dtype '{}' is not supported (little-endian float32 '<f4' or float64 '<f8' "
                 "are); convert before saving, e.g. {}.astype(np.{})",
                 what, a.descr, array, array == "t" ? "float64" : "float32");
  }
  const int64_t item = a.descr == "<f4" ? 4 : 8;
  int64_t n = 1;
  for (int64_t d : a.shape) {
    MT_DATA_CHECK(d == 0 || n <= std::numeric_limits<int64_t>::max() / item / d,
                  "{}: shape {} is too large", what, shape_str(a.shape));
    n *= d;
  }
  a.data_offset = header_start + header_len;
  const auto have = static_cast<int64_t>(bytes.size() - a.data_offset);
  MT_DATA_CHECK(have == n * item,
                "{}: shape {} of dtype '{}' needs {} data bytes but the array holds {}; the file "
                "is {}: re-create it",
                what, shape_str(a.shape), a.descr, n * item, have,
                have < n * item ? "truncated" : "corrupt");
  a.bytes = std::move(bytes);
  return a;
}

std::vector<char> make_npy_f32(const std::vector<int64_t>& shape, const float* data) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return build_npy("<f4", shape, data, static_cast<size_t>(n) * sizeof(float));
}

std::vector<char> make_npy_f64(const std::vector<int64_t>& shape, const double* data) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return build_npy("<f8", shape, data, static_cast<size_t>(n) * sizeof(double));
}

std::vector<char> make_npy_i64(const std::vector<int64_t>& shape, const int64_t* data) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return build_npy("<i8", shape, data, static_cast<size_t>(n) * sizeof(int64_t));
}

// ---- archives

Session load_npz(const std::string& path, const NpzOptions& options) {
  MT_DATA_CHECK(std::isfinite(options.dt) && options.dt > 0,
                "load_npz: {}: data.npz.dt is {}; it must be a positive number of seconds per "
                "frame",
                path, options.dt);
  const std::string stem = fs::path(path).stem().string();
  const std::string where = fmt::format("load_npz: {} (session '{}')", path, stem);
  ZipPtr za = open_archive(path, where);

  const zip_int64_t m_idx = locate(za.get(), "M");
  if (m_idx < 0) {
    const auto names = member_names(za.get());
    MT_DATA_FAIL(
        "{}: the archive has no member 'M' (it holds: {}); POCO's format stores the "
        "activity (neurons x frames) as M: np.savez(path, M=activity)",
        where, names.empty() ? std::string("nothing") : fmt::format("{}", fmt::join(names, ", ")));
  }
  NpyArray m = parse_npy(read_member(za.get(), m_idx, where + ", member M"), where + ", member M");
  MT_DATA_CHECK(
      m.shape.size() == 2, "{}, member M: shape {} is not 2-D; M must be (neurons, frames){}",
      where, shape_str(m.shape), m.shape.size() == 1 ? ": save a single neuron as M[None, :]" : "");

  Session s;
  s.name = stem;
  s.source = path;
  s.num_neurons = m.shape[0];
  s.num_frames = m.shape[1];

  const zip_int64_t t_idx = locate(za.get(), "t");
  if (t_idx >= 0) {
    NpyArray t =
        parse_npy(read_member(za.get(), t_idx, where + ", member t"), where + ", member t");
    const bool vector_like =
        t.shape.size() == 1 || (t.shape.size() == 2 && (t.shape[0] == 1 || t.shape[1] == 1));
    MT_DATA_CHECK(vector_like,
                  "{}, member t: shape {} is not a vector; t must hold one time "
                  "(seconds) per frame, shape (T,)",
                  where, shape_str(t.shape));
    const int64_t nt = t.numel();
    if (nt != s.num_frames) {
      MT_DATA_CHECK(nt != s.num_neurons,
                    "{}: t has {} entries, which matches M's first dim, not its second: M {} looks "
                    "stored as (frames, neurons); POCO's format is (neurons, frames): save M.T",
                    where, nt, shape_str(m.shape));
      MT_DATA_FAIL(
          "{}: t has {} entries but M {} has {} frames (its second dim); t must hold "
          "one time per frame",
          where, nt, shape_str(m.shape), s.num_frames);
    }
    s.timestamps = t.to_double();
  } else {
    s.timestamps.resize(static_cast<size_t>(s.num_frames));
    for (int64_t i = 0; i < s.num_frames; ++i)
      s.timestamps[static_cast<size_t>(i)] = static_cast<double>(i) * options.dt;
  }
  s.activity = m.to_float();
  if (m.descr == "<f8") {
    // A finite float64 beyond the float32 range becomes inf in the conversion: say so, rather
    // than let validate report an inf the file does not hold.
    const auto inf = std::find_if(s.activity.begin(), s.activity.end(),
                                  [](float v) { return std::isinf(v); });
    if (inf != s.activity.end()) {
      const int64_t at = inf - s.activity.begin();
      const double original = m.to_double()[static_cast<size_t>(at)];
      MT_DATA_CHECK(std::isinf(original),
                    "{}: M holds {} at neuron {}, frame {}, beyond the float32 range the "
                    "recordings are kept in (|x| <= 3.4e38); rescale the recording",
                    where, original, at / s.num_frames, at % s.num_frames);
    }
  }
  validate(s);
  return s;
}

Dataset load_npz_folder(const std::string& folder, const NpzOptions& options) {
  const auto files = detail::list_files(folder, {".npz"}, "load_npz_folder");
  MT_DATA_CHECK(!files.empty(),
                "load_npz_folder: {}: no .npz files; POCO's format is a folder "
                "with one .npz per session, each holding M (neurons x frames)",
                folder);
  Dataset d;
  for (const auto& f : files) d.sessions.push_back(load_npz(f, options));
  validate(d);
  return d;
}

void save_npz_members(const std::string& path, const std::vector<NpzMember>& members,
                      const NpzWriteOptions& options, const std::string& what) {
  const fs::path target(path);
  const fs::path dir = target.has_parent_path() ? target.parent_path() : fs::path(".");
  std::error_code ec;
  MT_DATA_CHECK(fs::is_directory(dir, ec), "{}: {}: folder {} does not exist; create it first",
                what, path, dir.string());
  static std::atomic<uint64_t> counter{0};
  const fs::path tmp = dir / fmt::format(".{}.tmp-{}-{}", target.filename().string(),
                                         static_cast<long>(::getpid()), counter++);
  auto fail = [&](const std::string& why) {
    fs::remove(tmp, ec);
    MT_DATA_FAIL("{}: {}: {}; check that the folder is writable and has space", what, path, why);
  };
  int code = 0;
  zip_t* za = zip_open(tmp.c_str(), ZIP_CREATE | ZIP_TRUNCATE, &code);
  if (!za) fail(fmt::format("cannot create {} ({})", tmp.string(), zip_code_message(code)));
  const zip_uint16_t method = options.compress ? ZIP_CM_DEFLATE : ZIP_CM_STORE;
  for (const auto& member : members) {
    const std::string name = member.name + ".npy";
    zip_source_t* src = zip_source_buffer(za, member.npy.data(), member.npy.size(), 0);
    if (!src) {
      const std::string why = zip_strerror(za);
      zip_discard(za);
      fail(fmt::format("cannot add {} ({})", name, why));
    }
    const zip_int64_t idx = zip_file_add(za, name.c_str(), src, ZIP_FL_OVERWRITE);
    if (idx < 0) {
      const std::string why = zip_strerror(za);
      zip_source_free(src);
      zip_discard(za);
      fail(fmt::format("cannot add {} ({})", name, why));
    }
    // A fixed member time, 2000-01-01 12:00 as the DOS date and time fields themselves (no time
    // zone conversion): the same arrays give the same bytes, whenever and wherever written.
    constexpr zip_uint16_t kDosTime = 12 << 11;                        // hour << 11
    constexpr zip_uint16_t kDosDate = (2000 - 1980) << 9 | 1 << 5 | 1;  // year, month, day
    if (zip_file_set_dostime(za, static_cast<zip_uint64_t>(idx), kDosTime, kDosDate, 0) != 0) {
      const std::string why = zip_strerror(za);
      zip_discard(za);
      fail(fmt::format("cannot set the time of {} ({})", name, why));
    }
    if (zip_set_file_compression(za, static_cast<zip_uint64_t>(idx), method, 0) != 0) {
      const std::string why = zip_strerror(za);
      zip_discard(za);
      fail(fmt::format("cannot set the compression of {} ({})", name, why));
    }
  }
  if (zip_close(za) != 0) {
    const std::string why = zip_strerror(za);
    zip_discard(za);
    fail(fmt::format("writing the archive failed ({})", why));
  }
  // libzip closes without syncing: the data first, then the name, then the folder's entry.
  if (!io::sync_file(tmp))
    fail(fmt::format("cannot sync {} to disk ({})", tmp.string(), std::strerror(errno)));
  fs::rename(tmp, target, ec);
  if (ec) fail(fmt::format("cannot rename {} to {} ({})", tmp.string(), path, ec.message()));
  io::sync_folder_of(target);
}

void save_npz(const Session& session, const std::string& path, const NpzWriteOptions& options) {
  validate(session);
  save_npz_members(
      path,
      {{"M", make_npy_f32({session.num_neurons, session.num_frames}, session.activity.data())},
       {"t", make_npy_f64({session.num_frames}, session.timestamps.data())}},
      options, fmt::format("save_npz (session '{}')", session.name));
}

}  // namespace mt::data
