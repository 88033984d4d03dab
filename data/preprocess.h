// From sessions to training windows: chronological train/val/test splits within each session,
// z-scoring with the train split's statistics, windows of seq_length frames whose last
// pred_length frames are the forecast targets, a seeded support/query split of each session's
// training windows (for adaptation and meta-learning), and batches that gather windows from
// sessions with different neuron counts.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "data/session.h"

namespace mt::data {

enum class Split { Train = 0, Val = 1, Test = 2 };
const char* split_name(Split split);  // "train", "val", "test"

// Frames [begin, end).
struct FrameRange {
  int64_t begin = 0;
  int64_t end = 0;
  int64_t length() const { return end - begin; }
};

enum class SplitMode {
  Chronological,  // the first `train` fraction of the session, then `val`, then `test`
  Blocks,         // POCO: each block of block_length frames is split train | val | test in turn
};

struct SplitConfig {
  SplitMode mode = SplitMode::Chronological;
  double train = 0.7;  // fractions of the session (Chronological) or of each block (Blocks);
  double val = 0.15;   // each >= 0, summing to 1. Split points are rounded to whole frames.
  double test = 0.15;
  int64_t block_length = 1000;  // Blocks only; the last block may be shorter

  // POCO's split: blocks of 1000 frames, 60 / 20 / 20.
  static SplitConfig poco_blocks() { return {SplitMode::Blocks, 0.6, 0.2, 0.2, 1000}; }
};

// Each split is a list of disjoint frame ranges in time order (one range when Chronological).
struct SessionSplits {
  std::vector<FrameRange> train, val, test;
  const std::vector<FrameRange>& operator[](Split s) const;
  static int64_t frames(const std::vector<FrameRange>& ranges);
};

// Throws mt::Error on invalid fractions or block length.
SessionSplits split_frames(int64_t num_frames, const SplitConfig& config);

// Per-neuron mean and std over the given frames (population std, accumulated in double).
// A neuron whose std is <= 2^-24 x max(|mean|, FLT_MIN) (one f32 rounding step at its mean) is
// constant: its std is set to 1, so z-scoring only centres it, and it is listed in
// constant_neurons.
struct NormStats {
  std::vector<float> mean;
  std::vector<float> std;
  std::vector<int64_t> constant_neurons;
};
NormStats compute_stats(const Session& session, const std::vector<FrameRange>& frames);
// activity <- (activity - mean) / std, per neuron, over every frame.
void apply_zscore(Session& session, const NormStats& stats);

// Start frames of every window of `seq_length` frames lying wholly inside one of the ranges,
// `stride` apart within a range (windows never cross a range boundary).
std::vector<int64_t> window_starts(const std::vector<FrameRange>& ranges, int64_t seq_length,
                                   int64_t stride);

// How a session's training windows are divided into support and query sets (meta-learning: the
// inner loop adapts on support windows, the outer loss is taken on query windows).
enum class SupportSplit {
  // The first `support_fraction` of the training frames hold the support windows, the rest the
  // query windows; windows crossing the cut are in neither, so no frame is in both sets and the
  // query frames follow the support frames, as a new session's validation and test frames follow
  // the frames it is adapted on.
  Chronological,
  // A shuffled `support_fraction` of the training windows (support_query_split): neighbouring
  // windows, which share all but one frame, fall in both sets. The default: on the worm
  // benchmark (bench/README.md) the chronological split did not do better.
  Shuffled,
};

// The training frames cut at the first round(fraction x frames) of them (counted through the
// ranges in time order): (support frames, query frames), each a list of disjoint ranges.
std::pair<std::vector<FrameRange>, std::vector<FrameRange>> support_query_frames(
    const std::vector<FrameRange>& train, double fraction);

// Shuffles `windows` with a Philox stream seeded by `seed`, puts the first
// round(fraction x n) in the support set and the rest in the query set; both come back sorted.
// With 0 < fraction < 1 and n >= 2, each set gets at least one window.
std::pair<std::vector<int64_t>, std::vector<int64_t>> support_query_split(
    const std::vector<int64_t>& windows, double fraction, uint64_t seed);

struct WindowConfig {
  int64_t seq_length = 64;   // frames per window
  int64_t pred_length = 16;  // the last pred_length frames are targets; the rest is context
  int64_t stride = 1;        // frames between consecutive window starts
  int64_t context_length() const { return seq_length - pred_length; }
};

// A window of one session.
struct WindowRef {
  int64_t session = 0;
  int64_t start = 0;
};

// Windows from several sessions, concatenated along neurons: sample b holds rows
// [neuron_offset[b], neuron_offset[b + 1]) of `context` (rows of context_length frames) and of
// `target` (rows of pred_length frames), one row per neuron of its session.
struct WindowBatch {
  int64_t context_length = 0;
  int64_t pred_length = 0;
  std::vector<int64_t> session;        // (B)
  std::vector<int64_t> start;          // (B)
  std::vector<int64_t> neuron_offset;  // (B + 1)
  std::vector<float> context;          // (sum N_b, context_length) row-major
  std::vector<float> target;           // (sum N_b, pred_length) row-major

  int64_t size() const { return static_cast<int64_t>(session.size()); }
  int64_t total_neurons() const { return neuron_offset.empty() ? 0 : neuron_offset.back(); }
  int64_t num_neurons(int64_t b) const;
  std::span<const float> context_of(int64_t b) const;  // (N_b, context_length)
  std::span<const float> target_of(int64_t b) const;   // (N_b, pred_length)
};

// Gathers the windows (errors name the session and the valid start range).
WindowBatch make_batch(const Dataset& dataset, std::span<const WindowRef> windows,
                       const WindowConfig& window);

struct PrepConfig {
  SplitConfig split;
  WindowConfig window;
  bool zscore = true;             // z-score each session with its train split's statistics
  SupportSplit support_split = SupportSplit::Shuffled;
  double support_fraction = 0.7;  // of each session's training frames (Shuffled: windows)
  uint64_t seed = 0;              // support/query shuffle (Shuffled); session s uses stream s
};

// A dataset ready for training: every session split, z-scored and cut into windows.
// Construction throws mt::Error when a split with a non-zero fraction holds no whole window
// (naming the session, the split, the lengths and the fix).
class PreparedData {
 public:
  PreparedData(Dataset dataset, const PrepConfig& config = {});

  const PrepConfig& config() const { return config_; }
  const Dataset& dataset() const { return dataset_; }  // z-scored when config.zscore
  int64_t num_sessions() const { return dataset_.size(); }
  const Session& session(int64_t s) const { return dataset_.at(s); }
  const NormStats& stats(int64_t s) const;  // train statistics (before z-scoring)
  const SessionSplits& splits(int64_t s) const;
  const std::vector<int64_t>& windows(int64_t s, Split split) const;  // window starts
  const std::vector<int64_t>& support(int64_t s) const;   // training windows, support part
  const std::vector<int64_t>& query(int64_t s) const;     // training windows, query part
  std::vector<WindowRef> all_windows(Split split) const;  // every session's, session order
  WindowBatch batch(std::span<const WindowRef> windows) const;
  // Things worth knowing that are not errors (constant neurons, ...), one line each.
  const std::vector<std::string>& notes() const { return notes_; }

 private:
  struct PerSession {
    NormStats stats;
    SessionSplits splits;
    std::vector<int64_t> windows[3];
    std::vector<int64_t> support, query;
  };
  const PerSession& per(int64_t s) const;

  PrepConfig config_;
  Dataset dataset_;
  std::vector<PerSession> per_session_;
  std::vector<std::string> notes_;
};

}  // namespace mt::data
