// Plain-text activity matrices. By default one row per neuron, one column per frame,
// comma-separated, no header (the layout of the zebrafish tectum recordings in ../shared/data,
// and what numpy.savetxt / MATLAB's writematrix write). The options read the other common layout,
// pandas' DataFrame.to_csv of a (frames, neurons) table: a header row of neuron names, a first
// column of frame labels or times, one row per frame.
#pragma once

#include <cstdint>
#include <string>

#include "data/session.h"

namespace mt::data {

struct CsvOptions {
  // Frames per second; timestamps are frame index / sampling_rate_hz unless time_column names
  // a column of times. The zebrafish tectum recordings are sampled at 2.2 Hz.
  double sampling_rate_hz = 1.0;
  char delimiter = ',';
  // Which axis of the table is time: 1 = columns are frames (rows are neurons, the default);
  // 0 = rows are frames (columns are neurons).
  int64_t time_axis = 1;
  // The first line holds labels (frame or neuron names), not activity.
  bool header = false;
  // The first column holds labels (neuron names, frame numbers), not activity.
  bool label_column = false;
  // time_axis 0 only: the column holding each frame's time in seconds, by its 1-based number or
  // (with header) its name; digits are always a number. It may be the label column. Empty: times
  // from sampling_rate_hz.
  std::string time_column;
};

// One file, one session named after the file stem. Cells may be quoted ("1.5", "name, with
// comma", "" for a quote inside). Blank lines at the end are ignored; a blank line between rows,
// a row with a different number of columns, an empty or non-numeric activity cell and an empty
// file are errors naming the file, the line and the column (1-based), with a hint at the option
// that reads the file when the cause looks like a header row, a label column or another
// delimiter.
Session load_csv(const std::string& path, const CsvOptions& options = {});
// Every *.csv in `folder` (not recursive), sorted by file name.
Dataset load_csv_folder(const std::string& folder, const CsvOptions& options = {});

}  // namespace mt::data
