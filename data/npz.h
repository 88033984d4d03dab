// POCO's processed format: a folder with one NumPy .npz archive per session, each holding the
// activity matrix `M` (neurons x frames) and optionally the frame times `t`. Read and written
// with libzip; the .npy members are parsed here (format versions 1.0, 2.0 and 3.0).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "data/session.h"

namespace mt::data {

struct NpzOptions {
  // Seconds per frame, used for the timestamps (frame index x dt) when an archive has no `t`.
  double dt = 1.0;
};

// One archive: `M` (N, T) as '<f4' or '<f8', C or Fortran order, stored or deflated; `t` (T)
// optional. Session name = file stem. Throws mt::Error naming the file and the fix.
Session load_npz(const std::string& path, const NpzOptions& options = {});
// Every *.npz in `folder` (not recursive), sorted by file name.
Dataset load_npz_folder(const std::string& folder, const NpzOptions& options = {});

struct NpzWriteOptions {
  bool compress = false;  // deflate the members (np.savez_compressed) instead of storing them
};

// Writes `M` as '<f4' (N, T) C order and `t` as '<f8' (T) to `path`, atomically: the archive is
// written to a temporary file in the same folder and renamed over `path`, so a reader never sees
// a half-written file. The session is validated first.
void save_npz(const Session& session, const std::string& path, const NpzWriteOptions& options = {});

// Any arrays as one archive (np.load(path)[name]), written atomically as save_npz writes.
// `what` starts the error messages ("predict", ...).
struct NpzMember {
  std::string name;       // without ".npy"
  std::vector<char> npy;  // a whole .npy file (make_npy_*)
};
void save_npz_members(const std::string& path, const std::vector<NpzMember>& members,
                      const NpzWriteOptions& options, const std::string& what);

// A parsed .npy file: its header and the element bytes as stored (little-endian).
struct NpyArray {
  std::string descr;           // '<f4' or '<f8'
  bool fortran_order = false;  // as stored
  std::vector<int64_t> shape;
  std::vector<char> bytes;  // the whole file
  size_t data_offset = 0;   // where the elements start in `bytes`

  int64_t numel() const;
  // The elements converted, in C (row-major) order whatever the stored order.
  std::vector<float> to_float() const;
  std::vector<double> to_double() const;
};
// Parses a whole .npy file held in memory. `what` names it in errors ("x.npz, member M.npy").
NpyArray parse_npy(std::vector<char> bytes, const std::string& what);
// Serialises a C-order array as .npy version 1.0 (descr '<f4', '<f8' or '<i8').
std::vector<char> make_npy_f32(const std::vector<int64_t>& shape, const float* data);
std::vector<char> make_npy_f64(const std::vector<int64_t>& shape, const double* data);
std::vector<char> make_npy_i64(const std::vector<int64_t>& shape, const int64_t* data);  // '<i8'


}  // namespace mt::data
