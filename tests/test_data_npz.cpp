// The .npz reader and writer (data/npz.h) against files written by numpy
// (tests/fixtures/data/, made by tools/reference/make_data_fixtures.py), a write/read round
// trip, and every way an archive can be unusable.
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <iterator>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <fmt/format.h>

#include "data/load.h"
#include "data/npz.h"
#include "data/session.h"
#include "support/golden_file.h"
#include "support/temp_dir.h"

#ifndef METATAPE_SOURCE_DIR
#error "METATAPE_SOURCE_DIR must be defined as a string literal naming the repository root"
#endif

using Catch::Contains;
using mt::testing::read_bytes;
using mt::testing::source_dir;
using mt::testing::TempDir;
using mt::testing::write_bytes;
using namespace mt::data;

namespace {

std::string fixture(const std::string& name) {
  return source_dir() + "/tests/fixtures/data/" + name;
}

// The fixtures' values: M[n, t] = 10 n + t + 0.25 (n % 2); t = 0.5 + 0.125 frame.
void check_fixture(const Session& s, int64_t n, int64_t t, bool has_t, double dt = 1.0) {
  REQUIRE(s.num_neurons == n);
  REQUIRE(s.num_frames == t);
  REQUIRE(s.activity.size() == static_cast<size_t>(n * t));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < t; ++j)
      REQUIRE(s.at(i, j) == static_cast<float>(10.0 * i + j + 0.25 * (i % 2)));
  for (int64_t j = 0; j < t; ++j)
    REQUIRE(s.timestamps[static_cast<size_t>(j)] ==
            (has_t ? 0.5 + 0.125 * j : static_cast<double>(j) * dt));
}

Session small_session(const std::string& name, int64_t n, int64_t t) {
  Session s;
  s.name = name;
  s.num_neurons = n;
  s.num_frames = t;
  for (int64_t i = 0; i < n * t; ++i) s.activity.push_back(std::sin(0.37f * static_cast<float>(i)));
  for (int64_t j = 0; j < t; ++j) s.timestamps.push_back(100.0 + 0.45 * static_cast<double>(j));
  return s;
}

}  // namespace

TEST_CASE("npz: numpy-written fixtures load with the right values", "[data][npz]") {
  SECTION("stored, float32, C order, with t") {
    const Session s = load_npz(fixture("stored_f4_c.npz"));
    CHECK(s.name == "stored_f4_c");
    CHECK(s.source == fixture("stored_f4_c.npz"));
    check_fixture(s, 3, 5, true);
  }
  SECTION("deflated, float32, C order, with t") {
    check_fixture(load_npz(fixture("deflated_f4_c.npz")), 4, 7, true);
  }
  SECTION("stored, float64, Fortran order, with t") {
    check_fixture(load_npz(fixture("stored_f8_fortran.npz")), 3, 6, true);
  }
  SECTION("deflated, float64, Fortran order, no t: timestamps from dt") {
    check_fixture(load_npz(fixture("deflated_f8_fortran.npz")), 5, 4, false);
    NpzOptions o;
    o.dt = 0.25;
    check_fixture(load_npz(fixture("deflated_f8_fortran.npz"), o), 5, 4, false, 0.25);
  }
  SECTION("deflated, float32, Fortran order") {
    check_fixture(load_npz(fixture("deflated_f4_fortran_no_t.npz")), 2, 9, false);
  }
  SECTION(".npy format versions 2.0 and 3.0") {
    check_fixture(load_npz(fixture("v2_stored_f4.npz")), 3, 4, true);
    check_fixture(load_npz(fixture("v3_deflated_f8_fortran.npz")), 4, 3, false);
  }
}

TEST_CASE("npz: round trip through save_npz, stored and deflated", "[data][npz]") {
  TempDir dir("test_data_npz");
  const Session s = small_session("roundtrip", 7, 33);
  for (bool compress : {false, true}) {
    const std::string path = dir.file(compress ? "deflated.npz" : "stored.npz");
    save_npz(s, path, {compress});
    const Session r = load_npz(path);
    CHECK(r.name == (compress ? "deflated" : "stored"));
    REQUIRE(r.num_neurons == s.num_neurons);
    REQUIRE(r.num_frames == s.num_frames);
    CHECK(r.activity == s.activity);      // bit for bit
    CHECK(r.timestamps == s.timestamps);  // t is stored as float64
  }
  // Overwriting goes through a temporary file and a rename: no temporary is left behind.
  save_npz(small_session("other", 2, 3), dir.file("stored.npz"));
  CHECK(load_npz(dir.file("stored.npz")).num_neurons == 2);
  CHECK(dir.entries().size() == 2);
}

TEST_CASE("npz: save_npz writes the same bytes for the same arrays, whenever it runs",
          "[data][npz]") {
  TempDir dir("test_data_npz_reproducible");
  const Session s = small_session("same", 3, 8);
  save_npz(s, dir.file("a.npz"));
  save_npz(s, dir.file("b.npz"));
  auto bytes_of = [](const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  const std::string a = bytes_of(dir.file("a.npz"));
  CHECK(a == bytes_of(dir.file("b.npz")));
  // The first member's local header (signature PK\3\4) holds a fixed DOS time and date,
  // 12:00 on 2000-01-01 in any time zone (hour in bits 11-15 of the time; year - 1980 in bits
  // 9-15, month in bits 5-8, day in bits 0-4 of the date), not the time of writing; the two
  // files above could otherwise differ across a 2-second boundary.
  REQUIRE(a.size() > 30);
  REQUIRE(a.compare(0, 4, "PK\3\4") == 0);
  auto u16_at = [&](size_t i) {
    return unsigned(static_cast<unsigned char>(a[i])) | unsigned(static_cast<unsigned char>(a[i + 1])) << 8;
  };
  CHECK(u16_at(10) == 12u << 11);
  CHECK(u16_at(12) == (20u << 9 | 1u << 5 | 1u));
}

TEST_CASE("npz: a folder loads sorted by file name", "[data][npz]") {
  TempDir dir("test_data_npz");
  save_npz(small_session("x", 3, 10), dir.file("b_session.npz"));
  save_npz(small_session("x", 4, 12), dir.file("a_session.npz"));
  dir.write("README.md", "not a session\n");
  for (const Dataset& d :
       {load_npz_folder(dir.path().string()), load_folder(dir.path().string())}) {
    REQUIRE(d.size() == 2);
    CHECK(d[0].name == "a_session");
    CHECK(d[0].num_neurons == 4);
    CHECK(d[1].name == "b_session");
    CHECK(d.total_neurons() == 7);
    CHECK(d.max_neurons() == 4);
    CHECK(d.find("b_session") == 1);
    CHECK(d.find("nope") == -1);
  }
}

TEST_CASE("npz: a folder's odd entries: hidden files skipped, broken links and non-UTF-8 names "
          "named",
          "[data][npz]") {
  TempDir dir("test_data_npz");
  save_npz(small_session("x", 3, 10), dir.file("a.npz"));
  save_npz(small_session("x", 3, 10), dir.file(".hidden.npz"));  // and macOS's "._a.npz"
  save_npz(small_session("x", 3, 10), dir.file("._a.npz"));
  CHECK(load_folder(dir.path().string()).size() == 1);
  std::filesystem::create_symlink(dir.file("gone.npz"), dir.file("b.npz"));
  REQUIRE_THROWS_WITH(load_folder(dir.path().string()),
                      Contains("b.npz") && Contains("symbolic link") &&
                          Contains("fix or remove the link"));
  std::filesystem::remove(dir.file("b.npz"));
  save_npz(small_session("x", 3, 10), dir.file("c\xff.npz"));
  REQUIRE_THROWS_WITH(load_folder(dir.path().string()),
                      Contains("c\\xFF.npz") && Contains("not valid UTF-8"));
  std::filesystem::remove(dir.file("c\xff.npz"));
  save_npz(small_session("x", 3, 10), dir.file("d\xed\xa0\x80.npz"));  // a UTF-16 surrogate
  REQUIRE_THROWS_WITH(load_folder(dir.path().string()), Contains("not valid UTF-8"));
  std::filesystem::remove(dir.file("d\xed\xa0\x80.npz"));
  save_npz(small_session("x", 3, 10), dir.file("\xc3\xa9t\xc3\xa9.npz"));  // "été"
  CHECK(load_folder(dir.path().string()).size() == 2);
}

TEST_CASE("npz: unusable archives are refused with the file and the fix", "[data][npz]") {
  SECTION("missing file") {
    REQUIRE_THROWS_WITH(load_npz("/nonexistent/folder/missing.npz"),
                        Contains("missing.npz") && Contains("no such file"));
  }
  SECTION("missing M") {
    REQUIRE_THROWS_WITH(load_npz(fixture("bad_missing_M.npz")),
                        Contains("bad_missing_M.npz") && Contains("no member 'M'") &&
                            Contains("X.npy") && Contains("np.savez(path, M=activity)"));
  }
  SECTION("two members named M.npy") {
    REQUIRE_THROWS_WITH(load_npz(fixture("bad_duplicate_M.npz")),
                        Contains("bad_duplicate_M.npz") && Contains("two members of the same name"));
  }
  SECTION("NaN, and float64 beyond float32, name the session, neuron and frame") {
    REQUIRE_THROWS_WITH(load_npz(fixture("bad_f8_beyond_f4.npz")),
                        Contains("bad_f8_beyond_f4.npz") && Contains("1e+300") &&
                            Contains("neuron 2, frame 4") && Contains("float32 range"));
    REQUIRE_THROWS_WITH(load_npz(fixture("bad_nan.npz")),
                        Contains("bad_nan.npz") && Contains("session 'bad_nan'") &&
                            Contains("neuron 1, frame 2 is nan") && Contains("interpolate"));
  }
  SECTION("integer dtype") {
    REQUIRE_THROWS_WITH(load_npz(fixture("bad_int.npz")), Contains("bad_int.npz") &&
                                                              Contains("'<i4' is not supported") &&
                                                              Contains("astype(np.float32)"));
  }
  SECTION("big-endian dtype") {
    REQUIRE_THROWS_WITH(load_npz(fixture("bad_big_endian.npz")),
                        Contains("bad_big_endian.npz") && Contains("'>f4' is not supported"));
  }
  SECTION("1-D M") {
    REQUIRE_THROWS_WITH(load_npz(fixture("bad_1d.npz")), Contains("bad_1d.npz") &&
                                                             Contains("(5,) is not 2-D") &&
                                                             Contains("M[None, :]"));
  }
  SECTION("M stored (frames, neurons)") {
    REQUIRE_THROWS_WITH(load_npz(fixture("bad_transposed.npz")),
                        Contains("bad_transposed.npz") && Contains("matches M's first dim") &&
                            Contains("save M.T"));
  }
  SECTION("truncated archive") {
    TempDir dir("test_data_npz");
    for (const char* name : {"stored_f4_c.npz", "deflated_f4_c.npz"}) {
      std::vector<char> bytes = read_bytes<std::vector<char>>(fixture(name));
      for (size_t keep : {bytes.size() - 10, bytes.size() / 2, size_t{30}, size_t{0}}) {
        const std::string path = dir.file(fmt::format("truncated_{}_{}", keep, name));
        write_bytes(path,
                    std::vector<char>(bytes.begin(), bytes.begin() + static_cast<long>(keep)));
        REQUIRE_THROWS_WITH(load_npz(path), Contains(path) && Contains("not a readable zip") &&
                                                Contains("truncated or corrupt"));
      }
    }
  }
  SECTION("corrupt member data (CRC or deflate error)") {
    TempDir dir("test_data_npz");
    for (const char* name : {"stored_f4_c.npz", "deflated_f4_c.npz"}) {
      std::vector<char> bytes = read_bytes<std::vector<char>>(fixture(name));
      // Flip bytes inside the first member's data, which starts at byte 35 (30-byte local
      // header and the name M.npy) or 55 (plus numpy's 20-byte zip64 extra field) and is over
      // 100 bytes long.
      for (size_t i = 60; i < 80; ++i) bytes[i] = static_cast<char>(bytes[i] ^ 0x5A);
      const std::string path = dir.file(std::string("corrupt_") + name);
      write_bytes(path, bytes);
      REQUIRE_THROWS_WITH(load_npz(path),
                          Contains(path) && Contains("member M") && Contains("corrupt"));
    }
  }
  SECTION("not a zip at all") {
    TempDir dir("test_data_npz");
    const std::string path = dir.write("text.npz", "hello, this is not an archive\n");
    REQUIRE_THROWS_WITH(load_npz(path), Contains("text.npz") && Contains("not a readable zip"));
  }
  SECTION("empty folder") {
    TempDir dir("test_data_npz");
    REQUIRE_THROWS_WITH(load_npz_folder(dir.path().string()), Contains("no .npz files"));
    REQUIRE_THROWS_WITH(load_folder(dir.path().string()), Contains("no recordings"));
  }
  SECTION("save_npz refuses an invalid session and a missing folder") {
    Session s = small_session("bad", 2, 4);
    s.activity[5] = std::numeric_limits<float>::infinity();
    REQUIRE_THROWS_WITH(save_npz(s, "/tmp/never_written.npz"),
                        Contains("session 'bad'") && Contains("neuron 1, frame 1 is inf"));
    REQUIRE_THROWS_WITH(save_npz(small_session("ok", 2, 4), "/nonexistent/dir/x.npz"),
                        Contains("/nonexistent/dir") && Contains("does not exist"));
  }
}

TEST_CASE("npy: header parsing edge cases", "[data][npz]") {
  const float v[6] = {1, 2, 3, 4, 5, 6};
  std::vector<char> npy = make_npy_f32({2, 3}, v);
  CHECK(npy.size() % 64 == 24);  // 64-byte aligned header, then 24 data bytes
  NpyArray a = parse_npy(npy, "mem");
  CHECK(a.descr == "<f4");
  CHECK(a.shape == std::vector<int64_t>{2, 3});
  CHECK(a.to_float() == std::vector<float>(v, v + 6));
  CHECK(a.to_double()[5] == 6.0);

  std::vector<char> truncated(npy.begin(), npy.end() - 4);
  REQUIRE_THROWS_WITH(parse_npy(truncated, "mem"),
                      Contains("needs 24 data bytes") && Contains("truncated"));
  std::vector<char> bad_magic = npy;
  bad_magic[1] = 'X';
  REQUIRE_THROWS_WITH(parse_npy(bad_magic, "mem"), Contains("not a .npy array"));
  std::vector<char> bad_version = npy;
  bad_version[6] = 9;
  REQUIRE_THROWS_WITH(parse_npy(bad_version, "mem"), Contains("version 9.0 is not supported"));
  // An unsupported dtype: the fix names the array it is about (t = np.arange(T) is common).
  const int64_t frames[3] = {0, 1, 2};
  const std::vector<char> int_t = make_npy_i64({3}, frames);
  REQUIRE_THROWS_WITH(parse_npy(int_t, "s.npz, member t"),
                      Contains("'<i8' is not supported") && Contains("t.astype(np.float64)"));
  REQUIRE_THROWS_WITH(parse_npy(int_t, "s.npz, member M"), Contains("M.astype(np.float32)"));
  REQUIRE_THROWS_WITH(parse_npy(int_t, "x.npy"), Contains("x.astype(np.float32)"));
}
