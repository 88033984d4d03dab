// Output of the benchmark binaries (C++ and CUDA): JSON written through a temporary file in the
// destination folder and a rename, so a reader never sees half a file and a failed run leaves
// the previous result in place. No fmt here: nvcc compiles the CUDA benchmarks that include it.
#pragma once

#include <unistd.h>

#include <cstdarg>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>

namespace bench {

// Writes text to path (creating its folder) through path.tmp.<pid> and a rename. Throws
// std::runtime_error naming the file on failure, with the temporary file removed.
inline void write_atomically(const std::filesystem::path& path, const std::string& text) {
  namespace fs = std::filesystem;
  if (path.has_parent_path()) fs::create_directories(path.parent_path());
  fs::path tmp = path;
  tmp += ".tmp." + std::to_string(::getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw std::runtime_error("cannot open " + tmp.string() + " for writing");
    out << text;
    out.flush();
    if (!out) {
      out.close();
      fs::remove(tmp);
      throw std::runtime_error("failed writing " + tmp.string());
    }
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) {
    fs::remove(tmp);
    throw std::runtime_error("cannot rename " + tmp.string() + " to " + path.string() + ": " +
                             ec.message());
  }
}

// printf into a growing string (the CUDA benchmarks assemble their JSON this way).
inline void appendf(std::string& out, const char* format, ...)
    __attribute__((format(printf, 2, 3)));
inline void appendf(std::string& out, const char* format, ...) {
  va_list args;
  va_start(args, format);
  va_list again;
  va_copy(again, args);
  const int n = std::vsnprintf(nullptr, 0, format, args);
  va_end(args);
  if (n > 0) {
    const size_t at = out.size();
    out.resize(at + size_t(n) + 1);
    std::vsnprintf(out.data() + at, size_t(n) + 1, format, again);
    out.resize(at + size_t(n));
  }
  va_end(again);
}

// The end of a CUDA benchmark: writes json to json_path (when given; atomically) and returns the
// exit status: 1 when the file cannot be written or a kernel gave a wrong result, else 0.
inline int finish(const std::string& json_path, const std::string& json, bool all_correct) {
  if (!json_path.empty()) {
    try {
      write_atomically(json_path, json);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "error: %s\n", e.what());
      return 1;
    }
    std::printf("\nwrote %s\n", json_path.c_str());
  }
  if (!all_correct) {
    std::fprintf(stderr, "some kernels gave wrong results (see above)\n");
    return 1;
  }
  return 0;
}

}  // namespace bench
