// One entry point for any supported recording: picks the loader by file extension.
#pragma once

#include <string>

#include "data/csv.h"
#include "data/hdf5.h"
#include "data/npz.h"
#include "data/session.h"

namespace mt::data {

struct LoadOptions {
  NpzOptions npz;
  Hdf5Options hdf5;
  CsvOptions csv;
};

// The loader a file's extension selects, named as its LoadOptions member (and config key):
// "npz", "hdf5" (.h5, .hdf5, .nwb) or "csv"; "" for any other file.
const char* loader_name(const std::string& path);

// `path` is a folder or one file. A folder is loaded file by file, sorted by name, with the
// loader its files' extension names: .npz (POCO's format), .h5 / .hdf5 / .nwb (HDF5, NWB),
// .csv; other files (README.md, ...) are ignored. A folder mixing kinds, or holding none, is an
// error. One file gives a one-session dataset. Every session is validated.
Dataset load_folder(const std::string& path, const LoadOptions& options = {});
// One file, by extension.
Session load_session(const std::string& path, const LoadOptions& options = {});

}  // namespace mt::data
