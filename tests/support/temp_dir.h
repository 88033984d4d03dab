// Temporary folders and whole-file byte I/O for the tests that write files.
//
// TempDir makes a fresh, empty folder under the system's temporary folder and removes it with
// everything in it when it goes out of scope, so a failing REQUIRE leaves nothing behind.
// read_bytes and write_bytes move whole files in and out of memory and fail the test when the
// file cannot be opened or written, so that an I/O problem in the test itself is never mistaken
// for the behaviour under test.
#pragma once

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <ranges>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <utility>
#include <vector>

#include <catch2/catch.hpp>

namespace mt::testing {

// What write_bytes accepts besides std::string_view: a contiguous, sized run of one-byte
// elements (std::string, std::vector<char>, std::vector<unsigned char>, ...). Arrays are left
// out so that a string literal goes through std::string_view, without its terminating NUL.
template <class T>
concept ByteBuffer = (std::ranges::contiguous_range<const T&> &&
                      std::ranges::sized_range<const T&> &&
                      sizeof(std::ranges::range_value_t<const T&>) == 1 &&
                      !std::is_array_v<std::remove_cvref_t<T>>);

// The whole file as bytes, in the container the test works with. The file must open.
template <class Bytes = std::string>
Bytes read_bytes(const std::filesystem::path& path) {
  INFO("reading " << path.string());
  std::ifstream in(path, std::ios::binary);
  REQUIRE(in.good());
  return Bytes(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Replaces the file's contents with `bytes`. The file must open and be written in full.
inline void write_bytes(const std::filesystem::path& path, std::string_view bytes) {
  INFO("writing " << path.string());
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  out.close();
  REQUIRE(out.good());
}

template <ByteBuffer Bytes>
void write_bytes(const std::filesystem::path& path, const Bytes& bytes) {
  write_bytes(path, std::string_view(reinterpret_cast<const char*>(std::ranges::data(bytes)),
                                     std::ranges::size(bytes)));
}

// A fresh folder <system temp>/metatape_<prefix>_<pid>_<n>, removed recursively on destruction.
// The process id keeps test processes running side by side apart and n, counted over the whole
// process, keeps the instances within one apart; a name that is already taken (left by an
// earlier process with the same id) is skipped, never reused.
class TempDir {
 public:
  explicit TempDir(std::string_view prefix) {
    static std::atomic<unsigned long> counter{0};
    const std::filesystem::path base = std::filesystem::temp_directory_path();
    std::error_code ec;
    for (int attempt = 0; attempt < 100; ++attempt) {
      std::filesystem::path candidate =
          base / ("metatape_" + std::string(prefix) + "_" + std::to_string(::getpid()) + "_" +
                  std::to_string(counter++));
      if (std::filesystem::create_directory(candidate, ec)) {
        path_ = std::move(candidate);
        return;
      }
    }
    FAIL("could not create a temporary folder under " << base.string() << ": "
                                                      << (ec ? ec.message() : "names taken"));
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::filesystem::path& path() const { return path_; }

  // The path of `name` inside the folder; nothing is created.
  std::string file(std::string_view name) const { return (path_ / name).string(); }

  // Writes `bytes` to `name` inside the folder (see write_bytes) and returns the file's path.
  std::string write(std::string_view name, std::string_view bytes) const {
    const std::string p = file(name);
    write_bytes(p, bytes);
    return p;
  }
  template <ByteBuffer Bytes>
  std::string write(std::string_view name, const Bytes& bytes) const {
    const std::string p = file(name);
    write_bytes(p, bytes);
    return p;
  }

  // The names of the folder's entries, sorted.
  std::vector<std::string> entries() const {
    std::vector<std::string> out;
    for (const auto& e : std::filesystem::directory_iterator(path_))
      out.push_back(e.path().filename().string());
    std::sort(out.begin(), out.end());
    return out;
  }

 private:
  std::filesystem::path path_;
};

}  // namespace mt::testing
