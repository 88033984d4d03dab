// The HDF5 / NWB loader (data/hdf5.h): orientation taken from the file (Julia-style (T, N),
// (N, T), NWB (time, channels), kept-frame ranges), its options, every error path, and the six
// real C. elegans recordings in ../shared/data (skipped with a warning when absent).
#include <hdf5.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "data/hdf5.h"
#include "data/load.h"
#include "data/session.h"
#include "support/temp_dir.h"

#ifndef METATAPE_SOURCE_DIR
#error "METATAPE_SOURCE_DIR must be defined as a string literal naming the repository root"
#endif

namespace fs = std::filesystem;
using Catch::Contains;
using mt::testing::read_bytes;
using mt::testing::TempDir;
using namespace mt::data;

namespace {

// Writes HDF5 files with the C library, creating intermediate groups.
class H5Writer {
 public:
  explicit H5Writer(const std::string& path) {
    file_ = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    REQUIRE(file_ >= 0);
    lcpl_ = H5Pcreate(H5P_LINK_CREATE);
    H5Pset_create_intermediate_group(lcpl_, 1);
  }
  ~H5Writer() {
    H5Pclose(lcpl_);
    H5Fclose(file_);
  }
  void dataset(const std::string& name, const std::vector<hsize_t>& dims,
               const std::vector<double>& values, hid_t file_type = H5T_IEEE_F64LE) {
    hid_t space = H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr);
    hid_t ds = H5Dcreate2(file_, name.c_str(), file_type, space, lcpl_, H5P_DEFAULT, H5P_DEFAULT);
    REQUIRE(ds >= 0);
    REQUIRE(H5Dwrite(ds, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data()) >= 0);
    H5Dclose(ds);
    H5Sclose(space);
  }
  void double_attribute(const std::string& object, const char* name, double v) {
    hid_t space = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate_by_name(file_, object.c_str(), name, H5T_IEEE_F64LE, space, H5P_DEFAULT,
                                H5P_DEFAULT, H5P_DEFAULT);
    REQUIRE(a >= 0);
    H5Awrite(a, H5T_NATIVE_DOUBLE, &v);
    H5Aclose(a);
    H5Sclose(space);
  }
  // An attribute of `object` holding `values` as a 1-D array.
  void array_attribute(const std::string& object, const char* name,
                       const std::vector<double>& values) {
    const hsize_t n = values.size();
    hid_t space = H5Screate_simple(1, &n, nullptr);
    hid_t a = H5Acreate_by_name(file_, object.c_str(), name, H5T_IEEE_F64LE, space, H5P_DEFAULT,
                                H5P_DEFAULT, H5P_DEFAULT);
    REQUIRE(a >= 0);
    H5Awrite(a, H5T_NATIVE_DOUBLE, values.data());
    H5Aclose(a);
    H5Sclose(space);
  }
  void string_attribute_of(const std::string& object, const char* name, const std::string& v) {
    hid_t type = H5Tcopy(H5T_C_S1);
    H5Tset_size(type, v.size());
    hid_t space = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate_by_name(file_, object.c_str(), name, type, space, H5P_DEFAULT,
                                H5P_DEFAULT, H5P_DEFAULT);
    REQUIRE(a >= 0);
    H5Awrite(a, type, v.data());
    H5Aclose(a);
    H5Sclose(space);
    H5Tclose(type);
  }
  // A chunked data set declared with `dims` and nothing written: a small file that claims any
  // size.
  void declared_dataset(const std::string& name, const std::vector<hsize_t>& dims) {
    hid_t space = H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    const std::vector<hsize_t> chunk(dims.size(), 2);
    H5Pset_chunk(dcpl, static_cast<int>(chunk.size()), chunk.data());
    hid_t ds = H5Dcreate2(file_, name.c_str(), H5T_IEEE_F64LE, space, lcpl_, dcpl, H5P_DEFAULT);
    REQUIRE(ds >= 0);
    H5Dclose(ds);
    H5Pclose(dcpl);
    H5Sclose(space);
  }
  void string_attribute(const char* name, const std::string& v) {
    hid_t type = H5Tcopy(H5T_C_S1);
    H5Tset_size(type, v.size());
    hid_t space = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(file_, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
    REQUIRE(a >= 0);
    H5Awrite(a, type, v.data());
    H5Aclose(a);
    H5Sclose(space);
    H5Tclose(type);
  }

 private:
  hid_t file_ = -1;
  hid_t lcpl_ = -1;
};

// Activity value of neuron n at frame t in these tests.
double value(int64_t n, int64_t t) {
  return 100.0 * static_cast<double>(n) + 0.5 * static_cast<double>(t);
}

// (T, N) row-major: how a (N, T) Julia array is stored.
std::vector<double> time_major(int64_t n, int64_t t) {
  std::vector<double> v;
  for (int64_t j = 0; j < t; ++j)
    for (int64_t i = 0; i < n; ++i) v.push_back(value(i, j));
  return v;
}
std::vector<double> neuron_major(int64_t n, int64_t t) {
  std::vector<double> v;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < t; ++j) v.push_back(value(i, j));
  return v;
}
std::vector<double> ramp(int64_t t, double start = 10.0, double step = 0.6) {
  std::vector<double> v;
  for (int64_t j = 0; j < t; ++j) v.push_back(start + step * static_cast<double>(j));
  return v;
}

void check_values(const Session& s, int64_t n, int64_t t) {
  REQUIRE(s.num_neurons == n);
  REQUIRE(s.num_frames == t);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < t; ++j) REQUIRE(s.at(i, j) == static_cast<float>(value(i, j)));
}

hsize_t h(int64_t v) {
  return static_cast<hsize_t>(v);
}

}  // namespace

TEST_CASE("hdf5: orientation comes from the timestamps", "[data][hdf5]") {
  TempDir dir("test_data_hdf5");
  const int64_t N = 5, T = 12;
  SECTION("Flavell layout stored (T, N), as Julia writes it") {
    const std::string path = dir.file("worm-like.h5");
    {
      H5Writer w(path);
      w.dataset("gcamp/trace_array", {h(T), h(N)}, time_major(N, T));
      w.dataset("timing/timestamp_confocal", {h(T)}, ramp(T));
    }
    const Session s = load_hdf5(path);
    CHECK(s.name == "worm-like");
    CHECK(s.source == path);
    check_values(s, N, T);
    CHECK(s.timestamps == ramp(T));
    CHECK(s.frame_interval() == Approx(0.6));
  }
  SECTION("the same data stored (N, T), float32") {
    const std::string path = dir.file("neuron-major.hdf5");
    {
      H5Writer w(path);
      w.dataset("gcamp/trace_array", {h(N), h(T)}, neuron_major(N, T), H5T_IEEE_F32LE);
      w.dataset("timing/timestamp_confocal", {h(T)}, ramp(T));
    }
    check_values(load_hdf5(path), N, T);
  }
  SECTION("explicit dataset and timestamps options, a (T, 1) timestamps array") {
    const std::string path = dir.file("custom.h5");
    {
      H5Writer w(path);
      w.dataset("rec/dff", {h(T), h(N)}, time_major(N, T));
      w.dataset("rec/frame_times", {h(T), 1}, ramp(T, 0.0, 0.5));
    }
    Hdf5Options o;
    o.dataset = "/rec/dff";
    o.timestamps = "rec/frame_times";
    const Session s = load_hdf5(path, o);
    check_values(s, N, T);
    CHECK(s.timestamps == ramp(T, 0.0, 0.5));
  }
  SECTION("kept-frame ranges pick the frames out of a longer timestamp series") {
    // 20 timestamps, traces of 12 frames: frames 1..5 and 8..14 (1-based, inclusive) were kept.
    const std::string path = dir.file("ranges.h5");
    {
      H5Writer w(path);
      w.dataset("gcamp/trace_array", {h(T), h(N)}, time_major(N, T));
      w.dataset("timing/timestamp_confocal", {20}, ramp(20));
      w.dataset("gcamp/idx_splits", {2, 2}, {1, 8, 5, 14}, H5T_STD_I64LE);
    }
    const Session s = load_hdf5(path);
    check_values(s, N, T);
    std::vector<double> expect;
    const std::vector<double> all = ramp(20);
    for (int k = 0; k < 5; ++k) expect.push_back(all[static_cast<size_t>(k)]);
    for (int k = 7; k < 14; ++k) expect.push_back(all[static_cast<size_t>(k)]);
    CHECK(s.timestamps == expect);
  }
}

TEST_CASE("hdf5: NWB TimeSeries are (time, channels)", "[data][hdf5]") {
  TempDir dir("test_data_hdf5");
  const int64_t N = 4, T = 10;
  const std::string series = "processing/ophys/Fluorescence/RoiResponseSeries";
  SECTION("with a timestamps sibling") {
    const std::string path = dir.file("session.nwb");
    {
      H5Writer w(path);
      w.string_attribute("nwb_version", "2.6.0");
      w.dataset(series + "/data", {h(T), h(N)}, time_major(N, T), H5T_IEEE_F32LE);
      w.dataset(series + "/timestamps", {h(T)}, ramp(T, 3.0, 0.1));
      w.dataset("acquisition/TwoPhotonSeries/timestamps", {7}, ramp(7));  // not 2-D data
    }
    const Session s = load_folder(path)[0];
    check_values(s, N, T);
    CHECK(s.timestamps == ramp(T, 3.0, 0.1));
  }
  SECTION("with starting_time and rate, square data") {
    // Square data is ambiguous by length, but NWB's convention says time is the first dim.
    const std::string path = dir.file("square.h5");
    {
      H5Writer w(path);
      w.string_attribute("nwb_version", "2.6.0");
      w.dataset(series + "/data", {h(N), h(N)}, time_major(N, N));
      w.dataset(series + "/starting_time", {1}, {2.0});
      w.double_attribute(series + "/starting_time", "rate", 4.0);
    }
    const Session s = load_hdf5(path);
    check_values(s, N, N);
    CHECK(s.timestamps == std::vector<double>{2.0, 2.25, 2.5, 2.75});
  }
  SECTION("with a scalar starting_time (as pynwb writes it); a rate of 0 is refused") {
    for (const double rate : {4.0, 0.0}) {
      const std::string path = dir.file(rate > 0 ? "scalar.h5" : "rate0.h5");
      {
        H5Writer w(path);
        w.string_attribute("nwb_version", "2.6.0");
        w.dataset(series + "/data", {h(T), h(N)}, time_major(N, T));
        w.dataset(series + "/starting_time", {}, {2.0});  // rank 0: a scalar data space
        w.double_attribute(series + "/starting_time", "rate", rate);
      }
      if (rate > 0) {
        const Session s = load_hdf5(path);
        check_values(s, N, T);
        CHECK(s.timestamps[1] == 2.25);
      } else {
        CHECK_THROWS_WITH(load_hdf5(path), Contains("rate0.h5") && Contains("'rate' attribute") &&
                                               Contains("positive number of frames per second"));
      }
    }
  }
}

TEST_CASE("hdf5: unusable files and options are refused with the file and the fix",
          "[data][hdf5]") {
  TempDir dir("test_data_hdf5");
  const int64_t N = 5, T = 12;
  const std::string good = dir.file("good.h5");
  {
    H5Writer w(good);
    w.dataset("gcamp/trace_array", {h(T), h(N)}, time_major(N, T));
    w.dataset("timing/timestamp_confocal", {h(T)}, ramp(T));
  }
  SECTION("missing file") {
    REQUIRE_THROWS_WITH(load_hdf5(dir.file("absent.h5")),
                        Contains("absent.h5") && Contains("no such file"));
    REQUIRE_THROWS_WITH(load_folder(dir.file("absent_folder")),
                        Contains("absent_folder") && Contains("no such file or folder"));
  }
  SECTION("missing dataset path") {
    Hdf5Options o;
    o.dataset = "gcamp/nope";
    REQUIRE_THROWS_WITH(load_hdf5(good, o), Contains("good.h5") && Contains("'gcamp/nope'") &&
                                                Contains("not found") &&
                                                Contains("gcamp/trace_array (12, 5)") &&
                                                Contains("data.hdf5.dataset"));
  }
  SECTION("missing timestamps path") {
    Hdf5Options o;
    o.timestamps = "timing/absent";
    REQUIRE_THROWS_WITH(load_hdf5(good, o), Contains("good.h5") && Contains("'timing/absent'") &&
                                                Contains("data.hdf5.timestamps"));
  }
  SECTION("no default dataset") {
    const std::string path = dir.file("other.h5");
    {
      H5Writer w(path);
      w.dataset("traces", {h(N), h(T)}, neuron_major(N, T));
    }
    REQUIRE_THROWS_WITH(load_hdf5(path), Contains("other.h5") && Contains("no default activity") &&
                                             Contains("traces (5, 12)") &&
                                             Contains("data.hdf5.dataset"));
  }
  SECTION("ambiguous orientation") {
    const std::string path = dir.file("square.h5");
    {
      H5Writer w(path);
      w.dataset("gcamp/trace_array", {h(T), h(T)}, time_major(T, T));
      w.dataset("timing/timestamp_confocal", {h(T)}, ramp(T));
    }
    REQUIRE_THROWS_WITH(load_hdf5(path), Contains("square.h5") && Contains("ambiguous") &&
                                             Contains("matching both dims") &&
                                             Contains("time_axis"));
    Hdf5Options o;
    o.time_axis = TimeAxis::Axis0;
    check_values(load_hdf5(path, o), T, T);
    o.time_axis = TimeAxis::Axis1;  // the transpose
    const Session s = load_hdf5(path, o);
    CHECK(s.at(2, 7) == static_cast<float>(value(7, 2)));
  }
  SECTION("no timestamps and not NWB") {
    const std::string path = dir.file("bare.h5");
    {
      H5Writer w(path);
      w.dataset("traces", {h(N), h(T)}, neuron_major(N, T));
    }
    Hdf5Options o;
    o.dataset = "traces";
    REQUIRE_THROWS_WITH(load_hdf5(path, o), Contains("bare.h5") &&
                                                Contains("cannot tell which axis") &&
                                                Contains("time_axis"));
    o.time_axis = TimeAxis::Axis1;
    o.dt = 0.5;
    const Session s = load_hdf5(path, o);
    check_values(s, N, T);
    CHECK(s.timestamps[3] == 1.5);
  }
  SECTION("timestamps matching neither dim") {
    const std::string path = dir.file("mismatch.h5");
    {
      H5Writer w(path);
      w.dataset("gcamp/trace_array", {h(T), h(N)}, time_major(N, T));
      w.dataset("timing/timestamp_confocal", {7}, ramp(7));
    }
    REQUIRE_THROWS_WITH(load_hdf5(path), Contains("mismatch.h5") && Contains("7 entries") &&
                                             Contains("neither dim"));
    Hdf5Options o;
    o.time_axis = TimeAxis::Axis0;
    REQUIRE_THROWS_WITH(load_hdf5(path, o), Contains("time_axis = 0") && Contains("12 frames"));
  }
  SECTION("NaN names the session, file, neuron and frame (after reorientation)") {
    const std::string path = dir.file("nan.h5");
    std::vector<double> v = time_major(N, T);
    v[static_cast<size_t>(7 * N + 3)] = std::nan("");  // frame 7, neuron 3
    {
      H5Writer w(path);
      w.dataset("gcamp/trace_array", {h(T), h(N)}, v);
      w.dataset("timing/timestamp_confocal", {h(T)}, ramp(T));
    }
    REQUIRE_THROWS_WITH(load_hdf5(path), Contains("session 'nan'") && Contains("nan.h5") &&
                                             Contains("neuron 3, frame 7 is nan"));
  }
  SECTION("non-increasing timestamps") {
    const std::string path = dir.file("backwards.h5");
    std::vector<double> ts = ramp(T);
    ts[4] = ts[3];
    {
      H5Writer w(path);
      w.dataset("gcamp/trace_array", {h(T), h(N)}, time_major(N, T));
      w.dataset("timing/timestamp_confocal", {h(T)}, ts);
    }
    REQUIRE_THROWS_WITH(load_hdf5(path),
                        Contains("backwards.h5") && Contains("not increasing at frame 4"));
  }
  SECTION("1-D activity") {
    const std::string path = dir.file("vector.h5");
    {
      H5Writer w(path);
      w.dataset("gcamp/trace_array", {h(T)}, ramp(T));
    }
    REQUIRE_THROWS_WITH(load_hdf5(path), Contains("vector.h5") && Contains("must be 2-D"));
  }
  SECTION("truncated and non-HDF5 files") {
    const std::string bytes = read_bytes(good);
    const std::string cut = dir.write("cut.h5", bytes.substr(0, bytes.size() / 3));
    REQUIRE_THROWS_WITH(load_hdf5(cut), Contains("cut.h5") && Contains("truncated or corrupt"));
    const std::string text = dir.write("text.h5", "not hdf5\n");
    REQUIRE_THROWS_WITH(load_hdf5(text), Contains("text.h5") && Contains("not a readable HDF5"));
  }
  SECTION("a folder mixing file kinds") {
    dir.write("extra.csv", "1,2,3\n");
    REQUIRE_THROWS_WITH(load_folder(dir.path().string()),
                        Contains("mixes file kinds") && Contains(".csv") && Contains(".h5"));
  }
}

TEST_CASE("hdf5: corrupt attributes, declared sizes, wide values and frame ranges are named",
          "[data][hdf5]") {
  TempDir dir("test_data_hdf5");
  const int64_t N = 4, T = 10;
  const std::string series = "processing/ophys/Fluorescence/RoiResponseSeries";
  SECTION("an NWB rate that is not one number") {
    // An array was read into one double (a 4096-element one crashed the loader); a string was
    // ignored, giving 1 s per frame.
    for (const std::string kind : {"array", "string"}) {
      const std::string path = dir.file("rate_" + kind + ".nwb");
      {
        H5Writer w(path);
        w.dataset(series + "/data", {h(T), h(N)}, time_major(N, T));
        w.dataset(series + "/starting_time", {}, {0.0});
        if (kind == "array")
          w.array_attribute(series + "/starting_time", "rate", std::vector<double>(4096, 30.0));
        else
          w.string_attribute_of(series + "/starting_time", "rate", "30.0");
      }
      CHECK_THROWS_WITH(load_hdf5(path),
                        Contains("rate_" + kind + ".nwb") && Contains("'rate' attribute") &&
                            Contains(kind == "array" ? "an array of 4096 values" : "a string") &&
                            Contains("must be one number"));
    }
    // One number stored as a 1-element array is one number.
    const std::string one = dir.file("rate_one.nwb");
    {
      H5Writer w(one);
      w.dataset(series + "/data", {h(T), h(N)}, time_major(N, T));
      w.dataset(series + "/starting_time", {}, {0.0});
      w.array_attribute(series + "/starting_time", "rate", {4.0});
    }
    CHECK(load_hdf5(one).timestamps[1] == 0.25);
  }
  SECTION("a float64 beyond the float32 range is named as such, not as a missing value") {
    const std::string path = dir.file("wide.h5");
    std::vector<double> v = time_major(N, T);
    v[static_cast<size_t>(7 * N + 3)] = 1e39;  // frame 7, neuron 3
    {
      H5Writer w(path);
      w.dataset("gcamp/trace_array", {h(T), h(N)}, v);
      w.dataset("timing/timestamp_confocal", {h(T)}, ramp(T));
    }
    CHECK_THROWS_WITH(load_hdf5(path), Contains("wide.h5") && Contains("1e+39") &&
                                           Contains("neuron 3, frame 7") &&
                                           Contains("float32 range") && Contains("rescale"));
  }
  SECTION("a declared size past memory is refused before anything is allocated") {
    const std::string path = dir.file("huge_times.h5");
    {
      H5Writer w(path);
      w.dataset("gcamp/trace_array", {h(T), h(N)}, time_major(N, T));
      w.declared_dataset("timing/timestamp_confocal", {hsize_t(1) << 50});
    }
    CHECK(fs::file_size(path) < 100000);
    CHECK_THROWS_WITH(load_hdf5(path), Contains("huge_times.h5") &&
                                           Contains("'timing/timestamp_confocal'") &&
                                           Contains("corrupt file can declare any shape"));
  }
  SECTION("frame ranges that overlap") {
    const std::string path = dir.file("overlap.h5");
    {
      H5Writer w(path);
      w.dataset("gcamp/trace_array", {h(T), h(N)}, time_major(N, T));
      w.dataset("timing/timestamp_confocal", {20}, ramp(20));
      w.dataset("gcamp/idx_splits", {2, 2}, {1, 5, 6, 10});  // [1, 6] and [5, 10]
    }
    CHECK_THROWS_WITH(load_hdf5(path), Contains("overlap.h5") && Contains("frame range 1") &&
                                           Contains("must not overlap"));
  }
  SECTION("1-D NWB data: the hint gives NWB's orientation") {
    const std::string path = dir.file("trace.nwb");
    {
      H5Writer w(path);
      w.dataset(series + "/data", {h(T)}, ramp(T));
    }
    Hdf5Options o;
    o.dataset = series + "/data";
    CHECK_THROWS_WITH(load_hdf5(path, o), Contains("trace.nwb") && Contains("must be 2-D") &&
                                           Contains("(T, 1) array in NWB"));
  }
}

TEST_CASE("hdf5: the six C. elegans recordings load with no options", "[data][hdf5][real]") {
  const std::string dir = METATAPE_SOURCE_DIR "/../shared/data/celegans-flavell2023";
  if (!fs::exists(dir)) {
    WARN("skipped: " << dir << " is missing (the real recordings live in ../shared/data)");
    return;
  }
  const auto t0 = std::chrono::steady_clock::now();
  const Dataset d = load_folder(dir);
  const double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  INFO("loaded in " << ms << " ms");
  struct Expect {
    const char* name;
    int64_t T, N;
  };
  const Expect expect[] = {{"2022-05-02-01-data", 1137, 136}, {"2022-07-26-31-data", 800, 146},
                           {"2022-07-26-38-data", 800, 141},  {"2022-07-27-31-data", 800, 145},
                           {"2022-07-27-38-data", 800, 135},  {"2022-08-02-31-data", 800, 130}};
  REQUIRE(d.size() == 6);
  for (int64_t i = 0; i < 6; ++i) {
    const Session& s = d[i];
    INFO(s.describe());
    CHECK(s.name == expect[i].name);
    CHECK(s.num_frames == expect[i].T);
    CHECK(s.num_neurons == expect[i].N);
    CHECK(s.frame_interval() == Approx(0.6).margin(0.05));  // about 1.67 Hz
  }
  // Orientation: gcamp/trace_array[frame, neuron] as stored in the first file.
  CHECK(d[0].at(0, 0) == Approx(-0.5990019));
  CHECK(d[0].at(1, 0) == Approx(0.87805296));
  CHECK(d[0].at(0, 1) == Approx(-0.46619465));
  WARN("C. elegans folder (6 sessions) loaded in " << ms << " ms");
}
