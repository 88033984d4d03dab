#include "data/hdf5.h"

#include <hdf5.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <optional>

#include "data/check.h"
#include "data/files.h"

namespace mt::data {

namespace fs = std::filesystem;

namespace {

// Silences HDF5's automatic error-stack printing while a loader runs (the loader reports its own
// errors), and restores the previous handler afterwards.
class QuietErrors {
 public:
  QuietErrors() {
    H5Eget_auto2(H5E_DEFAULT, &func_, &data_);
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  }
  ~QuietErrors() { H5Eset_auto2(H5E_DEFAULT, func_, data_); }
  QuietErrors(const QuietErrors&) = delete;
  QuietErrors& operator=(const QuietErrors&) = delete;

 private:
  H5E_auto2_t func_ = nullptr;
  void* data_ = nullptr;
};

// Owns an hid_t and closes it with the matching H5?close.
class Handle {
 public:
  using Closer = herr_t (*)(hid_t);
  Handle() = default;
  Handle(hid_t id, Closer close) : id_(id), close_(close) {}
  Handle(Handle&& o) noexcept : id_(o.id_), close_(o.close_) { o.id_ = H5I_INVALID_HID; }
  Handle& operator=(Handle&& o) noexcept {
    std::swap(id_, o.id_);
    std::swap(close_, o.close_);
    return *this;
  }
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  ~Handle() {
    if (id_ >= 0 && close_) close_(id_);
  }
  hid_t get() const { return id_; }
  bool valid() const { return id_ >= 0; }

 private:
  hid_t id_ = H5I_INVALID_HID;
  Closer close_ = nullptr;
};

struct DatasetInfo {
  std::string path;
  std::vector<int64_t> dims;
  H5T_class_t type_class = H5T_NO_CLASS;
};

std::string dims_str(const std::vector<int64_t>& dims) {
  if (dims.size() == 1) return fmt::format("({},)", dims[0]);
  return fmt::format("({})", fmt::join(dims, ", "));
}

std::string strip_slash(std::string p) {
  while (!p.empty() && p.front() == '/') p.erase(p.begin());
  while (!p.empty() && p.back() == '/') p.pop_back();
  return p;
}

std::string parent_of(const std::string& p) {
  const size_t slash = p.rfind('/');
  return slash == std::string::npos ? std::string() : p.substr(0, slash);
}

std::string join_path(const std::string& group, const std::string& name) {
  return group.empty() ? name : group + "/" + name;
}

class File {
 public:
  File(const std::string& path, const std::string& where) : path_(path), where_(where) {
    std::error_code ec;
    MT_DATA_CHECK(fs::exists(path, ec), "load_hdf5: {}: no such file; check the path", path);
    MT_DATA_CHECK(fs::is_regular_file(path, ec), "load_hdf5: {}: not a regular file", path);
    const htri_t is = H5Fis_hdf5(path.c_str());
    MT_DATA_CHECK(is > 0,
                  "{}: not a readable HDF5 file; it is truncated or corrupt, or is not "
                  "HDF5: re-copy or re-export it",
                  where);
    file_ = Handle(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose);
    MT_DATA_CHECK(file_.valid(),
                  "{}: HDF5 cannot open the file; it is truncated or corrupt: "
                  "re-copy or re-export it",
                  where);
  }

  hid_t id() const { return file_.get(); }

  // True when every link along `p` exists and the last one resolves to a data set.
  bool has_dataset(const std::string& p) const {
    const std::string path = strip_slash(p);
    if (path.empty()) return false;
    size_t pos = 0;
    while (true) {
      const size_t slash = path.find('/', pos);
      const std::string prefix = path.substr(0, slash);
      if (H5Lexists(id(), prefix.c_str(), H5P_DEFAULT) <= 0) return false;
      if (slash == std::string::npos) break;
      pos = slash + 1;
    }
    if (H5Oexists_by_name(id(), path.c_str(), H5P_DEFAULT) <= 0) return false;
    Handle obj(H5Oopen(id(), path.c_str(), H5P_DEFAULT), H5Oclose);
    return obj.valid() && H5Iget_type(obj.get()) == H5I_DATASET;
  }

  DatasetInfo info(const std::string& p) const {
    DatasetInfo out;
    out.path = strip_slash(p);
    Handle ds(H5Dopen2(id(), out.path.c_str(), H5P_DEFAULT), H5Dclose);
    MT_DATA_CHECK(ds.valid(), "{}: cannot open data set '{}'", where_, out.path);
    Handle space(H5Dget_space(ds.get()), H5Sclose);
    const int rank = H5Sget_simple_extent_ndims(space.get());
    MT_DATA_CHECK(rank >= 0, "{}: cannot read the shape of data set '{}'", where_, out.path);
    std::vector<hsize_t> dims(static_cast<size_t>(rank));
    if (rank > 0) H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr);
    for (hsize_t d : dims) out.dims.push_back(static_cast<int64_t>(d));
    Handle type(H5Dget_type(ds.get()), H5Tclose);
    out.type_class = H5Tget_class(type.get());
    return out;
  }

  // Reads a numeric data set, converted by HDF5 to T (float or double), in stored (row-major)
  // order.
  template <typename T>
  std::vector<T> read(const DatasetInfo& info) const {
    MT_DATA_CHECK(info.type_class == H5T_FLOAT || info.type_class == H5T_INTEGER,
                  "{}: data set '{}' is not numeric (HDF5 type class {}); point the option at a "
                  "float or integer data set",
                  where_, info.path, static_cast<int>(info.type_class));
    // A file of a few KB may declare any shape: the size is checked before anything is allocated
    // (counted in double, which does not overflow).
    double elements = 1;
    for (int64_t d : info.dims) elements *= double(d);
    detail::check_fits_in_memory(
        elements * double(sizeof(T)),
        fmt::format("{}: data set '{}' {}", where_, info.path, dims_str(info.dims)),
        "check that the file is the recording meant (a corrupt file can declare any shape), or "
        "load it on a machine that holds it");
    const auto n = static_cast<int64_t>(elements);
    std::vector<T> out(static_cast<size_t>(n));
    if (n == 0) return out;
    Handle ds(H5Dopen2(id(), info.path.c_str(), H5P_DEFAULT), H5Dclose);
    const hid_t mem = std::is_same_v<T, float> ? H5T_NATIVE_FLOAT : H5T_NATIVE_DOUBLE;
    const herr_t rc = H5Dread(ds.get(), mem, H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data());
    MT_DATA_CHECK(rc >= 0,
                  "{}: reading data set '{}' {} failed; the file is truncated or corrupt, "
                  "or uses a compression filter this HDF5 build lacks: re-copy or re-export it",
                  where_, info.path, dims_str(info.dims));
    return out;
  }

  // A numeric attribute holding one number; absent: nullopt. Any other form (a string, an
  // array, a compound) is an error naming the attribute.
  // One element of a 2-D numeric data set, as double (row-major position `at`).
  double element(const DatasetInfo& info, int64_t at) const {
    Handle ds(H5Dopen2(id(), info.path.c_str(), H5P_DEFAULT), H5Dclose);
    Handle file_space(H5Dget_space(ds.get()), H5Sclose);
    const hsize_t start[2] = {hsize_t(at / info.dims[1]), hsize_t(at % info.dims[1])};
    const hsize_t count[2] = {1, 1};
    H5Sselect_hyperslab(file_space.get(), H5S_SELECT_SET, start, nullptr, count, nullptr);
    Handle mem_space(H5Screate_simple(2, count, nullptr), H5Sclose);
    double v = 0;
    MT_DATA_CHECK(H5Dread(ds.get(), H5T_NATIVE_DOUBLE, mem_space.get(), file_space.get(),
                          H5P_DEFAULT, &v) >= 0,
                  "{}: reading data set '{}' failed; the file is truncated or corrupt", where_,
                  info.path);
    return v;
  }

  std::optional<double> double_attribute(const std::string& object, const char* name) const {
    if (H5Aexists_by_name(id(), object.c_str(), name, H5P_DEFAULT) <= 0) return std::nullopt;
    Handle attr(H5Aopen_by_name(id(), object.c_str(), name, H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
    MT_DATA_CHECK(attr.valid(), "{}: cannot open the '{}' attribute of '{}'; the file is corrupt",
                  where_, name, object);
    Handle type(H5Aget_type(attr.get()), H5Tclose);
    const H5T_class_t type_class = H5Tget_class(type.get());
    Handle space(H5Aget_space(attr.get()), H5Sclose);
    const hssize_t count = H5Sget_simple_extent_npoints(space.get());
    MT_DATA_CHECK((type_class == H5T_FLOAT || type_class == H5T_INTEGER) && count == 1,
                  "{}: the '{}' attribute of '{}' is {}; it must be one number (NWB: frames per "
                  "second, a float)",
                  where_, name, object,
                  type_class == H5T_STRING ? std::string("a string")
                  : count <= 0 ? std::string("empty")
                  : count != 1 ? fmt::format("an array of {} values", count)
                               : fmt::format("of HDF5 type class {}", int(type_class)));
    double v = 0;
    MT_DATA_CHECK(H5Aread(attr.get(), H5T_NATIVE_DOUBLE, &v) >= 0,
                  "{}: cannot read the '{}' attribute of '{}'; the file is corrupt", where_, name,
                  object);
    return v;
  }

  bool is_nwb() const {
    return detail::extension(path_) == ".nwb" || H5Aexists(id(), "nwb_version") > 0;
  }

  // Every data set in the file, in name order.
  std::vector<DatasetInfo> all_datasets() const {
    struct Ctx {
      const File* self;
      std::vector<std::string> names;
    } ctx{this, {}};
    auto cb = [](hid_t group, const char* name, const H5L_info_t*, void* op) -> herr_t {
      auto* c = static_cast<Ctx*>(op);
      if (H5Oexists_by_name(group, name, H5P_DEFAULT) <= 0) return 0;
      Handle obj(H5Oopen(group, name, H5P_DEFAULT), H5Oclose);
      if (obj.valid() && H5Iget_type(obj.get()) == H5I_DATASET) c->names.emplace_back(name);
      return 0;
    };
    H5Lvisit(id(), H5_INDEX_NAME, H5_ITER_INC, cb, &ctx);
    std::vector<DatasetInfo> out;
    for (const auto& n : ctx.names) out.push_back(info(n));
    return out;
  }

  // "a (3, 4), b (4,), ..." for error messages.
  std::string listing() const {
    const auto all = all_datasets();
    if (all.empty()) return "no data sets";
    std::vector<std::string> parts;
    for (size_t i = 0; i < all.size() && i < 30; ++i)
      parts.push_back(fmt::format("{} {}", all[i].path, dims_str(all[i].dims)));
    if (all.size() > 30) parts.push_back(fmt::format("... ({} in all)", all.size()));
    return fmt::format("{}", fmt::join(parts, ", "));
  }

 private:
  std::string path_;
  std::string where_;
  Handle file_;
};

std::vector<double> read_vector(const File& f, const DatasetInfo& info, const std::string& what,
                                const std::string& where) {
  const bool vector_like =
      info.dims.size() == 1 || (info.dims.size() == 2 && (info.dims[0] == 1 || info.dims[1] == 1));
  MT_DATA_CHECK(vector_like,
                "{}: {} data set '{}' has shape {}; it must be 1-D (one entry per "
                "frame)",
                where, what, info.path, dims_str(info.dims));
  return f.read<double>(info);
}

// Kept frames (0-based indices into the timestamps) from 1-based [start, stop] ranges stored as
// a 2 x K (or K x 2) integer array.
std::vector<int64_t> read_frame_ranges(const File& f, const DatasetInfo& info, int64_t num_times,
                                       const std::string& where) {
  MT_DATA_CHECK(info.dims.size() == 2 && (info.dims[0] == 2 || info.dims[1] == 2),
                "{}: frame-range data set '{}' has shape {}; it must be 2 x K [start, stop] pairs",
                where, info.path, dims_str(info.dims));
  const std::vector<double> v = f.read<double>(info);
  const bool rows = info.dims[0] == 2;  // row 0 starts, row 1 stops
  const int64_t k = rows ? info.dims[1] : info.dims[0];
  std::vector<int64_t> frames;
  double previous_stop = 0;
  for (int64_t r = 0; r < k; ++r) {
    const double a = rows ? v[static_cast<size_t>(r)] : v[static_cast<size_t>(2 * r)];
    const double b = rows ? v[static_cast<size_t>(k + r)] : v[static_cast<size_t>(2 * r + 1)];
    MT_DATA_CHECK(a >= 1 && b >= a && b <= static_cast<double>(num_times) && a == std::floor(a) &&
                      b == std::floor(b),
                  "{}: frame range {} of '{}' is [{}, {}], not within the {} timestamps (1-based, "
                  "inclusive); pass data.hdf5.time_axis and data.hdf5.timestamps explicitly",
                  where, r, info.path, a, b, num_times);
    // In order and apart: each frame kept once (so at most num_times frames in all).
    MT_DATA_CHECK(a > previous_stop,
                  "{}: frame range {} of '{}' is [{}, {}], which starts at or before the end of "
                  "the range before it ({}); the ranges must be in order and must not overlap",
                  where, r, info.path, a, b, previous_stop);
    previous_stop = b;
    for (auto i = static_cast<int64_t>(a); i <= static_cast<int64_t>(b); ++i)
      frames.push_back(i - 1);
  }
  return frames;
}

}  // namespace

Session load_hdf5(const std::string& path, const Hdf5Options& options) {
  const std::string stem = fs::path(path).stem().string();
  const std::string where = fmt::format("load_hdf5: {} (session '{}')", path, stem);
  MT_DATA_CHECK(std::isfinite(options.dt) && options.dt > 0,
                "{}: data.hdf5.dt is {}; it must be a positive number of seconds per frame",
                where, options.dt);
  QuietErrors quiet;
  const File f(path, where);
  const bool nwb = f.is_nwb();

  // ---- which data set holds the activity
  std::string data_path = strip_slash(options.dataset);
  if (!data_path.empty()) {
    MT_DATA_CHECK(f.has_dataset(data_path),
                  "{}: data set '{}' (data.hdf5.dataset) not found; the file holds: {}; set "
                  "data.hdf5.dataset to the activity data set's path",
                  where, data_path, f.listing());
  } else if (f.has_dataset("gcamp/trace_array")) {
    data_path = "gcamp/trace_array";
  } else {
    std::vector<std::string> candidates;
    for (const auto& d : f.all_datasets()) {
      const size_t slash = d.path.rfind('/');
      const std::string leaf = slash == std::string::npos ? d.path : d.path.substr(slash + 1);
      if (leaf == "data" && d.dims.size() == 2) candidates.push_back(d.path);
    }
    MT_DATA_CHECK(!candidates.empty(),
                  "{}: no default activity data set (neither gcamp/trace_array nor a 2-D NWB "
                  "TimeSeries 'data'); the file holds: {}; set data.hdf5.dataset to the "
                  "activity data set's path",
                  where, f.listing());
    MT_DATA_CHECK(candidates.size() == 1,
                  "{}: several 2-D 'data' data sets could hold the activity ({}); set "
                  "data.hdf5.dataset to the one to load",
                  where, fmt::join(candidates, ", "));
    data_path = candidates[0];
  }
  const DatasetInfo data = f.info(data_path);
  MT_DATA_CHECK(data.dims.size() == 2,
                "{}: data set '{}' has shape {}; the activity must be 2-D (neurons and frames, in "
                "either order){}",
                where, data_path, dims_str(data.dims),
                data.dims.size() != 1 ? ""
                : nwb ? "; a single trace is stored as a (T, 1) array in NWB (time first)"
                      : "; a single trace can be stored as a (1, T) array (or set "
                        "data.hdf5.time_axis for (T, 1))");

  // ---- frame times
  std::optional<DatasetInfo> ts_info;
  std::string ts_path = strip_slash(options.timestamps);
  if (!ts_path.empty()) {
    MT_DATA_CHECK(f.has_dataset(ts_path),
                  "{}: timestamps data set '{}' (data.hdf5.timestamps) not found; the file "
                  "holds: {}; set data.hdf5.timestamps to the frame-time data set's path",
                  where, ts_path, f.listing());
    ts_info = f.info(ts_path);
  } else if (f.has_dataset("timing/timestamp_confocal")) {
    ts_info = f.info("timing/timestamp_confocal");
  } else if (f.has_dataset(join_path(parent_of(data_path), "timestamps"))) {
    ts_info = f.info(join_path(parent_of(data_path), "timestamps"));
  }
  std::vector<double> times;
  if (ts_info) times = read_vector(f, *ts_info, "timestamps", where);
  const auto num_times = static_cast<int64_t>(times.size());

  // ---- orientation
  const int64_t d0 = data.dims[0], d1 = data.dims[1];
  int axis = -1;
  std::vector<int64_t> kept;  // frames picked out of `times` by frame ranges

  auto try_frame_ranges = [&]() -> bool {
    std::string fr_path = strip_slash(options.frame_ranges);
    if (!fr_path.empty()) {
      MT_DATA_CHECK(f.has_dataset(fr_path),
                    "{}: frame-range data set '{}' (data.hdf5.frame_ranges) not found; the "
                    "file holds: {}",
                    where, fr_path, f.listing());
    } else if (f.has_dataset("gcamp/idx_splits")) {
      fr_path = "gcamp/idx_splits";
    } else {
      return false;
    }
    kept = read_frame_ranges(f, f.info(fr_path), num_times, where);
    const auto nk = static_cast<int64_t>(kept.size());
    if (options.time_axis != TimeAxis::Auto) {
      const int64_t len = options.time_axis == TimeAxis::Axis0 ? d0 : d1;
      MT_DATA_CHECK(nk == len,
                    "{}: time_axis {} of '{}' {} has {} frames, but timestamps '{}' has {} entries "
                    "and frame ranges '{}' keep {}; check data.hdf5.time_axis",
                    where, static_cast<int>(options.time_axis), data_path, dims_str(data.dims), len,
                    ts_info->path, num_times, fr_path, nk);
      axis = static_cast<int>(options.time_axis);
    } else if (nk == d0 && nk == d1) {
      MT_DATA_CHECK(nwb,
                    "{}: cannot tell which axis of '{}' {} is time: the {} frames kept by '{}' "
                    "match both dims; set data.hdf5.time_axis to 0 or 1",
                    where, data_path, dims_str(data.dims), nk, fr_path);
      axis = 0;
    } else if (nk == d0 || nk == d1) {
      axis = nk == d0 ? 0 : 1;
    } else {
      return false;
    }
    return true;
  };

  if (ts_info) {
    const bool m0 = num_times == d0, m1 = num_times == d1;
    if (options.time_axis != TimeAxis::Auto) {
      const int a = static_cast<int>(options.time_axis);
      if ((a == 0 && !m0) || (a == 1 && !m1)) {
        MT_DATA_CHECK(try_frame_ranges(),
                      "{}: data.hdf5.time_axis = {} but that dim of '{}' {} has {} frames and "
                      "timestamps '{}' has {} entries; fix time_axis or data.hdf5.timestamps",
                      where, a, data_path, dims_str(data.dims), a == 0 ? d0 : d1, ts_info->path,
                      num_times);
      } else {
        axis = a;
      }
    } else if (m0 && m1) {
      MT_DATA_CHECK(
          nwb,
          "{}: cannot tell which axis of '{}' {} is time: timestamps '{}' has {} entries, "
          "matching both dims (ambiguous orientation); set data.hdf5.time_axis to 0 "
          "or 1",
          where, data_path, dims_str(data.dims), ts_info->path, num_times);
      axis = 0;
    } else if (m0 || m1) {
      axis = m0 ? 0 : 1;
    } else {
      MT_DATA_CHECK(try_frame_ranges(),
                    "{}: timestamps '{}' has {} entries but '{}' is {}: neither dim is the time "
                    "axis; set data.hdf5.timestamps to the frame times of this data set (or "
                    "data.hdf5.time_axis and data.hdf5.frame_ranges)",
                    where, ts_info->path, num_times, data_path, dims_str(data.dims));
    }
  } else if (options.time_axis != TimeAxis::Auto) {
    axis = static_cast<int>(options.time_axis);
  } else if (nwb) {
    axis = 0;
  } else {
    MT_DATA_FAIL(
        "{}: cannot tell which axis of '{}' {} is time: the file has no timestamps data "
        "set and is not NWB; set data.hdf5.time_axis to 0 or 1, or "
        "data.hdf5.timestamps to the frame times' data set",
        where, data_path, dims_str(data.dims));
  }

  Session s;
  s.name = stem;
  s.source = path;
  s.num_frames = axis == 0 ? d0 : d1;
  s.num_neurons = axis == 0 ? d1 : d0;
  // Before anything of that size is allocated (a file of a few KB may declare any shape).
  detail::check_fits_in_memory(
      4.0 * double(s.num_neurons) * double(s.num_frames) * 2.0 + 8.0 * double(s.num_frames),
      fmt::format("{}: data set '{}' ({} neurons x {} frames, as f32, read then reordered)",
                  where, data_path, s.num_neurons, s.num_frames),
      "load a file of a size this machine holds (or check that its declared shape is right)");

  // ---- times for each frame
  if (ts_info) {
    if (!kept.empty()) {
      s.timestamps.reserve(kept.size());
      for (int64_t i : kept) s.timestamps.push_back(times[static_cast<size_t>(i)]);
    } else {
      s.timestamps = std::move(times);
    }
  } else {
    double start = 0.0, step = options.dt;
    const std::string st = join_path(parent_of(data_path), "starting_time");
    if (f.has_dataset(st)) {
      // NWB stores starting_time as a scalar (a 1-element array is read the same way).
      const DatasetInfo st_info = f.info(st);
      int64_t count = 1;
      for (int64_t d : st_info.dims) count *= d;
      MT_DATA_CHECK(count == 1,
                    "{}: starting_time data set '{}' has shape {}; NWB's starting_time is one "
                    "number (the first frame's time in seconds)",
                    where, st, dims_str(st_info.dims));
      const std::vector<double> v = f.read<double>(st_info);
      start = v.at(0);
      MT_DATA_CHECK(std::isfinite(start), "{}: starting_time '{}' is {}; it must be a finite "
                    "number of seconds", where, st, start);
      if (auto rate = f.double_attribute(st, "rate")) {
        MT_DATA_CHECK(std::isfinite(*rate) && *rate > 0,
                      "{}: the 'rate' attribute of '{}' is {}; it must be a positive number of "
                      "frames per second",
                      where, st, *rate);
        step = 1.0 / *rate;
      }
    }
    s.timestamps.resize(static_cast<size_t>(s.num_frames));
    for (int64_t t = 0; t < s.num_frames; ++t)
      s.timestamps[static_cast<size_t>(t)] = start + static_cast<double>(t) * step;
  }

  // ---- activity, neuron-major
  std::vector<float> raw = f.read<float>(data);
  if (data.type_class == H5T_FLOAT) {
    // A finite float64 beyond the float32 range becomes inf in HDF5's conversion: say so, rather
    // than let validate report an inf the file does not hold (as the npz loader does).
    const auto inf = std::find_if(raw.begin(), raw.end(), [](float v) { return std::isinf(v); });
    if (inf != raw.end()) {
      const int64_t at = inf - raw.begin();
      const double stored = f.element(data, at);  // that element alone, as stored
      const int64_t stored_row = at / d1, stored_col = at % d1;
      MT_DATA_CHECK(std::isinf(stored),
                    "{}: data set '{}' holds {} at neuron {}, frame {}, beyond the float32 range "
                    "the recordings are kept in (|x| <= 3.4e38); rescale the recording",
                    where, data_path, stored, axis == 1 ? stored_row : stored_col,
                    axis == 1 ? stored_col : stored_row);
    }
  }
  if (axis == 1) {
    s.activity = std::move(raw);  // stored (neurons, frames)
  } else {
    s.activity.resize(raw.size());
    const int64_t T = s.num_frames, N = s.num_neurons;
    for (int64_t t = 0; t < T; ++t)
      for (int64_t n = 0; n < N; ++n)
        s.activity[static_cast<size_t>(n * T + t)] = raw[static_cast<size_t>(t * N + n)];
  }
  validate(s);
  return s;
}

Dataset load_hdf5_folder(const std::string& folder, const Hdf5Options& options) {
  const auto files = detail::list_files(folder, {".h5", ".hdf5", ".nwb"}, "load_hdf5_folder");
  MT_DATA_CHECK(!files.empty(), "load_hdf5_folder: {}: no .h5, .hdf5 or .nwb files", folder);
  Dataset d;
  for (const auto& f : files) d.sessions.push_back(load_hdf5(f, options));
  validate(d);
  return d;
}

}  // namespace mt::data
