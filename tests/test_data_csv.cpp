// The CSV loader (data/csv.h): values, timestamps from the sampling rate or a time column, both
// orientations, header rows, label columns and quoted cells, errors with line and column, and
// the two real zebrafish recordings in ../shared/data (skipped when absent).
#include <chrono>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <string>

#include <catch2/catch.hpp>
#include <fmt/format.h>

#include "data/csv.h"
#include "data/load.h"
#include "data/session.h"
#include "support/temp_dir.h"

#ifndef METATAPE_SOURCE_DIR
#error "METATAPE_SOURCE_DIR must be defined as a string literal naming the repository root"
#endif

namespace fs = std::filesystem;
using Catch::Contains;
using mt::testing::TempDir;
using namespace mt::data;

TEST_CASE("csv: rows are neurons, columns are frames", "[data][csv]") {
  TempDir dir("test_data_csv");
  const std::string p =
      dir.write("fish.csv", "0.5,1.5,-2e-1,3\n 4 , 5,6.25,+7\r\n1e3,nan_free,0,0\n");
  SECTION("non-numeric cell names line and column") {
    REQUIRE_THROWS_WITH(load_csv(p), Contains("fish.csv") && Contains("session 'fish'") &&
                                         Contains("line 3, column 2") &&
                                         Contains("'nan_free' is not a number"));
  }
  const std::string q =
      dir.write("fish2.csv", "0.5,1.5,-2e-1,3\n 4 , 5,6.25,+7\r\n1e3,0,0,0\n\n\n");
  CsvOptions o;
  o.sampling_rate_hz = 2.0;
  const Session s = load_csv(q, o);
  CHECK(s.name == "fish2");
  REQUIRE(s.num_neurons == 3);
  REQUIRE(s.num_frames == 4);
  CHECK(s.at(0, 2) == -0.2f);
  CHECK(s.at(1, 0) == 4.0f);
  CHECK(s.at(1, 3) == 7.0f);
  CHECK(s.at(2, 0) == 1000.0f);
  CHECK(s.timestamps == std::vector<double>{0.0, 0.5, 1.0, 1.5});
  // Default 1 Hz.
  CHECK(load_csv(q).timestamps[3] == 3.0);
}

TEST_CASE("csv: malformed files are refused with line and column", "[data][csv]") {
  TempDir dir("test_data_csv");
  SECTION("ragged rows") {
    const std::string p = dir.write("ragged.csv", "1,2,3\n4,5,6\n7,8\n");
    REQUIRE_THROWS_WITH(load_csv(p), Contains("ragged.csv") && Contains("line 3 has 2 columns") &&
                                         Contains("line 1 has 3") && Contains("ragged"));
  }
  SECTION("header row, label column: the hint names the option") {
    const std::string p = dir.write("header.csv", "frame0,frame1\n1,2\n");
    REQUIRE_THROWS_WITH(load_csv(p), Contains("header.csv") && Contains("line 1, column 1") &&
                                         Contains("data.csv.header=true"));
    const std::string q = dir.write("labels.csv", "1,2,3\nAVAL,4,5\n");
    REQUIRE_THROWS_WITH(load_csv(q), Contains("labels.csv") && Contains("line 2, column 1") &&
                                         Contains("data.csv.label_column=true"));
  }
  SECTION("empty cell") {
    const std::string p = dir.write("hole.csv", "1,2,3\n4,,6\n");
    REQUIRE_THROWS_WITH(load_csv(p), Contains("hole.csv") && Contains("line 2, column 2 is empty"));
  }
  SECTION("empty file") {
    const std::string p = dir.write("empty.csv", "");
    REQUIRE_THROWS_WITH(load_csv(p), Contains("empty.csv") && Contains("the file is empty"));
    const std::string blank = dir.write("blank.csv", "\n\n  \n");
    REQUIRE_THROWS_WITH(load_csv(blank), Contains("blank.csv") && Contains("the file is empty"));
  }
  SECTION("blank line between rows") {
    const std::string p = dir.write("gap.csv", "1,2\n\n3,4\n");
    REQUIRE_THROWS_WITH(load_csv(p), Contains("gap.csv") && Contains("line 2 is blank"));
  }
  SECTION("NaN cell names its line and column") {
    const std::string p = dir.write("gaps.csv", "1,2,3\n4,5,NaN\n");
    REQUIRE_THROWS_WITH(load_csv(p), Contains("gaps.csv") && Contains("line 2, column 3") &&
                                         Contains("'NaN' is not a finite number") &&
                                         Contains("interpolate"));
  }
  SECTION("another delimiter, quoted numbers: the hint names the cause") {
    const std::string semi = dir.write("semi.csv", "1;2;3\n4;5;6\n");
    REQUIRE_THROWS_WITH(load_csv(semi), Contains("semi.csv") && Contains("separated by ';'") &&
                                            Contains("data.csv.delimiter"));
    CsvOptions o;
    o.delimiter = ';';
    CHECK(load_csv(semi, o).num_frames == 3);
    const std::string tabs = dir.write("tabs.csv", "1\t2\t3\n");
    REQUIRE_THROWS_WITH(load_csv(tabs), Contains("separated by '\\t', not ','"));
  }
  SECTION("a byte order mark is skipped; values below the f32 range read as 0") {
    const std::string p = dir.write("bom.csv", "\xEF\xBB\xBF" "1,2,1e-400\n3,4,5\n");
    const Session s = load_csv(p);
    CHECK(s.at(0, 0) == 1.0f);
    CHECK(s.at(0, 2) == 0.0f);
    const std::string big = dir.write("big.csv", "1,2,1e400\n");
    REQUIRE_THROWS_WITH(load_csv(big), Contains("out of the float range"));
  }
  SECTION("missing file and bad option") {
    REQUIRE_THROWS_WITH(load_csv(dir.file("absent.csv")),
                        Contains("absent.csv") && Contains("no such file"));
    const std::string p = dir.write("ok.csv", "1,2\n");
    CsvOptions o;
    o.sampling_rate_hz = 0;
    REQUIRE_THROWS_WITH(load_csv(p, o), Contains("ok.csv") && Contains("sampling_rate_hz"));
  }
}

// The same 2 neurons x 3 frames, stored as pandas' DataFrame.to_csv writes a (frames, neurons)
// table: a header of neuron names, an index column (here the times), one row per frame.
TEST_CASE("csv: rows as frames, header, label and time columns", "[data][csv]") {
  TempDir dir("test_data_csv");
  const std::string plain = dir.write("plain.csv", "1,2,3\n4,5,6\n");
  const std::string frames =
      dir.write("frames.csv", "time,AVAL,\"RIM, left\"\n0.0,1,4\n0.25,2,5\n0.75,3,6\n");
  CsvOptions o;
  o.time_axis = 0;
  o.header = true;
  o.time_column = "time";
  const Session s = load_csv(frames, o);
  const Session ref = load_csv(plain);
  REQUIRE(s.num_neurons == 2);
  REQUIRE(s.num_frames == 3);
  CHECK(s.activity == ref.activity);
  CHECK(s.timestamps == std::vector<double>{0.0, 0.25, 0.75});
  SECTION("the time column by number, and as the label column") {
    o.time_column = "1";
    CHECK(load_csv(frames, o).timestamps == s.timestamps);
    o.label_column = true;
    const Session l = load_csv(frames, o);
    CHECK(l.activity == ref.activity);
    CHECK(l.timestamps == s.timestamps);
  }
  SECTION("digits are a column number, even where the header has that name (pandas' integer "
          "column labels)") {
    const std::string ints = dir.write("ints.csv", ",0,1\n0.0,1,4\n0.25,2,5\n0.75,3,6\n");
    o.time_column = "1";
    const Session l = load_csv(ints, o);
    CHECK(l.activity == ref.activity);
    CHECK(l.timestamps == s.timestamps);
  }
  SECTION("a label column of frame numbers: times from the sampling rate") {
    const std::string idx = dir.write("idx.csv", ",a,b\n0,1,4\n1,2,5\n2,3,6\n");
    o.time_column.clear();
    o.label_column = true;
    o.sampling_rate_hz = 4.0;
    const Session l = load_csv(idx, o);
    CHECK(l.activity == ref.activity);
    CHECK(l.timestamps == std::vector<double>{0.0, 0.25, 0.5});
  }
  SECTION("a header over neuron rows, and a label column of neuron names") {
    const std::string named = dir.write("named.csv", "neuron,t0,t1,t2\nA,1,2,3\nB,4,5,6\n");
    CsvOptions n;
    n.header = true;
    n.label_column = true;
    const Session l = load_csv(named, n);
    CHECK(l.activity == ref.activity);
    CHECK(l.timestamps == ref.timestamps);
  }
  SECTION("errors name the option and the fix") {
    o.time_column = "t";
    REQUIRE_THROWS_WITH(load_csv(frames, o), Contains("frames.csv") &&
                                                 Contains("data.csv.time_column 't'") &&
                                                 Contains("'time', 'AVAL', 'RIM, left'"));
    o.time_column = "4";
    REQUIRE_THROWS_WITH(load_csv(frames, o), Contains("the file has 3 columns"));
    o.time_column = "time";
    o.header = false;
    REQUIRE_THROWS_WITH(load_csv(frames, o), Contains("names can be used only with a header"));
    CsvOptions bad;
    bad.time_column = "1";
    REQUIRE_THROWS_WITH(load_csv(plain, bad), Contains("needs data.csv.time_axis=0"));
    bad.time_column.clear();
    bad.time_axis = 2;
    REQUIRE_THROWS_WITH(load_csv(plain, bad), Contains("data.csv.time_axis is 2"));
    CsvOptions h;
    h.header = true;
    const std::string only = dir.write("only.csv", "a,b,c\n\n");
    REQUIRE_THROWS_WITH(load_csv(only, h), Contains("only.csv") && Contains("only its header"));
    const std::string wide = dir.write("wide.csv", "a,b\n1,2,3\n");
    REQUIRE_THROWS_WITH(load_csv(wide, h), Contains("the header (line 1) has 2 columns but line 2 "
                                                    "has 3"));
    CsvOptions t;
    t.time_axis = 0;
    t.time_column = "1";
    const std::string times = dir.write("times.csv", "0,1\n1,2\n1,3\n");
    REQUIRE_THROWS_WITH(load_csv(times, t), Contains("times.csv") && Contains("frame 2"));
    const std::string lone = dir.write("lone.csv", "0\n1\n");
    REQUIRE_THROWS_WITH(load_csv(lone, t), Contains("none is left for activity"));
    const std::string semi = dir.write("semi.csv", "0;1\n1;2\n");
    REQUIRE_THROWS_WITH(load_csv(semi, t), Contains("none is left for activity") &&
                                               Contains("separated by ';'"));
    const std::string word = dir.write("word.csv", "0,1\nsoon,2\n");
    REQUIRE_THROWS_WITH(load_csv(word, t), Contains("line 2, column 1: 'soon' is not a number") &&
                                               Contains("column 1 is data.csv.time_column"));
    o.time_column = "time";
    o.header = true;
    const std::string semi_header = dir.write("semi_header.csv", "time;a\n0;1\n");
    REQUIRE_THROWS_WITH(load_csv(semi_header, o), Contains("is not a column of the header") &&
                                                      Contains("separated by ';'"));
  }
}

// Files that parse but would be misread: refused, naming the option that reads them.
static CsvOptions frames_of() {
  CsvOptions o;
  o.time_axis = 0;
  return o;
}

TEST_CASE("csv: index columns and label rows are not taken for activity", "[data][csv]") {
  TempDir dir("test_data_csv");
  // 10 frames x 3 neurons as pandas writes them: an unnamed index (0..9) and integer labels.
  std::string index_and_labels = ",0,1,2\n", no_index = "0,1,2\n", index_only;
  for (int t = 0; t < 10; ++t) {
    const std::string row = fmt::format("{},{},{}", 0.5 * std::sin(t), 0.25 * t * t, -0.1 * t * t);
    index_and_labels += fmt::format("{},{}\n", t, row);
    no_index += row + "\n";
    index_only += fmt::format("{},{}\n", t, row);
  }
  CsvOptions o;
  o.time_axis = 0;
  o.header = true;
  const std::string a = dir.write("a.csv", index_and_labels);
  REQUIRE_THROWS_WITH(load_csv(a, o), Contains("a.csv") && Contains("header's column 1 is empty") &&
                                          Contains("data.csv.label_column=true"));
  o.label_column = true;
  CHECK(load_csv(a, o).num_neurons == 3);
  REQUIRE_THROWS_WITH(load_csv(a), Contains("line 1, column 1 is empty") &&
                                       Contains("data.csv.header=true"));
  // pandas' index=False: integer labels in the header, then the table; and a table of 10 x 10
  // real-looking values passes both checks.
  const std::string labels = dir.write("labels.csv", no_index);
  CsvOptions labelled;
  labelled.time_axis = 0;
  labelled.header = true;
  CHECK(load_csv(labels, labelled).num_neurons == 3);
  std::string square;
  for (int r = 0; r < 10; ++r) {
    for (int c = 0; c < 10; ++c)
      square += fmt::format("{}{:.4f}", c ? "," : "", std::sin(0.7 * r + 1.3 * c) + 0.01 * r);
    square += "\n";
  }
  CHECK(load_csv(dir.write("square.csv", square)).num_neurons == 10);
  // Times written with 3 decimals at 30 Hz (steps of 0.033 and 0.034) are times, not a neuron.
  std::string jittered;
  for (int t = 0; t < 40; ++t) jittered += fmt::format("{:.3f},{},{}\n", t / 30.0, (t * 7) % 5, 1);
  REQUIRE_THROWS_WITH(load_csv(dir.write("jittered.csv", jittered), frames_of()),
                      Contains("column 1 holds 0, 0.033, 0.067, ..."));
  const std::string b = dir.write("b.csv", index_only);
  CsvOptions frames;
  frames.time_axis = 0;
  REQUIRE_THROWS_WITH(load_csv(b, frames),
                      Contains("b.csv") && Contains("column 1 holds 0, 1, 2, ...") &&
                          Contains("data.csv.label_column=true"));
  // A header row of 12 frame times over neuron rows, taken as a neuron.
  std::string times = "0";
  for (int t = 1; t < 12; ++t) times += fmt::format(",{}", 0.1 * t);
  const std::string c = dir.write("c.csv", times + "\n" + times + "\n");
  REQUIRE_THROWS_WITH(load_csv(c), Contains("c.csv") && Contains("line 1 holds 0, 0.1, 0.2, ...") &&
                                       Contains("data.csv.header=true"));
  // Fewer than 8 values along the row: no such guess.
  CHECK(load_csv(dir.write("short.csv", "0,1,2,3\n5,1,2,4\n")).num_neurons == 2);
  // A microscope's frame times: 0.6 s steps with jitter that drifts off the straight line by
  // more than 5% of a step, and a dropped frame (a step of 1.2 s); as a time column and as a
  // first line of times over neuron rows. These were read as a neuron.
  std::vector<double> clock = {0.0};
  for (int t = 1; t < 60; ++t)
    clock.push_back(clock.back() + (t == 30 ? 1.2 : 0.6 + 0.03 * std::sin(0.05 * t)));
  std::string drifting, drifting_row;
  for (int t = 0; t < 60; ++t) {
    drifting += fmt::format("{:.4f},{:.3f},{:.3f}\n", clock[size_t(t)], std::sin(t), std::cos(t));
    drifting_row += fmt::format("{}{:.4f}", t ? "," : "", clock[size_t(t)]);
  }
  REQUIRE_THROWS_WITH(load_csv(dir.write("drifting.csv", drifting), frames_of()),
                      Contains("drifting.csv") && Contains("column 1 holds 0, 0.6") &&
                          Contains("data.csv.time_column=1"));
  REQUIRE_THROWS_WITH(load_csv(dir.write("drifting_row.csv", drifting_row + "\n" + drifting_row +
                                                                 "\n")),
                      Contains("line 1 holds 0, 0.6") && Contains("data.csv.header=true"));
  // A noise-free saturating rise (1 - exp(-t/400) over 200 frames: steps from 1.27 to 0.82 of
  // the median) stays a neuron.
  std::string saturating;
  for (int t = 0; t < 200; ++t)
    saturating += fmt::format("{}{:.6f}", t ? "," : "", 1 - std::exp(-t / 400.0));
  CHECK(load_csv(dir.write("saturating.csv", saturating + "\n" + saturating + "\n")).num_neurons ==
        2);
  // A trace that rises at every frame by irregular steps stays a neuron.
  std::string rising;
  for (int t = 0; t < 12; ++t) rising += fmt::format("{}{}", t ? "," : "", 0.1 * t * t * t);
  CHECK(load_csv(dir.write("rising.csv", rising + "\n" + "1,2,1,2,1,2,1,2,1,2,1,2\n"))
            .num_neurons == 2);
}

TEST_CASE("csv: Mac line ends, space-separated columns, hints for commas", "[data][csv]") {
  TempDir dir("test_data_csv");
  const Session mac = load_csv(dir.write("mac.csv", "1,2,3\r4,5,6\r"));
  CHECK(mac.num_neurons == 2);
  CHECK(mac.at(1, 2) == 6.0f);
  // "\r\r\n": Python's csv.writer on Windows without newline=''.
  const Session doubled = load_csv(dir.write("doubled.csv", "1,2,3\r\r\n4,5,6\r\r\n"));
  CHECK(doubled.num_neurons == 2);
  CHECK(doubled.at(1, 2) == 6.0f);
  // Mixed line ends (lines appended by another program) were one line with a '\r' inside.
  const Session mixed = load_csv(dir.write("mixed.csv", "1,2,3\r4,5,6\r\n7,8,9\n10,11,12\r"));
  CHECK(mixed.num_neurons == 4);
  CHECK(mixed.at(3, 2) == 12.0f);
  // UTF-16 (PowerShell 5's Out-File) and a NUL byte: said whole (a message ended at the NUL).
  std::string utf16 = "\xFF\xFE";
  for (const char ch : std::string("1,2\r\n3,4\r\n")) utf16 += std::string{ch, '\0'};
  REQUIRE_THROWS_WITH(load_csv(dir.write("utf16.csv", utf16)),
                      Contains("utf16.csv") && Contains("UTF-16 or UTF-32") &&
                          Contains("save it as UTF-8"));
  REQUIRE_THROWS_WITH(load_csv(dir.write("nul.csv", std::string("1,2\n3,4\n5,\0\n", 12))),
                      Contains("nul.csv") && Contains("a NUL byte at offset 10 (line 3)") &&
                          Contains("NUL byte"));
  CsvOptions spaces;
  spaces.delimiter = ' ';
  const Session aligned =
      load_csv(dir.write("aligned.txt.csv", "  1.5   2   3 \n 10    -4  6\n"), spaces);
  CHECK(aligned.num_frames == 3);
  CHECK(aligned.at(1, 1) == -4.0f);
  CsvOptions semi;
  semi.delimiter = ';';
  REQUIRE_THROWS_WITH(load_csv(dir.write("decimal.csv", "1,5;2,25\n3;4\n"), semi),
                      Contains("'1,5' is not a number") && Contains("decimal commas"));
  REQUIRE_THROWS_WITH(load_csv(dir.write("trailing.csv", "1,2,\n3,4,\n")),
                      Contains("line 1, column 3 is empty") &&
                          Contains("delimiter at the end of the line"));
}

TEST_CASE("csv: quoted cells", "[data][csv]") {
  TempDir dir("test_data_csv");
  SECTION("quoted numbers and names with delimiters or quotes inside") {
    const std::string p = dir.write(
        "q.csv", "\"a, \"\"x\"\"\", \"b\"\n\"1.5\" , 2\n \"3\",\"4\"\n");
    CsvOptions o;
    o.header = true;
    const Session s = load_csv(p, o);
    REQUIRE(s.num_neurons == 2);
    REQUIRE(s.num_frames == 2);
    CHECK(s.at(0, 0) == 1.5f);
    CHECK(s.at(1, 1) == 4.0f);
  }
  SECTION("an unclosed quote, text after the closing quote") {
    const std::string open = dir.write("open.csv", "1,\"2\n3,4\n");
    REQUIRE_THROWS_WITH(load_csv(open), Contains("open.csv") && Contains("line 1, column 2") &&
                                            Contains("not closed on this line"));
    const std::string tail = dir.write("tail.csv", "1,\"2\"x,3\n");
    REQUIRE_THROWS_WITH(load_csv(tail), Contains("tail.csv") && Contains("line 1, column 2") &&
                                            Contains("text after the closing quote"));
    const std::string word = dir.write("word.csv", "1,\"two\"\n3,4\n");
    REQUIRE_THROWS_WITH(load_csv(word), Contains("line 1, column 2: 'two' is not a number"));
  }
}

TEST_CASE("csv: the two zebrafish recordings load", "[data][csv][real]") {
  const std::string dir = METATAPE_SOURCE_DIR "/../shared/data/zebrafish-triplett2018";
  if (!fs::exists(dir)) {
    WARN("skipped: " << dir << " is missing (the real recordings live in ../shared/data)");
    return;
  }
  LoadOptions o;
  o.csv.sampling_rate_hz = 2.2;
  const auto t0 = std::chrono::steady_clock::now();
  const Dataset d = load_folder(dir, o);
  const double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  REQUIRE(d.size() == 2);
  CHECK(d[0].name == "zf_20151104-f1_activity_matrix");
  CHECK(d[0].num_neurons == 114);
  CHECK(d[0].num_frames == 4245);
  CHECK(d[1].name == "zf_20170215-f3_activity_matrix");
  CHECK(d[1].num_neurons == 75);
  CHECK(d[1].num_frames == 5660);
  CHECK(d[0].at(0, 0) == 0.19215f);  // first cell of the file
  CHECK(d[0].at(0, 1) == 0.17771f);
  CHECK(d[1].frame_interval() == Approx(1.0 / 2.2));
  WARN("zebrafish folder (2 sessions) loaded in " << ms << " ms");
}
