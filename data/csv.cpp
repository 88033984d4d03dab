#include "data/csv.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <string_view>
#include <vector>

#include "data/check.h"
#include "data/files.h"

namespace mt::data {

namespace fs = std::filesystem;

namespace {

bool is_blank(char c, char delimiter) {
  return (c == ' ' || c == '\t') && c != delimiter;
}

std::string_view trim(std::string_view s, char delimiter = ',') {
  while (!s.empty() && is_blank(s.front(), delimiter)) s.remove_prefix(1);
  while (!s.empty() && (is_blank(s.back(), delimiter) || s.back() == '\r')) s.remove_suffix(1);
  return s;
}

std::string shorten(std::string_view s) {
  if (s.size() <= 40) return std::string(s);
  return std::string(s.substr(0, 37)) + "...";
}

std::string show(char delimiter) {
  return delimiter == '\t' ? std::string("\\t") : std::string(1, delimiter);
}

// "; the values seem to be separated by ';', not ','..." when `line` holds no `delimiter` but
// another usual one; "" otherwise.
std::string delimiter_hint(std::string_view line, char delimiter) {
  if (line.find(delimiter) != std::string_view::npos) return "";
  for (const char other : {';', '\t', ',', ' ', '|'})
    if (other != delimiter && trim(line, delimiter).find(other) != std::string_view::npos)
      return fmt::format("; the values seem to be separated by '{}', not '{}': set "
                         "data.csv.delimiter",
                         show(other), show(delimiter));
  return "";
}

struct Cell {
  std::string text;  // without the quotes, "" unescaped, spaces around trimmed
  bool quoted = false;
};

// Splits one line into cells. A cell may be quoted (RFC 4180): delimiters inside the quotes
// belong to the cell and "" is one quote. `cells` is reused between lines (its strings keep
// their capacity). Returns the number of cells, or throws naming the line.
size_t split_cells(std::string_view line, char delimiter, std::vector<Cell>& cells,
                   const std::string& where, size_t line_no) {
  size_t n = 0;
  size_t pos = 0;
  while (true) {
    if (delimiter == ' ') {
      // Space-separated (numpy.savetxt's default, aligned columns): a run of spaces and tabs is
      // one separator, and those at the start or end of the line separate nothing.
      while (pos < line.size() && (line[pos] == ' ' || line[pos] == '\t')) ++pos;
      if (pos == line.size() && n > 0) break;
    }
    if (n == cells.size()) cells.emplace_back();
    Cell& cell = cells[n++];
    cell.text.clear();
    cell.quoted = false;
    while (pos < line.size() && is_blank(line[pos], delimiter)) ++pos;
    if (pos < line.size() && line[pos] == '"') {
      cell.quoted = true;
      size_t i = pos + 1;
      bool closed = false;
      while (i < line.size()) {
        if (line[i] == '"') {
          if (i + 1 < line.size() && line[i + 1] == '"') {
            cell.text.push_back('"');
            i += 2;
            continue;
          }
          closed = true;
          ++i;
          break;
        }
        cell.text.push_back(line[i++]);
      }
      MT_DATA_CHECK(closed,
                    "{}: line {}, column {}: the quoted cell is not closed on this line (a line "
                    "break inside quotes is not read): close the quote",
                    where, line_no, n);
      while (i < line.size() && is_blank(line[i], delimiter)) ++i;
      if (i == line.size()) break;
      MT_DATA_CHECK(line[i] == delimiter,
                    "{}: line {}, column {}: text after the closing quote ('{}'); a quoted cell "
                    "ends at its delimiter '{}' (write \"\" for a quote inside it)",
                    where, line_no, n, shorten(line.substr(i)), show(delimiter));
      pos = i + 1;
      continue;
    }
    const size_t end = line.find(delimiter, pos);
    cell.text.assign(
        trim(line.substr(pos, end == std::string_view::npos ? std::string_view::npos : end - pos),
             delimiter));
    if (end == std::string_view::npos) break;
    pos = end + 1;
  }
  return n;
}

// The column `options.time_column` names: a 1-based number, or else a header name (a name of
// digits only, as pandas writes integer column labels, is taken as a number); -1 when unset.
int64_t resolve_time_column(const CsvOptions& options, const std::vector<Cell>& header,
                            size_t header_cells, size_t columns, const std::string& where,
                            std::string_view first_line) {
  const std::string& want = options.time_column;
  if (want.empty()) return -1;
  const bool is_number =
      std::all_of(want.begin(), want.end(), [](unsigned char ch) { return std::isdigit(ch); });
  if (is_number) {
    const int64_t number = want.size() <= 9 ? std::stoll(want) : 0;
    MT_DATA_CHECK(number >= 1 && number <= static_cast<int64_t>(columns),
                  "{}: data.csv.time_column is {}, but the file has {} columns (numbers start "
                  "at 1)",
                  where, want, columns);
    return number - 1;
  }
  MT_DATA_CHECK(options.header,
                "{}: data.csv.time_column '{}' is not a column number, and names can be used "
                "only with a header row (data.csv.header=true)",
                where, want);
  int64_t found = -1;
  for (size_t c = 0; c < header_cells; ++c) {
    if (header[c].text != want) continue;
    MT_DATA_CHECK(found < 0,
                  "{}: data.csv.time_column '{}' names columns {} and {} of the header; give "
                  "its number instead",
                  where, want, found + 1, c + 1);
    found = static_cast<int64_t>(c);
  }
  if (found >= 0) return found;
  std::string names;
  for (size_t c = 0; c < header_cells && c < 8; ++c)
    names += fmt::format("{}'{}'", c ? ", " : "", shorten(header[c].text));
  if (header_cells > 8) names += ", ...";
  MT_DATA_FAIL("{}: data.csv.time_column '{}' is not a column of the header (line 1: {}); give "
               "a name from it or a column number{}",
               where, want, names, delimiter_hint(first_line, options.delimiter));
}

}  // namespace

Session load_csv(const std::string& path, const CsvOptions& options) {
  const std::string stem = fs::path(path).stem().string();
  const std::string where = fmt::format("load_csv: {} (session '{}')", path, stem);
  MT_DATA_CHECK(std::isfinite(options.sampling_rate_hz) && options.sampling_rate_hz > 0,
                "{}: data.csv.sampling_rate_hz is {}; it must be a positive number of frames "
                "per second",
                where, options.sampling_rate_hz);
  MT_DATA_CHECK(options.time_axis == 0 || options.time_axis == 1,
                "{}: data.csv.time_axis is {}; use 1 (columns are frames, rows are neurons) or 0 "
                "(rows are frames, columns are neurons)",
                where, options.time_axis);
  MT_DATA_CHECK(options.time_column.empty() || options.time_axis == 0,
                "{}: data.csv.time_column '{}' needs data.csv.time_axis=0 (rows are frames); with "
                "frames as columns the times come from data.csv.sampling_rate_hz",
                where, options.time_column);
  MT_DATA_CHECK(options.delimiter != '"' && options.delimiter != '\n' && options.delimiter != '\r',
                "{}: data.csv.delimiter cannot be a quote or a line break", where);
  std::error_code ec;
  MT_DATA_CHECK(fs::exists(path, ec), "load_csv: {}: no such file; check the path", path);
  std::ifstream in(path, std::ios::binary);
  MT_DATA_CHECK(in.good(), "load_csv: {}: cannot open the file for reading", path);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  // A UTF-8 byte order mark (Excel's "CSV UTF-8") is not part of the first cell.
  const size_t bom = text.rfind("\xEF\xBB\xBF", 0) == 0 ? 3 : 0;
  text.erase(0, bom);
  // UTF-16 and UTF-32 (Windows PowerShell 5's Out-File, Excel's "Unicode Text") hold a NUL byte
  // in every ASCII character; said before a cell is read (a message would end at the first NUL).
  const bool utf16_32_bom = text.rfind("\xFF\xFE", 0) == 0 || text.rfind("\xFE\xFF", 0) == 0 ||
                            text.rfind(std::string("\0\0\xFE\xFF", 4), 0) == 0;
  MT_DATA_CHECK(!utf16_32_bom,
                "{}: the file is UTF-16 or UTF-32 text (it starts with that byte order mark); "
                "save it as UTF-8 or ASCII text (Excel: 'CSV UTF-8'; PowerShell: Out-File "
                "-Encoding utf8; Python: open(path, 'w', encoding='utf-8'))",
                where);
  if (const size_t nul = text.find('\0'); nul != std::string::npos)
    MT_DATA_FAIL("{}: the file holds a NUL byte at offset {} (line {}): not a text file, or "
                 "UTF-16 or UTF-32 text without a byte order mark; save it as UTF-8 or ASCII text",
                 where, bom + nul,
                 1 + std::count(text.begin(), text.begin() + std::ptrdiff_t(nul), '\n'));

  // Line ends: "\r\n" (Windows), "\r\r\n" (Python's csv.writer on Windows without
  // newline=''), "\n", and a carriage return alone (classic Mac OS, Excel's "CSV (Macintosh)"),
  // also mixed in one file (lines appended by another program).
  if (text.find('\r') != std::string::npos) {
    std::string unified;
    unified.reserve(text.size());
    for (size_t i = 0; i < text.size(); ++i) {
      if (text[i] != '\r') {
        unified.push_back(text[i]);
        continue;
      }
      size_t run_end = i;  // a run of carriage returns ...
      while (run_end < text.size() && text[run_end] == '\r') ++run_end;
      if (run_end < text.size() && text[run_end] == '\n') {
        i = run_end - 1;  // ... before a line feed: part of that line end
      } else {
        unified.push_back('\n');  // ... alone: each one ends a line
      }
    }
    text = std::move(unified);
  }

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
  const std::string layout = options.time_axis == 1 ? "one row per neuron with one value per frame"
                                                    : "one row per frame with one value per neuron";
  MT_DATA_CHECK(!lines.empty(), "{}: the file is empty; expected {}", where, layout);
  const size_t first_data = options.header ? 1 : 0;
  MT_DATA_CHECK(lines.size() > first_data,
                "{}: the file holds only its header row (data.csv.header=true); expected {} "
                "below it",
                where, layout);

  std::vector<Cell> header, cells;
  size_t header_cells = 0;
  if (options.header) header_cells = split_cells(lines[0], options.delimiter, header, where, 1);
  const size_t skip = options.label_column ? 1 : 0;

  // Row-major values of the data lines, activity columns only; times when time_column is set.
  std::vector<float> values;
  std::vector<double> times;
  size_t columns = 0;
  int64_t time_col = -1;
  size_t activity_columns = 0;
  const size_t rows = lines.size() - first_data;
  for (size_t li = first_data; li < lines.size(); ++li) {
    const size_t line_no = li + 1;
    const std::string_view line = lines[li];
    MT_DATA_CHECK(!trim(line).empty(),
                  "{}: line {} is blank between rows; every line is one {}: remove the blank "
                  "line",
                  where, line_no, options.time_axis == 1 ? "neuron" : "frame");
    const size_t n = split_cells(line, options.delimiter, cells, where, line_no);
    if (li == first_data) {
      columns = n;
      MT_DATA_CHECK(!options.header || header_cells == columns,
                    "{}: the header (line 1) has {} columns but line 2 has {}; every row needs "
                    "one cell per column",
                    where, header_cells, columns);
      time_col = resolve_time_column(options, header, header_cells, columns, where, lines[0]);
      activity_columns = columns;
      if (skip) --activity_columns;
      if (time_col >= static_cast<int64_t>(skip)) --activity_columns;
      MT_DATA_CHECK(activity_columns > 0,
                    "{}: line {} has {} column(s), and none is left for activity after the label "
                    "column (data.csv.label_column) and the time column (data.csv.time_column){}",
                    where, line_no, columns, delimiter_hint(line, options.delimiter));
      values.reserve(activity_columns * rows);
      if (time_col >= 0) times.reserve(rows);
    } else {
      MT_DATA_CHECK(n == columns,
                    "{}: line {} has {} columns but line {} has {}; the rows are ragged: every "
                    "row ({}) needs one value per {}",
                    where, line_no, n, first_data + 1, columns,
                    options.time_axis == 1 ? "neuron" : "frame",
                    options.time_axis == 1 ? "frame" : "neuron");
    }
    for (size_t c = 0; c < n; ++c) {
      const bool is_time = static_cast<int64_t>(c) == time_col;
      if (c < skip && !is_time) continue;
      std::string_view cell = cells[c].text;
      MT_DATA_CHECK(!cell.empty(),
                    "{}: line {}, column {} is empty; every cell must hold a number: recordings "
                    "with missing values (empty cells, NaN) are not read, so fill or drop them "
                    "first{}",
                    where, line_no, c + 1,
                    c + 1 == n && n > 1 ? " (or is there a delimiter at the end of the line?)"
                    : li == 0 && c == 0 && !options.header
                        ? " (or is line 1 a header over an index column, as pandas writes? set "
                          "data.csv.header=true and data.csv.label_column=true)"
                        : "");
      if (cell.front() == '+') cell.remove_prefix(1);
      double wide = 0.0;
      float v = 0.0f;
      std::from_chars_result r{};
      if (is_time)
        r = std::from_chars(cell.data(), cell.data() + cell.size(), wide);
      else
        r = std::from_chars(cell.data(), cell.data() + cell.size(), v);
      const bool whole = r.ptr == cell.data() + cell.size();
      if (r.ec == std::errc::result_out_of_range && whole) {
        // Below the smallest float (e.g. 1e-400) reads as 0, as numpy's float32 cast does;
        // beyond the largest it is an error.
        const double big = std::strtod(std::string(cell).c_str(), nullptr);
        MT_DATA_CHECK(std::abs(big) < 1.0, "{}: line {}, column {}: '{}' is out of the float range",
                      where, line_no, c + 1, shorten(cell));
        wide = 0.0;
        v = 0.0f;
      } else if (!(r.ec == std::errc() && whole)) {
        // The usual causes: another delimiter (the whole line read as one cell), a header row,
        // a column of labels.
        std::string hint = n == 1 ? delimiter_hint(line, options.delimiter) : "";
        const size_t comma = cell.find(',');
        if (hint.empty() && (options.delimiter != ',' || cells[c].quoted) &&
            comma != std::string_view::npos && comma + 1 < cell.size() &&
            std::isdigit(static_cast<unsigned char>(cell[comma + 1]))) {
          std::string dotted(cell);
          std::replace(dotted.begin(), dotted.end(), ',', '.');
          float ignored = 0;
          const auto [end, ec] =
              std::from_chars(dotted.data(), dotted.data() + dotted.size(), ignored);
          if (ec == std::errc() && end == dotted.data() + dotted.size())
            hint = "; decimal commas are not read: export the numbers with a decimal point";
        }
        if (hint.empty() && li == 0)
          hint = "; if line 1 holds labels (a header row), set data.csv.header=true";
        if (hint.empty() && is_time)
          hint = fmt::format(
              "; column {} is data.csv.time_column: it must hold each frame's time in seconds",
              c + 1);
        if (hint.empty() && c == 0 && !options.label_column)
          hint =
              "; if column 1 holds labels (names, or frame numbers that are not times), set "
              "data.csv.label_column=true";
        MT_DATA_FAIL("{}: line {}, column {}: '{}' is not a number{}", where, line_no, c + 1,
                     shorten(cell), hint);
      }
      if (is_time) {
        times.push_back(wide);
      } else {
        // Said here, where the line and column are known (session validation would name the
        // neuron and frame).
        MT_DATA_CHECK(std::isfinite(v),
                      "{}: line {}, column {}: '{}' is not a finite number; metatape does not "
                      "train on missing values: interpolate the gaps or drop the neuron before "
                      "loading",
                      where, line_no, c + 1, shorten(cell));
        values.push_back(v);
      }
    }
  }

  // Layouts that parse but are misread: pandas' index column or a header row of labels or times
  // taken for activity. Evenly spaced increasing values along a whole first row or column of 8
  // or more are labels, not a recording.
  auto evenly_spaced = [](auto value, size_t count) {
    if (count < 8) return false;
    // Strictly increasing, 90% of the steps within 15% of the median step and the others at
    // least 1.7 times it: frame numbers, and times written with few decimals or with
    // acquisition jitter (the C. elegans recordings' frame times: every step within 12.5% of
    // the median, while they drift off a straight line by more than 5% of a step), dropped
    // frames or pauses (long steps). A recorded trace does not rise at every one of 8 or more
    // frames by steps that regular; a noise-free ramp does (move it off the first line/column).
    std::vector<double> steps(count - 1);
    for (size_t i = 1; i < count; ++i) {
      steps[i - 1] = double(value(i)) - double(value(i - 1));
      if (!(steps[i - 1] > 0)) return false;
    }
    std::vector<double> sorted = steps;
    std::nth_element(sorted.begin(), sorted.begin() + std::ptrdiff_t(sorted.size() / 2),
                     sorted.end());
    const double median_step = sorted[sorted.size() / 2];
    size_t regular = 0;
    for (const double d : steps) {
      if (std::abs(d - median_step) <= 0.15 * median_step)
        ++regular;
      else if (d < 1.7 * median_step)
        return false;  // neither a clock tick nor a gap of whole ticks
    }
    return double(regular) >= 0.9 * double(steps.size());
  };
  auto first_values = [](auto value, size_t count) {
    std::string out;
    for (size_t i = 0; i < std::min<size_t>(count, 3); ++i)
      out += fmt::format("{}{}", i ? ", " : "", value(i));
    return out + ", ...";
  };
  if (options.header && !options.label_column && time_col != 0)
    MT_DATA_CHECK(!header.empty() && !header[0].text.empty(),
                  "{}: the header's column 1 is empty, as pandas writes above a DataFrame's "
                  "index: set data.csv.label_column=true (or data.csv.time_column=1 when the "
                  "index holds times)",
                  where);
  if (skip == 0 && time_col != 0) {
    auto column = [&](size_t r) { return values[r * activity_columns]; };
    MT_DATA_CHECK(!evenly_spaced(column, rows),
                  "{}: column 1 holds {} (evenly spaced down {} rows): an index or time column, "
                  "not activity; set data.csv.label_column=true, or data.csv.time_column=1 when "
                  "it holds times in seconds{} (a neuron whose trace is a noise-free ramp: put "
                  "another neuron's column first)",
                  where, first_values(column, rows), rows,
                  options.time_axis == 1 ? " (and data.csv.time_axis=0 if rows are frames)" : "");
  }
  if (!options.header) {
    auto row = [&](size_t i) { return values[i]; };
    MT_DATA_CHECK(!evenly_spaced(row, activity_columns),
                  "{}: line 1 holds {} (evenly spaced along {} columns): labels or times, not "
                  "activity; set data.csv.header=true (a neuron whose trace is a noise-free "
                  "ramp: put another line first)",
                  where, first_values(row, activity_columns), activity_columns);
  }

  Session s;
  s.name = stem;
  s.source = path;
  if (options.time_axis == 1) {
    s.num_neurons = static_cast<int64_t>(rows);
    s.num_frames = static_cast<int64_t>(activity_columns);
    s.activity = std::move(values);
  } else {
    // (frames, neurons) in the file; sessions are (neurons, frames).
    s.num_neurons = static_cast<int64_t>(activity_columns);
    s.num_frames = static_cast<int64_t>(rows);
    s.activity.resize(values.size());
    for (size_t t = 0; t < rows; ++t)
      for (size_t i = 0; i < activity_columns; ++i)
        s.activity[i * rows + t] = values[t * activity_columns + i];
  }
  if (time_col >= 0) {
    s.timestamps = std::move(times);
  } else {
    s.timestamps.resize(static_cast<size_t>(s.num_frames));
    for (int64_t t = 0; t < s.num_frames; ++t)
      s.timestamps[static_cast<size_t>(t)] = static_cast<double>(t) / options.sampling_rate_hz;
  }
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
