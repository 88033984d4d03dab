#include "data/load.h"

#include <filesystem>
#include <map>

#include "data/check.h"
#include "data/files.h"

namespace mt::data {

namespace fs = std::filesystem;

namespace {

enum class Kind { Npz, Hdf5, Csv, Unknown };

Kind kind_of(const std::string& path) {
  const std::string ext = detail::extension(path);
  if (ext == ".npz") return Kind::Npz;
  if (ext == ".h5" || ext == ".hdf5" || ext == ".nwb") return Kind::Hdf5;
  if (ext == ".csv") return Kind::Csv;
  return Kind::Unknown;
}

const char* kind_name(Kind k) {
  switch (k) {
    case Kind::Npz:
      return ".npz";
    case Kind::Hdf5:
      return ".h5/.hdf5/.nwb";
    case Kind::Csv:
      return ".csv";
    default:
      return "unknown";
  }
}

}  // namespace

const char* loader_name(const std::string& path) {
  constexpr const char* kNames[] = {"npz", "hdf5", "csv", ""};  // by Kind
  return kNames[static_cast<int>(kind_of(path))];
}

Session load_session(const std::string& path, const LoadOptions& options) {
  switch (kind_of(path)) {
    case Kind::Npz:
      return load_npz(path, options.npz);
    case Kind::Hdf5:
      return load_hdf5(path, options.hdf5);
    case Kind::Csv:
      return load_csv(path, options.csv);
    default:
      MT_DATA_FAIL(
          "load_session: {}: unknown file type '{}'; supported: .npz (POCO's format), "
          ".h5 / .hdf5 / .nwb (HDF5, NWB), .csv (neurons x frames)",
          path, detail::extension(path));
  }
}

Dataset load_folder(const std::string& path, const LoadOptions& options) {
  std::error_code ec;
  MT_DATA_CHECK(fs::exists(path, ec), "load_folder: {}: no such file or folder; check the path",
                path);
  Dataset d;
  if (!fs::is_directory(path, ec)) {
    d.sessions.push_back(load_session(path, options));
    return d;
  }
  const auto files =
      detail::list_files(path, {".npz", ".h5", ".hdf5", ".nwb", ".csv"}, "load_folder");
  MT_DATA_CHECK(!files.empty(),
                "load_folder: {}: no recordings (.npz, .h5, .hdf5, .nwb or .csv "
                "files) in the folder",
                path);
  std::map<Kind, std::string> kinds;  // kind -> first file of that kind
  for (const auto& f : files) kinds.emplace(kind_of(f), fs::path(f).filename().string());
  if (kinds.size() > 1) {
    std::vector<std::string> parts;
    for (const auto& [k, f] : kinds) parts.push_back(fmt::format("{} ({})", kind_name(k), f));
    MT_DATA_FAIL(
        "load_folder: {}: the folder mixes file kinds: {}; keep one kind per folder (move "
        "the others into a folder of their own), or point data.path at a single file",
        path, fmt::join(parts, ", "));
  }
  for (const auto& f : files) d.sessions.push_back(load_session(f, options));
  validate(d);
  return d;
}

}  // namespace mt::data
