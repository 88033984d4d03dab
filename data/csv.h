// Plain-text activity matrices: one row per neuron, one column per frame, comma-separated, no
// header (the layout of the zebrafish tectum recordings in ../shared/data).
#pragma once

#include <string>

#include "data/session.h"

namespace mt::data {

struct CsvOptions {
  // Frames per second; timestamps are frame index / sampling_rate_hz. The zebrafish tectum
  // recordings are sampled at 2.2 Hz.
  double sampling_rate_hz = 1.0;
  char delimiter = ',';
};

// One file, one session named after the file stem. Blank lines at the end are ignored; a blank
// line between rows, a row with a different number of columns, an empty or non-numeric cell and
// an empty file are errors naming the file, the line and the column (1-based).
Session load_csv(const std::string& path, const CsvOptions& options = {});
// Every *.csv in `folder` (not recursive), sorted by file name.
Dataset load_csv_folder(const std::string& folder, const CsvOptions& options = {});

}  // namespace mt::data
