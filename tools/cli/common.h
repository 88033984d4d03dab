// Pieces the metatape subcommands share: the data of a run split into training and held-out
// sessions, the printing of metrics, and the lock on a folder one command writes.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tools/cli/config.h"

namespace mt::cli {

struct Data {
  data::Dataset train, holdout;  // sessions used for training, and held out for adaptation
};

// Synthetic data (data.path empty) or the recordings at data.path, validated, split by
// data.holdout (every named session must exist). Commands that use a trained model (adapt,
// predict) read folders without training sessions (`need_training` false), and predict one that
// lacks the held-out sessions (`need_holdout` false).
struct LoadDataOptions {
  bool need_training = true;
  bool need_holdout = true;
};
Data load_data(const RunConfig& c, const LoadDataOptions& options = {});

// data.path made absolute (against the current folder), so that a run's
// config.json finds the recordings from any folder; empty (synthetic data) and absolute paths
// are left as they are.
void make_data_path_absolute(RunConfig& c);

// A note on stderr when CSV recordings without a time column are timed by the default
// data.csv.sampling_rate_hz (1 Hz): the frame times of forecasts, durations and online's time
// between predictions come from it (the model sees frame positions), and the default is rarely
// a recording's rate.
void note_default_csv_rate(const RunConfig& c, const Data& d);

// A note on stderr when adapt.train.lr was changed from its default although adapt.lr_by_mode
// gives every one of `modes` (fine-tuning modes or parameter sets) its own step size, so the
// change takes no effect.
void note_unused_adapt_lr(const RunConfig& c, const std::vector<std::string>& modes);

std::vector<int64_t> sizes_of(const data::Dataset& d);
// CRC-32 (8 hex digits) of a session's recording: its activity and timestamps as loaded.
std::string recording_crc32(const data::Session& s);
// name, neurons, frames and crc32 of each session (a run's config.json 'sessions').
nlohmann::json session_json(const data::Dataset& d);
// The per-session table of meta::evaluate's metrics, a line on what they are computed on
// (`zscored`: data.zscore), and a note for a session whose score is undefined.
void print_metrics(const char* title, const meta::Metrics& m, bool zscored);
// Columns of session names: the width of UTF-8 text in characters (code points), not bytes, so
// that a name such as "Fisch-Ä" lines up; `padded` fills it to `width` with spaces (a longer
// text is left whole).
size_t text_width(const std::string& text);
std::string padded(const std::string& text, size_t width);
// A note on stderr when other processes keep this process's CPUs busy, which slows every
// parallel op. `what`: "bench" (timings are then not this machine's) or what runs, e.g.
// "training" (with advice for a machine shared on purpose).
void note_if_busy(const std::string& what);

// The process-wide settings of the config: OpenMP threads and the saved-tensor recomputation
// policy (this thread's).
void apply_threads(const RunConfig& c);

// Creates the folder (and its parents) for `what` (--run, --out, ...); an error names it, the
// reason and the fix. Returns whether it made the folder itself.
bool make_folder(const std::string& dir, const std::string& what);

// Whether `name` is `before` + a process id + `after` (a work folder's name) and that process
// is gone, or is this one (asked before this process makes its own: an earlier process's): what
// it left is no one's.
bool left_by_dead_process(const std::string& name, const std::string& before,
                          const std::string& after);

// Removes the temporary files (.<file>.tmp.<pid>.<n>) in dir of writes whose process is gone.
void remove_stale_temp_files(const std::string& dir);

// One writer per folder (a train run folder, a bench output folder): an exclusive flock(2) on
// <dir>/<file_name>, held for the life of the object (the kernel releases it when the process
// ends, however it ends). The file holds the owner's process id, for the refusal message, which
// names `flag` (--run, --out) and `command`. A writer removes the temporary files of writes
// killed before they finished. `reader`: a shared lock, which any number of readers hold at
// once (eval, predict, online without --label) and a writer does not: results are not written
// from a model a training is replacing.
class FolderLock {
 public:
  FolderLock(const std::string& dir, const std::string& file_name, const std::string& flag,
             const std::string& command, bool reader = false);
  ~FolderLock();
  FolderLock(const FolderLock&) = delete;
  FolderLock& operator=(const FolderLock&) = delete;

 private:
  int fd_ = -1;
};

}  // namespace mt::cli
