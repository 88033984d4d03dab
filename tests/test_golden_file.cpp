// Tests for the golden-file reader (tests/support/golden_file.{h,cpp}) against
// the checked-in PyTorch reference tests/golden/mlp_meta_v1.bin and against
// deliberately damaged copies of it.
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "support/golden_file.h"
#include "support/temp_dir.h"

#ifndef METATAPE_SOURCE_DIR
#error "METATAPE_SOURCE_DIR must be defined as a string literal naming the repository root"
#endif

using mt::testing::GoldenFile;
using mt::testing::GoldenTensor;
using mt::testing::read_bytes;
using mt::testing::TempDir;

namespace {

std::string golden_path() { return mt::testing::golden_path("mlp_meta_v1.bin"); }

void put_u32(std::vector<unsigned char>& b, size_t off, uint32_t v) {
  for (size_t i = 0; i < 4; ++i) b.at(off + i) = static_cast<unsigned char>(v >> (8 * i));
}

void put_i64(std::vector<unsigned char>& b, size_t off, int64_t v) {
  const auto u = static_cast<uint64_t>(v);
  for (size_t i = 0; i < 8; ++i) b.at(off + i) = static_cast<unsigned char>(u >> (8 * i));
}

// Recomputes the trailing FNV-1a checksum so that only the intended defect remains.
void reseal(std::vector<unsigned char>& b) {
  const size_t body = b.size() - 8;
  const uint64_t h = mt::testing::golden_fnv1a64(b.data(), body);
  for (size_t i = 0; i < 8; ++i) b[body + i] = static_cast<unsigned char>(h >> (8 * i));
}

// Byte offsets within the first tensor record ("x_support", rank 2).
constexpr size_t kHeader = 16;
constexpr size_t kFirstName = sizeof("x_support") - 1;
constexpr size_t kFirstDtype = kHeader + 4 + kFirstName;
constexpr size_t kFirstRank = kFirstDtype + 1;
constexpr size_t kFirstDims = kFirstRank + 4;

struct Expected {
  const char* name;
  std::vector<int64_t> shape;
};

const std::vector<Expected>& expected_tensors() {
  static const std::vector<Expected> e = {
      {"x_support", {10, 4}},    {"y_support", {10, 3}},
      {"x_query", {12, 4}},      {"y_query", {12, 3}},
      {"W1", {4, 16}},           {"b1", {16}},
      {"W2", {16, 3}},           {"b2", {3}},
      {"inner_lr", {}},          {"out_support", {10, 3}},
      {"loss_support", {}},      {"grad_W1", {4, 16}},
      {"grad_b1", {16}},         {"grad_W2", {16, 3}},
      {"grad_b2", {3}},          {"fast_W1", {4, 16}},
      {"fast_b1", {16}},         {"fast_W2", {16, 3}},
      {"fast_b2", {3}},          {"out_query", {12, 3}},
      {"loss_query", {}},        {"meta_grad_W1", {4, 16}},
      {"meta_grad_b1", {16}},    {"meta_grad_W2", {16, 3}},
      {"meta_grad_b2", {3}},     {"fo_meta_grad_W1", {4, 16}},
      {"fo_meta_grad_b1", {16}}, {"fo_meta_grad_W2", {16, 3}},
      {"fo_meta_grad_b2", {3}},
  };
  return e;
}

}  // namespace

TEST_CASE("golden file: reference MLP meta-learning file loads with the expected tensors",
          "[golden][io]") {
  const auto path = golden_path();
  const GoldenFile file = GoldenFile::load(path);
  CHECK(file.path() == path);

  const auto& expected = expected_tensors();
  REQUIRE(file.tensors().size() == expected.size());
  for (size_t i = 0; i < expected.size(); ++i) {
    const GoldenTensor& t = file.tensors()[i];
    INFO("tensor " << i << " '" << t.name << "'");
    CHECK(t.name == expected[i].name);
    CHECK(t.shape == expected[i].shape);
    int64_t count = 1;
    for (auto d : t.shape) count *= d;
    CHECK(t.values.size() == static_cast<size_t>(count));
    for (double v : t.values) CHECK(std::isfinite(v));
    CHECK(file.contains(expected[i].name));
    CHECK(&file.at(expected[i].name) == &t);
  }

  SECTION("scalars") {
    CHECK(file.at("inner_lr").values == std::vector<double>{0.1});
    CHECK(file.at("loss_support").values.at(0) > 0.0);
    CHECK(file.at("loss_query").values.at(0) > 0.0);
  }

  SECTION("fast weights are one SGD step from the parameters") {
    const double lr = file.at("inner_lr").values.at(0);
    for (const char* p : {"W1", "b1", "W2", "b2"}) {
      const auto& w = file.at(p).values;
      const auto& g = file.at(std::string("grad_") + p).values;
      const auto& f = file.at(std::string("fast_") + p).values;
      REQUIRE(w.size() == g.size());
      REQUIRE(w.size() == f.size());
      for (size_t i = 0; i < w.size(); ++i) CHECK(f[i] == Approx(w[i] - lr * g[i]).margin(1e-15));
    }
  }

  SECTION("missing tensor names the tensor and the file") {
    CHECK_FALSE(file.contains("no_such_tensor"));
    REQUIRE_THROWS_WITH(file.at("no_such_tensor"),
                        Catch::Contains("no_such_tensor") && Catch::Contains(path));
  }
}

TEST_CASE("golden file: missing file is reported with the regeneration command", "[golden][io]") {
  TempDir tmp("test_golden_file");
  const auto p = tmp.write("placeholder.bin", {});
  const auto missing = p + ".absent";
  REQUIRE_THROWS_WITH(GoldenFile::load(missing),
                      Catch::Contains("does not exist") && Catch::Contains(missing) &&
                          Catch::Contains("python3 tools/reference/golden_mlp.py"));
}

TEST_CASE("golden file: damaged copies are rejected with clear messages", "[golden][io]") {
  const auto original = read_bytes<std::vector<unsigned char>>(golden_path());
  REQUIRE(original.size() > 200);
  TempDir tmp("test_golden_file");

  SECTION("unmodified copy loads") {
    const auto p = tmp.write("copy.bin", original);
    CHECK(GoldenFile::load(p).tensors().size() == expected_tensors().size());
  }

  SECTION("truncated at several lengths") {
    const std::vector<size_t> lengths = {0,
                                         4,
                                         8,
                                         12,
                                         16,
                                         23,
                                         24,
                                         30,
                                         50,
                                         100,
                                         original.size() / 2,
                                         original.size() - 9,
                                         original.size() - 8,
                                         original.size() - 1};
    for (size_t len : lengths) {
      INFO("truncated to " << len << " of " << original.size() << " bytes");
      const std::vector<unsigned char> cut(original.begin(),
                                           original.begin() + static_cast<std::ptrdiff_t>(len));
      const auto p = tmp.write("truncated_" + std::to_string(len) + ".bin", cut);
      REQUIRE_THROWS_WITH(GoldenFile::load(p), Catch::Contains("truncated") && Catch::Contains(p) &&
                                                   Catch::Contains("golden_mlp.py"));
    }
  }

  SECTION("truncation inside a tensor names the tensor and the byte offset") {
    const std::vector<unsigned char> cut(original.begin(), original.begin() + 100);
    const auto p = tmp.write("truncated_in_tensor.bin", cut);
    REQUIRE_THROWS_WITH(GoldenFile::load(p), Catch::Contains("tensor 0 of 29 ('x_support')") &&
                                                 Catch::Contains("byte offset"));
  }

  SECTION("one flipped byte in the payload") {
    auto bad = original;
    bad[bad.size() - 8 - 3] ^= 0x40;  // inside the last tensor's values
    const auto p = tmp.write("flipped.bin", bad);
    REQUIRE_THROWS_WITH(GoldenFile::load(p), Catch::Contains("checksum mismatch") &&
                                                 Catch::Contains("corrupt") && Catch::Contains(p));
  }

  SECTION("one flipped byte in the checksum") {
    auto bad = original;
    const size_t last = original.size() - 1;  // the checksum's last byte
    bad.at(last) = static_cast<unsigned char>(bad.at(last) ^ 0x01);
    const auto p = tmp.write("flipped_checksum.bin", bad);
    REQUIRE_THROWS_WITH(GoldenFile::load(p), Catch::Contains("checksum mismatch"));
  }

  SECTION("bad magic") {
    auto bad = original;
    bad[0] = 'X';
    const auto p = tmp.write("bad_magic.bin", bad);
    REQUIRE_THROWS_WITH(GoldenFile::load(p), Catch::Contains("bad magic") && Catch::Contains(p));
    const auto short_bad = tmp.write("bad_magic_short.bin", "MTX");
    REQUIRE_THROWS_WITH(GoldenFile::load(short_bad), Catch::Contains("bad magic"));
  }

  SECTION("version 2") {
    auto bad = original;
    put_u32(bad, 8, 2);
    const auto stale = tmp.write("version2_stale_checksum.bin", bad);
    REQUIRE_THROWS_WITH(GoldenFile::load(stale),
                        Catch::Contains("unsupported version 2") && Catch::Contains(stale));
    reseal(bad);
    const auto sealed = tmp.write("version2.bin", bad);
    REQUIRE_THROWS_WITH(GoldenFile::load(sealed), Catch::Contains("unsupported version 2"));
  }

  SECTION("unknown dtype code") {
    auto bad = original;
    REQUIRE(bad[kFirstDtype] == 1);
    bad[kFirstDtype] = 7;
    reseal(bad);
    const auto p = tmp.write("dtype7.bin", bad);
    REQUIRE_THROWS_WITH(GoldenFile::load(p),
                        Catch::Contains("unknown dtype code 7") && Catch::Contains("x_support"));
  }

  SECTION("negative dimension") {
    auto bad = original;
    put_i64(bad, kFirstDims, -10);
    reseal(bad);
    const auto p = tmp.write("negative_dim.bin", bad);
    REQUIRE_THROWS_WITH(GoldenFile::load(p), Catch::Contains("negative dimension -10"));
  }

  SECTION("dims larger than the remaining bytes") {
    auto bad = original;
    put_i64(bad, kFirstDims, int64_t{1} << 40);
    reseal(bad);
    const auto p = tmp.write("huge_dim.bin", bad);
    REQUIRE_THROWS_WITH(GoldenFile::load(p),
                        Catch::Contains("wrong dims") && Catch::Contains("x_support"));
  }

  SECTION("trailing bytes") {
    auto bad = original;
    bad.insert(bad.end() - 8, {0, 0, 0, 0});
    reseal(bad);
    const auto p = tmp.write("trailing.bin", bad);
    REQUIRE_THROWS_WITH(GoldenFile::load(p), Catch::Contains("4 trailing bytes"));
  }

  SECTION("structural damage without resealing also reports the checksum") {
    auto bad = original;
    bad[kFirstDtype] = 9;
    const auto p = tmp.write("dtype9_stale.bin", bad);
    REQUIRE_THROWS_WITH(GoldenFile::load(p), Catch::Contains("unknown dtype code 9") &&
                                                 Catch::Contains("checksum mismatch"));
  }
}
