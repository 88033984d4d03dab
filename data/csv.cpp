#include "data/csv.h"

#include <charconv>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <string_view>

#include "data/check.h"
#include "data/files.h"

namespace mt::data {

namespace fs = std::filesystem;

namespace {

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r'))
    s.remove_suffix(1);
  return s;
}

std::string shorten(std::string_view s) {
  if (s.size() <= 40) return std::string(s);
  return std::string(s.substr(0, 37)) + "...";
}

}  // namespace

Session load_csv(const std::string& path, const CsvOptions& options) {
  const std::string stem = fs::path(path).stem().string();
  const std::string where = fmt::format("load_csv: {} (session '{}')", path, stem);
  MT_DATA_CHECK(std::isfinite(options.sampling_rate_hz) && options.sampling_rate_hz > 0,
                "{}: data.csv.sampling_rate_hz is {}; it must be a positive number of frames "
                "per second",
                where, options.sampling_rate_hz);
  std::error_code ec;
  MT_DATA_CHECK(fs::exists(path, ec), "load_csv: {}: no such file; check the path", path);
  std::ifstream in(path, std::ios::binary);
  MT_DATA_CHECK(in.good(), "load_csv: {}: cannot open the file for reading", path);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  // A UTF-8 byte order mark (Excel's "CSV UTF-8") is not part of the first cell.
  if (text.rfind("\xEF\xBB\xBF", 0) == 0) text.erase(0, 3);

  // Lines, with trailing blank lines dropped.
  std::vector<std::string_view> lines;
  {
    std::string_view rest(text);
    while (!rest.empty()) {
      const size_t nl = rest.find('\n');
      lines.push_back(rest.substr(0, nl));
      if (nl == std::string_view::npos) break;
      rest.remove_prefix(nl + 1);
    }
    while (!lines.empty() && trim(lines.back()).empty()) lines.pop_back();
  }
  MT_DATA_CHECK(!lines.empty(),
                "{}: the file is empty; expected one row per neuron with one "
                "comma-separated value per frame",
                where);

  Session s;
  s.name = stem;
  s.source = path;
  int64_t cols = -1;
  for (size_t li = 0; li < lines.size(); ++li) {
    const size_t line_no = li + 1;
    std::string_view line = lines[li];
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    MT_DATA_CHECK(!trim(line).empty(),
                  "{}: line {} is blank between rows; every line is one "
                  "neuron: remove the blank line",
                  where, line_no);
    int64_t col = 0;
    size_t pos = 0;
    while (true) {
      const size_t end = line.find(options.delimiter, pos);
      std::string_view cell = trim(
          line.substr(pos, end == std::string_view::npos ? std::string_view::npos : end - pos));
      ++col;
      MT_DATA_CHECK(!cell.empty(),
                    "{}: line {}, column {} is empty; every cell must hold a "
                    "number (write nan for a missing value, which is then reported)",
                    where, line_no, col);
      if (cell.front() == '+') cell.remove_prefix(1);
      float v = 0.0f;
      const auto [ptr, err] = std::from_chars(cell.data(), cell.data() + cell.size(), v);
      if (err == std::errc::result_out_of_range && ptr == cell.data() + cell.size()) {
        // Below the smallest f32 (e.g. 1e-400) reads as 0, as numpy's float32 cast does;
        // beyond the largest it is an error.
        const double wide = std::strtod(std::string(cell).c_str(), nullptr);
        MT_DATA_CHECK(std::abs(wide) < 1.0, "{}: line {}, column {}: '{}' is out of the float range",
                      where, line_no, col, shorten(cell));
        v = 0.0f;
      } else if (!(err == std::errc() && ptr == cell.data() + cell.size())) {
        // The usual causes: another delimiter (the whole line read as one cell), a header row,
        // quoted numbers.
        std::string hint;
        for (const char other : {';', '\t', ' ', '|'})
          if (other != options.delimiter && cell.find(other) != std::string_view::npos &&
              trim(line).find(options.delimiter) == std::string_view::npos) {
            hint = fmt::format("; the values seem to be separated by '{}', not '{}': set "
                               "data.csv.delimiter",
                               other == '\t' ? "\\t" : std::string(1, other),
                               options.delimiter == '\t' ? "\\t" : std::string(1, options.delimiter));
            break;
          }
        if (hint.empty() && cell.front() == '"')
          hint = "; quoted cells are not read: write the numbers without quotes";
        if (hint.empty() && line_no == 1)
          hint = "; the file must have no header row (one row per neuron, one column per frame, "
                 "numbers only)";
        MT_DATA_FAIL("{}: line {}, column {}: '{}' is not a number{}", where, line_no, col,
                     shorten(cell), hint);
      }
      s.activity.push_back(v);
      if (end == std::string_view::npos) break;
      pos = end + 1;
    }
    if (cols < 0) {
      cols = col;
    } else {
      MT_DATA_CHECK(col == cols,
                    "{}: line {} has {} columns but line 1 has {}; the rows are "
                    "ragged: every row (neuron) needs one value per frame",
                    where, line_no, col, cols);
    }
  }
  s.num_neurons = static_cast<int64_t>(lines.size());
  s.num_frames = cols;
  s.timestamps.resize(static_cast<size_t>(cols));
  for (int64_t t = 0; t < cols; ++t)
    s.timestamps[static_cast<size_t>(t)] = static_cast<double>(t) / options.sampling_rate_hz;
  validate(s);
  return s;
}

Dataset load_csv_folder(const std::string& folder, const CsvOptions& options) {
  const auto files = detail::list_files(folder, {".csv"}, "load_csv_folder");
  MT_DATA_CHECK(!files.empty(), "load_csv_folder: {}: no .csv files", folder);
  Dataset d;
  for (const auto& f : files) d.sessions.push_back(load_csv(f, options));
  validate(d);
  return d;
}

}  // namespace mt::data
