// engine/io/safetensors: round trips of every dtype, a file written by Python's safetensors
// package (tests/golden/optim_io_fixture.safetensors, from tools/reference/optim_reference.py),
// every malformed-file error, and atomic saves.
#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <numbers>

#include <catch2/catch.hpp>

#include "engine/io/safetensors.h"
#include "support/temp_dir.h"
#include "support/golden_file.h"

using namespace mt;
using namespace mt::io;
using Catch::Contains;
using mt::testing::read_bytes;
using mt::testing::TempDir;
using mt::testing::write_bytes;

namespace {

// A safetensors file from a header text and a buffer (no padding added).
std::string make_file(const std::string& header, const std::string& buffer) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[size_t(i)] = char((uint64_t(header.size()) >> (8 * i)) & 0xff);
  return out + header + buffer;
}

// The bytes of a tensor in row-major order.
std::string tensor_bytes(const Tensor& t) {
  const Tensor c = t.contiguous();
  return std::string(static_cast<const char*>(c.raw_data()),
                     size_t(c.numel()) * itemsize(c.dtype()));
}

template <class Bits>
Tensor from_bits(std::vector<Bits> bits, const Shape& shape, DType dtype) {
  Tensor t = empty(shape, dtype);
  REQUIRE(bits.size() * sizeof(Bits) == size_t(t.numel()) * itemsize(dtype));
  std::memcpy(t.raw_data(), bits.data(), bits.size() * sizeof(Bits));
  return t;
}

std::string fixture_path() {
  return mt::testing::golden_path("optim_io_fixture.safetensors");
}

}  // namespace

TEST_CASE("safetensors round trip of every dtype, 0-d and empty tensors, metadata", "[io]") {
  TempDir dir("test_io_safetensors");
  const std::string path = dir.file("all.safetensors");
  const double inf = std::numeric_limits<double>::infinity();
  NamedTensors tensors = {
      {"f32",
       from_vector(std::vector<double>{-1.5, 0, 2.25, 1e-30, -0.0, inf}, Shape{2, 3}, DType::f32)},
      {"f64",
       from_vector(std::vector<double>{std::numbers::pi, -1e300, 5e-324}, Shape{3}, DType::f64)},
      // Bit patterns: 1, -2, +inf, NaN, -0, the smallest subnormal.
      {"f16", from_bits<uint16_t>({0x3c00, 0xc000, 0x7c00, 0x7e00, 0x8000, 0x0001}, Shape{3, 2},
                                  DType::f16)},
      {"bf16", from_bits<uint16_t>({0x3f80, 0xc060, 0x7f80}, Shape{3}, DType::bf16)},
      {"i64", from_indices(std::vector<int64_t>{0, -1, int64_t(1) << 40,
                                                std::numeric_limits<int64_t>::min()},
                           Shape{2, 2})},
      {"scalar_f64", scalar_tensor(42.25, DType::f64)},
      {"scalar_i64", from_indices(std::vector<int64_t>{7}, Shape{})},
      {"empty_f32", empty(Shape{0, 3}, DType::f32)},
      {"empty_f16", empty(Shape{4, 0}, DType::f16)},
      {"odd_f16", from_bits<uint16_t>({0x3c00, 0x4000, 0x4200}, Shape{3}, DType::f16)},
      // A non-contiguous view is written in row-major order.
      {"transposed", arange(6, DType::f64).reshape(Shape{2, 3}).transpose(0, 1)},
      {"after.odd", from_vector(std::vector<double>{1, 2}, Shape{2}, DType::f64)},
  };
  const std::map<std::string, std::string> metadata = {
      {"format", "pt"}, {"note", "ünïcode ✓"}, {"json", R"({"a": [1, 2]})"}};
  save_safetensors(path, tensors, metadata);

  const std::string bytes = read_bytes(path);
  uint64_t header_len = 0;
  std::memcpy(&header_len, bytes.data(), 8);
  CHECK((8 + header_len) % 8 == 0);  // the buffer starts 8-byte aligned
  CHECK(dir.entries() == std::vector<std::string>{"all.safetensors"});  // no temp file left

  const SafetensorsContents back = load_safetensors(path);
  CHECK(back.metadata == metadata);
  REQUIRE(back.tensors.size() == tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto& [name, t] = tensors[i];
    INFO("tensor " << name);
    CHECK(back.tensors[i].first == name);  // the given order
    const Tensor& r = back.tensors[i].second;
    CHECK(r.dtype() == t.dtype());
    CHECK(r.shape() == t.shape());
    if (r.numel() > 0) CHECK(r.is_contiguous());  // the engine calls some empty shapes strided
    CHECK(tensor_bytes(r) == tensor_bytes(t));    // bit for bit
  }
  CHECK(back.find("transposed")->to_vector<double>() == std::vector<double>{0, 3, 1, 4, 2, 5});
  CHECK(back.find("missing") == nullptr);

  // The header alone, with offsets that cover the buffer in order.
  const SafetensorsHeader header = read_safetensors_header(path);
  CHECK(header.buffer_offset == 8 + header_len);
  REQUIRE(header.entries.size() == tensors.size());
  uint64_t pos = 0;
  for (const SafetensorsEntry& e : header.entries) {
    CHECK(e.begin == pos);
    pos = e.end;
  }
  CHECK(header.buffer_offset + pos == bytes.size());

  // No tensors and no metadata: a valid file too.
  save_safetensors(dir.file("none.safetensors"), {});
  const SafetensorsContents none = load_safetensors(dir.file("none.safetensors"));
  CHECK(none.tensors.empty());
  CHECK(none.metadata.empty());
}

TEST_CASE("safetensors reads a file written by the Python safetensors package", "[io]") {
  const SafetensorsContents f = load_safetensors(fixture_path());
  CHECK(f.metadata ==
        std::map<std::string, std::string>{{"writer", "tools/reference/optim_reference.py"}});
  // File order: the Python writer sorts by dtype size, then by name.
  std::vector<std::string> names;
  for (const auto& [n, t] : f.tensors) names.push_back(n);
  CHECK(names == std::vector<std::string>{"i64", "f64", "scalar", "empty", "f32", "layer.0.weight",
                                          "bf16", "f16"});

  const Tensor& f32 = *f.find("f32");
  CHECK(f32.dtype() == DType::f32);
  CHECK(f32.shape() == Shape{2, 3});
  CHECK(f32.to_vector<double>() == std::vector<double>{-1.0, -0.5, 0.0, 0.5, 1.0, 1.5});
  const Tensor& f64 = *f.find("f64");
  CHECK(f64.dtype() == DType::f64);
  CHECK(f64.to_vector<double>() == std::vector<double>{std::numbers::pi, -std::numbers::e, 1e-300});
  const Tensor& f16 = *f.find("f16");
  CHECK(f16.dtype() == DType::f16);
  CHECK(f16.shape() == Shape{2, 2});
  CHECK(f16.to_vector<double>() == std::vector<double>{1.0, -2.0, 0.5, 65504.0});
  const Tensor& bf16 = *f.find("bf16");
  CHECK(bf16.dtype() == DType::bf16);
  CHECK(bf16.to_vector<double>() == std::vector<double>{1.0, -3.5, std::ldexp(1.0, 100)});
  const Tensor& i64 = *f.find("i64");
  CHECK(i64.dtype() == DType::i64);
  CHECK(i64.to_vector<int64_t>() ==
        std::vector<int64_t>{0, -1, int64_t(1) << 40, -(int64_t(1) << 62)});
  const Tensor& scalar = *f.find("scalar");
  CHECK(scalar.dim() == 0);
  CHECK(scalar.item<double>() == 42.25);
  const Tensor& e = *f.find("empty");
  CHECK(e.shape() == Shape{0, 3});
  CHECK(e.dtype() == DType::f32);
  CHECK(f.find("layer.0.weight")->to_vector<double>() ==
        std::vector<double>{0, 0.25, 0.5, 0.75, 1.0, 1.25});
}

TEST_CASE("safetensors errors name the file, the problem and the fix", "[io]") {
  TempDir dir("test_io_safetensors");

  SECTION("missing file") {
    const std::string path = dir.file("nope.safetensors");
    REQUIRE_THROWS_WITH(load_safetensors(path), Contains(path) && Contains("does not exist"));
    REQUIRE_THROWS_WITH(read_safetensors_header(path),
                        Contains(path) && Contains("does not exist"));
  }

  SECTION("a folder instead of a file") {
    REQUIRE_THROWS_WITH(load_safetensors(dir.path().string()),
                        Contains(dir.path().string()) && Contains("not a regular file"));
  }

  SECTION("truncated at several lengths") {
    const std::string good = dir.file("good.safetensors");
    save_safetensors(good, {{"a", arange(6, DType::f64)}, {"b", arange(4, DType::f32)}},
                     {{"k", "v"}});
    const std::string bytes = read_bytes(good);
    uint64_t header_len = 0;
    std::memcpy(&header_len, bytes.data(), 8);
    const std::string path = dir.file("cut.safetensors");
    struct Cut {
      size_t length;
      const char* expect;
    };
    const Cut cuts[] = {
        {0, "shorter than the 8-byte header length"},
        {5, "shorter than the 8-byte header length"},
        {8, "header length field says"},
        {8 + header_len / 2, "header length field says"},
        {8 + header_len, "past the end of the 0-byte data buffer"},
        {8 + header_len + 20, "past the end of the 20-byte data buffer"},
        {bytes.size() - 1, "truncated"},
    };
    for (const Cut& cut : cuts) {
      INFO("cut at " << cut.length << " of " << bytes.size() << " bytes");
      write_bytes(path, bytes.substr(0, cut.length));
      REQUIRE_THROWS_WITH(load_safetensors(path), Contains(path) && Contains(cut.expect));
    }
  }

  SECTION("trailing garbage") {
    const std::string path = dir.file("trailing.safetensors");
    save_safetensors(path, {{"a", arange(3, DType::f32)}});
    write_bytes(path, read_bytes(path) + "junk");
    REQUIRE_THROWS_WITH(load_safetensors(path),
                        Contains(path) && Contains("4 bytes of trailing data"));
  }

  SECTION("corrupted header JSON") {
    const std::string path = dir.file("json.safetensors");
    save_safetensors(path, {{"a", arange(3, DType::f32)}});
    std::string bytes = read_bytes(path);
    bytes[8 + 5] = '\x01';  // inside the first key
    write_bytes(path, bytes);
    REQUIRE_THROWS_WITH(load_safetensors(path), Contains(path) && Contains("not valid JSON"));
    write_bytes(path, make_file(R"({"a": {"dtype": "F32", "shape": [1], )", "abcd"));
    REQUIRE_THROWS_WITH(load_safetensors(path), Contains(path) && Contains("not valid JSON"));
    write_bytes(path, make_file("[1, 2]", ""));
    REQUIRE_THROWS_WITH(load_safetensors(path), Contains(path) && Contains("not a JSON object"));
  }

  SECTION("malformed entries") {
    const std::string path = dir.file("bad.safetensors");
    struct Case {
      const char* header;
      size_t buffer;
      std::vector<const char*> expect;
    };
    const Case cases[] = {
        {R"({"a": {"dtype": "I32", "shape": [1], "data_offsets": [0, 4]}})",
         4,
         {"tensor 'a'", "unknown or unsupported dtype \"I32\"", "F32, F64, F16, BF16 and I64"}},
        {R"({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}})",
         8,
         {"tensor 'a'", "(12 bytes)", "span 8 bytes"}},
        {R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})",
         8,
         {"tensor 'a'", "past the end of the 8-byte data buffer"}},
        {R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},)"
         R"( "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
         12,
         {"'a' (bytes [0, 8))", "'b' (bytes [4, 12))", "overlap"}},
        {R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},)"
         R"( "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}})",
         12,
         {"bytes [4, 8)", "before tensor 'b'", "belong to no tensor"}},
        {R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}})",
         4,
         {"tensor 'a'", "end is before its begin"}},
        {R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, -4]}})",
         4,
         {"tensor 'a'", "data_offsets [0,-4]"}},
        {R"({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}})",
         4,
         {"tensor 'a'", "sizes are non-negative"}},
        {R"({"a": {"dtype": "F32", "data_offsets": [0, 4]}})",
         4,
         {"tensor 'a'", "no \"shape\" field"}},
        {R"({"a": [1, 2]})", 0, {"tensor 'a'", "not an object"}},
        {R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},)"
         R"( "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}})",
         4,
         {"'a' more than once"}},
        {R"({"__metadata__": {"step": 3}})", 0, {"metadata key 'step'", "must be strings"}},
    };
    for (const Case& c : cases) {
      INFO("header " << c.header);
      write_bytes(path, make_file(c.header, std::string(c.buffer, '\0')));
      for (const char* e : c.expect) {
        INFO("expecting " << e);
        REQUIRE_THROWS_WITH(load_safetensors(path), Contains(path) && Contains(e));
      }
    }
  }

  SECTION("hand-made valid files: padding, empty tensors sharing an offset, metadata only") {
    const std::string path = dir.file("hand.safetensors");
    std::string buffer(8, '\0');
    const float values[2] = {1.5f, -2.0f};
    std::memcpy(buffer.data(), values, 8);
    write_bytes(path,
                make_file(R"({"e1": {"dtype": "F64", "shape": [0], "data_offsets": [0, 0]},)"
                          R"( "x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},)"
                          R"( "e2": {"dtype": "I64", "shape": [2, 0], "data_offsets": [8, 8]}}   )",
                          buffer));
    const SafetensorsContents f = load_safetensors(path);
    REQUIRE(f.tensors.size() == 3);
    CHECK(f.tensors[0].first == "e1");
    CHECK(f.tensors[1].first == "x");
    CHECK(f.tensors[2].first == "e2");
    CHECK(f.tensors[1].second.to_vector<float>() == std::vector<float>{1.5f, -2.0f});
    CHECK(f.tensors[2].second.shape() == Shape{2, 0});
  }
}

TEST_CASE("safetensors data carry a CRC-32: a changed byte is refused, not loaded", "[io]") {
  TempDir dir("test_io_safetensors");
  const std::string path = dir.file("crc.safetensors");
  const NamedTensors tensors = {{"w", arange(64, DType::f32)}, {"b", arange(3, DType::f64)}};
  save_safetensors(path, tensors, {{"note", "x"}});
  const std::string good = read_bytes(path);
  CHECK(good.find("\"metatape.crc32\":\"") != std::string::npos);  // in the header
  CHECK(load_safetensors(path).metadata ==
        std::map<std::string, std::string>{{"note", "x"}});  // not in the metadata returned

  // One bit of one value changed: the structure is intact, only the checksum can tell.
  for (size_t at : {good.size() - 1, good.size() - 3 * 8 - 100}) {
    std::string bad = good;
    bad[at] = char(bad[at] ^ 0x10);
    write_bytes(path, bad);
    INFO("byte " << at);
    CHECK_THROWS_WITH(load_safetensors(path),
                      Contains(path) && Contains("do not match the checksum") &&
                          Contains("corrupt"));
  }
  // A checksum entry that is not 8 hex digits: the header is damaged.
  std::string bad = good;
  const size_t digits = bad.find("\"metatape.crc32\":\"") + 18;
  bad[digits] = 'z';
  write_bytes(path, bad);
  CHECK_THROWS_WITH(load_safetensors(path), Contains("not 8 hex digits"));
  // The key is the writer's own.
  CHECK_THROWS_WITH(save_safetensors(path, tensors, {{"metatape.crc32", "0"}}),
                    Contains("reserved for the data checksum"));

  // The checksum takes the tensors in name order: a file whose tensors another writer laid out
  // in another order (safetensors' save_file sorts them by name) keeps it. Before, it covered
  // the file order, and such a rewrite of unchanged weights was refused as corrupt.
  const std::string reordered = dir.file("reordered.safetensors");
  save_safetensors(path, tensors, {});
  save_safetensors(reordered, {tensors[1], tensors[0]}, {});
  CHECK(read_safetensors_header(path).data_crc32 == read_safetensors_header(reordered).data_crc32);
  CHECK(load_safetensors(reordered).tensors[0].first == "b");
  // A file of an earlier metatape, its checksum over the file order, still loads.
  const uint32_t file_order = crc32_of_bytes(
      tensors[1].second.raw_data(), 3 * sizeof(double),
      crc32_of_bytes(tensors[0].second.raw_data(), 64 * sizeof(float)));
  std::string earlier = read_bytes(path);
  const size_t at = earlier.find("\"metatape.crc32\":\"") + 18;
  earlier.replace(at, 8, fmt::format("{:08x}", file_order));
  write_bytes(path, earlier);
  CHECK(load_safetensors(path).tensors.size() == 2);
}

TEST_CASE("safetensors saves are atomic and check their inputs first", "[io]") {
  TempDir dir("test_io_safetensors");
  const NamedTensors tensors = {{"a", arange(4, DType::f32)}};

  SECTION("into a missing folder: no file, no temporary file") {
    const std::string path = dir.file("missing/sub/out.safetensors");
    REQUIRE_THROWS_WITH(save_safetensors(path, tensors),
                        Contains(path) && Contains("does not exist") && Contains("create it"));
    CHECK(dir.entries().empty());
  }

  SECTION("a failing rename removes the temporary file") {
    // The destination is a folder: everything is written, then the rename fails.
    const std::string path = dir.file("taken");
    std::filesystem::create_directory(path);
    REQUIRE_THROWS_WITH(save_safetensors(path, tensors),
                        Contains(path) && Contains("renaming into place"));
    CHECK(dir.entries() == std::vector<std::string>{"taken"});
    CHECK(std::filesystem::is_empty(path));
  }

  SECTION("invalid input leaves an existing file as it was") {
    const std::string path = dir.file("keep.safetensors");
    save_safetensors(path, tensors, {{"v", "1"}});
    const std::string before = read_bytes(path);
    REQUIRE_THROWS_WITH(save_safetensors(path, {{"a", arange(2)}, {"a", arange(3)}}),
                        Contains(path) && Contains("'a' is given twice"));
    REQUIRE_THROWS_WITH(save_safetensors(path, {{"__metadata__", arange(2)}}),
                        Contains("reserved"));
    REQUIRE_THROWS_WITH(save_safetensors(path, {{"", arange(2)}}), Contains("empty name"));
    REQUIRE_THROWS_WITH(save_safetensors(path, {{"u", Tensor()}}), Contains("'u' is undefined"));
    REQUIRE_THROWS_WITH(save_safetensors(path, tensors, {{"bad", std::string("\xff\xfe")}}),
                        Contains("not valid UTF-8"));
    CHECK(read_bytes(path) == before);
    CHECK(dir.entries() == std::vector<std::string>{"keep.safetensors"});

    // A successful save replaces the file.
    save_safetensors(path, {{"b", arange(2, DType::f64)}});
    const SafetensorsContents f = load_safetensors(path);
    REQUIRE(f.tensors.size() == 1);
    CHECK(f.tensors[0].first == "b");
    CHECK(f.metadata.empty());
    CHECK(dir.entries() == std::vector<std::string>{"keep.safetensors"});
  }
}
