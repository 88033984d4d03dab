// HDF5 and NWB recordings, read with the HDF5 C library. One file is one session.
//
// The orientation of the activity matrix is taken from the file, never assumed: files written by
// column-major languages (Julia, MATLAB, Fortran) store the transpose of what the writer saw, so
// the same recording can be (neurons, frames) in one file and (frames, neurons) in another.
// Rules, in order (data/README.md has the details):
//   1. `time_axis` given: that dim is time.
//   2. A timestamps data set: the time axis is the dim whose length equals the number of
//      timestamps. If both dims match, it is ambiguous (error asking for time_axis), except in an
//      NWB file, whose TimeSeries convention (time, channels) settles it. If neither matches and
//      the file lists the frames it kept as 1-based [start, stop] ranges into the timestamps
//      (`frame_ranges`), the number of kept frames decides and the timestamps are those frames'.
//   3. No timestamps data set: an NWB TimeSeries is (time, channels) by convention, with times
//      from its `starting_time` and `rate` when present; any other file is an error asking for
//      time_axis.
#pragma once

#include <string>

#include "data/session.h"

namespace mt::data {

enum class TimeAxis { Auto = -1, Axis0 = 0, Axis1 = 1 };

struct Hdf5Options {
  // Path of the 2-D activity data set. Empty: `gcamp/trace_array` when present (the Flavell lab
  // C. elegans format), else the one 2-D data set named `data` (an NWB TimeSeries, e.g.
  // processing/ophys/Fluorescence/RoiResponseSeries/data).
  std::string dataset;
  // Path of the 1-D frame times in seconds. Empty: `timing/timestamp_confocal` when present, else
  // the `timestamps` data set next to the activity (NWB). With none, NWB's `starting_time` (with
  // its `rate` attribute) gives the times, or frame index x dt.
  std::string timestamps;
  // Path of the kept-frame ranges (2 x K 1-based [start, stop] pairs into the timestamps), used
  // only when the timestamps do not have one entry per frame. Empty: `gcamp/idx_splits` when
  // present.
  std::string frame_ranges;
  TimeAxis time_axis = TimeAxis::Auto;
  // Seconds per frame when the file has no times at all.
  double dt = 1.0;
};

// Session name = file stem. Throws mt::Error naming the file, the data set and the fix.
Session load_hdf5(const std::string& path, const Hdf5Options& options = {});
// Every *.h5, *.hdf5 and *.nwb in `folder` (not recursive), sorted by file name.
Dataset load_hdf5_folder(const std::string& folder, const Hdf5Options& options = {});

}  // namespace mt::data
