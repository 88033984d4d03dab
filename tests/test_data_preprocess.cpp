// Preprocessing (data/preprocess.h): splits, z-scoring with train statistics, windows,
// support/query and batches, plus the short-split errors.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "data/preprocess.h"
#include "data/synth.h"
#include "meta/training.h"

using Catch::Contains;
using namespace mt::data;

namespace {

Session ramp_session(const std::string& name, int64_t n, int64_t t) {
  Session s;
  s.name = name;
  s.source = "test";
  s.num_neurons = n;
  s.num_frames = t;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < t; ++j)
      s.activity.push_back(static_cast<float>(1000 * i + j));  // value encodes (neuron, frame)
  for (int64_t j = 0; j < t; ++j) s.timestamps.push_back(static_cast<double>(j));
  return s;
}

Dataset synth_dataset() {
  SynthConfig c;
  c.seed = 1;
  c.num_sessions = 3;
  c.n_total = 64;
  c.min_neurons = 10;
  c.max_neurons = 30;
  c.num_frames = 600;
  c.burn_in_frames = 50;
  return synthesize(c);
}

}  // namespace

TEST_CASE("preprocess: chronological and block splits", "[data][preprocess]") {
  SECTION("0.7 / 0.15 / 0.15") {
    const SessionSplits sp = split_frames(1000, {});
    REQUIRE(sp.train.size() == 1);
    CHECK(sp.train[0].begin == 0);
    CHECK(sp.train[0].end == 700);
    CHECK(sp.val[0].begin == 700);
    CHECK(sp.val[0].end == 850);
    CHECK(sp.test[0].begin == 850);
    CHECK(sp.test[0].end == 1000);
    const SessionSplits odd = split_frames(1137, {});
    CHECK(SessionSplits::frames(odd.train) + SessionSplits::frames(odd.val) +
              SessionSplits::frames(odd.test) ==
          1137);
  }
  SECTION("POCO blocks of 1000, 60 / 20 / 20") {
    const SessionSplits sp = split_frames(2500, SplitConfig::poco_blocks());
    REQUIRE(sp.train.size() == 3);
    CHECK(sp.train[0].begin == 0);
    CHECK(sp.train[0].end == 600);
    CHECK(sp.val[0].begin == 600);
    CHECK(sp.val[0].end == 800);
    CHECK(sp.test[0].begin == 800);
    CHECK(sp.test[0].end == 1000);
    CHECK(sp.train[1].begin == 1000);
    CHECK(sp.train[1].end == 1600);
    CHECK(sp.train[2].begin == 2000);  // last block is 500 frames: 300 / 100 / 100
    CHECK(sp.train[2].end == 2300);
    CHECK(sp.test[2].end == 2500);
    CHECK(SessionSplits::frames(sp.train) == 1500);
    CHECK(SessionSplits::frames(sp.val) == 500);
  }
  SECTION("bad fractions") {
    SplitConfig c;
    c.train = 0.8;
    REQUIRE_THROWS_WITH(split_frames(100, c), Contains("sum to 1"));
  }
  SECTION("fractions summing to 1 within the allowed 1e-6 stay inside the recording") {
    SplitConfig c;
    c.train = 1.0000009;  // the train end rounded to 600001 frames of 600000
    c.val = 0;
    c.test = 0;
    const SessionSplits sp = split_frames(600000, c);
    REQUIRE(sp.train.size() == 1);
    CHECK(sp.train[0].end == 600000);
    CHECK(sp.val.empty());
    CHECK(sp.test.empty());
  }
}

TEST_CASE("preprocess: windows, targets and batches", "[data][preprocess]") {
  Dataset d;
  d.sessions.push_back(ramp_session("a", 3, 100));
  d.sessions.push_back(ramp_session("b", 5, 200));
  PrepConfig cfg;
  cfg.window = {10, 4, 1};
  cfg.zscore = false;
  const PreparedData p(d, cfg);
  // Session a: train 70 frames -> 61 windows; val 15 -> 6; test 15 -> 6.
  CHECK(p.windows(0, Split::Train).size() == 61);
  CHECK(p.windows(0, Split::Val).size() == 6);
  CHECK(p.windows(0, Split::Test).size() == 6);
  CHECK(p.windows(0, Split::Val).front() == 70);
  CHECK(p.windows(0, Split::Val).back() == 75);
  CHECK(p.windows(1, Split::Train).size() == 131);
  // Windows never leave their split.
  for (int64_t s : p.windows(0, Split::Train)) CHECK(s + 10 <= 70);

  const std::vector<WindowRef> refs = {{0, 5}, {1, 42}, {0, 61}};
  const WindowBatch b = p.batch(refs);
  REQUIRE(b.size() == 3);
  CHECK(b.context_length == 6);
  CHECK(b.pred_length == 4);
  CHECK(b.neuron_offset == std::vector<int64_t>{0, 3, 8, 11});
  CHECK(b.context.size() == 11 * 6);
  CHECK(b.target.size() == 11 * 4);
  // Sample 1 (session b, start 42), neuron 2: context frames 42..47, targets 48..51.
  const auto ctx = b.context_of(1);
  const auto tgt = b.target_of(1);
  CHECK(ctx[2 * 6 + 0] == 2042.0f);
  CHECK(ctx[2 * 6 + 5] == 2047.0f);
  CHECK(tgt[2 * 4 + 0] == 2048.0f);
  CHECK(tgt[2 * 4 + 3] == 2051.0f);
  // The targets are the last pred_length frames of the window.
  for (int64_t n = 0; n < 3; ++n)
    for (int64_t k = 0; k < 4; ++k)
      CHECK(b.target_of(2)[static_cast<size_t>(n * 4 + k)] ==
            static_cast<float>(1000 * n + 61 + 6 + k));

  REQUIRE_THROWS_WITH(p.batch(std::vector<WindowRef>{{1, 195}}),
                      Contains("session 'b'") && Contains("start in [0, 190]"));
  REQUIRE_THROWS_WITH(p.batch(std::vector<WindowRef>{{2, 0}}), Contains("out of range"));

  SECTION("stride") {
    PrepConfig c2 = cfg;
    c2.window.stride = 7;
    const PreparedData q(d, c2);
    const auto& w = q.windows(0, Split::Train);
    CHECK(w.size() == 9);  // 0, 7, ..., 56 (56 + 10 <= 70)
    CHECK(w.back() == 56);
  }
  SECTION("blocks: windows stay inside each block's split") {
    Dataset long_d;
    long_d.sessions.push_back(ramp_session("long", 2, 2500));
    PrepConfig c3 = cfg;
    c3.split = SplitConfig::poco_blocks();
    const PreparedData q(long_d, c3);
    CHECK(q.windows(0, Split::Train).size() == 591 + 591 + 291);
    for (int64_t s : q.windows(0, Split::Val)) {
      const int64_t in_block = s % 1000;
      CHECK(in_block + 10 <= (s >= 2000 ? 400 : 800));
    }
  }
}

TEST_CASE("preprocess: z-scoring uses the train split's statistics", "[data][preprocess]") {
  const Dataset d = synth_dataset();
  PrepConfig cfg;
  cfg.window = {32, 8, 1};
  const PreparedData p(d, cfg);
  for (int64_t s = 0; s < p.num_sessions(); ++s) {
    const Session& z = p.session(s);
    const auto& train = p.splits(s).train;
    for (int64_t n = 0; n < z.num_neurons; ++n) {
      double m = 0, q = 0;
      int64_t count = 0;
      for (const auto& r : train)
        for (int64_t t = r.begin; t < r.end; ++t, ++count) m += z.at(n, t);
      m /= static_cast<double>(count);
      for (const auto& r : train)
        for (int64_t t = r.begin; t < r.end; ++t) q += (z.at(n, t) - m) * (z.at(n, t) - m);
      CHECK(std::abs(m) < 1e-4);
      CHECK(std::sqrt(q / static_cast<double>(count)) == Approx(1.0).epsilon(1e-4));
      // And the stats are those of the raw train frames.
      CHECK(
          p.stats(s).mean[static_cast<size_t>(n)] ==
          Approx(d[s].at(n, 0) - z.at(n, 0) * p.stats(s).std[static_cast<size_t>(n)]).margin(1e-4));
    }
  }
  CHECK(p.notes().empty());

  SECTION("a constant neuron gets std 1 and a note") {
    Dataset c = d;
    for (float& v : c[1].trace(3)) v = 2.5f;
    const PreparedData q(c, cfg);
    CHECK(q.stats(1).std[3] == 1.0f);
    CHECK(q.stats(1).constant_neurons == std::vector<int64_t>{3});
    REQUIRE(q.notes().size() == 1);
    CHECK_THAT(q.notes()[0], Contains("synth_001") && Contains("neuron 3 is constant"));
    for (float v : q.session(1).trace(3)) CHECK(v == 0.0f);
  }
  SECTION("constant is judged at the data's own scale: tiny units and large offsets are not") {
    for (const double scale : {1e-6, 1e-20}) {
      Dataset small = d;
      for (auto& session : small.sessions)
        for (float& v : session.activity) v = float(v * scale);
      const PreparedData q(small, cfg);
      INFO("scale " << scale);
      CHECK(q.notes().empty());
      CHECK(q.session(0).at(0, 0) == Approx(p.session(0).at(0, 0)).margin(1e-3));
    }
    Dataset offset = d;
    for (auto& session : offset.sessions)
      for (float& v : session.activity) v += 1e6f;  // f32 steps of 0.0625 there; the spread is larger
    CHECK(PreparedData(offset, cfg).notes().empty());
  }
  SECTION("several constant neurons: one note for the session") {
    Dataset c = d;
    for (int64_t n : {1, 4, 6}) for (float& v : c[0].trace(n)) v = -1.0f;
    const PreparedData q(c, cfg);
    REQUIRE(q.notes().size() == 1);
    CHECK_THAT(q.notes()[0], Contains("3 of its") && Contains("neurons 1, 4, 6"));
  }
}

TEST_CASE("preprocess: the chronological support/query split shares no frame",
          "[data][preprocess]") {
  const Dataset d = synth_dataset();
  REQUIRE(PrepConfig{}.support_split == SupportSplit::Shuffled);  // the default
  PrepConfig cfg;
  cfg.support_split = SupportSplit::Chronological;
  cfg.window = {32, 8, 1};
  const PreparedData p(d, cfg);
  for (int64_t s = 0; s < p.num_sessions(); ++s) {
    // 600 frames: train 0..420; support frames 0..294 (0.7 x 420), query 294..420.
    const auto& sup = p.support(s);
    const auto& qry = p.query(s);
    REQUIRE(!sup.empty());
    REQUIRE(!qry.empty());
    CHECK(sup.front() == 0);
    CHECK(sup.back() + 32 == 294);  // the last support window ends at the cut
    CHECK(qry.front() == 294);      // the first query window starts there
    CHECK(qry.back() + 32 == 420);
    CHECK(sup.size() == 294 - 32 + 1);
    CHECK(qry.size() == 126 - 32 + 1);
    // Every query frame comes after every support frame (the windows crossing the cut, which
    // the shuffled split shares between both sets, are in neither).
    CHECK(sup.back() + 32 <= qry.front());
  }
  // The seed does not enter: the split is the same for any seed.
  PrepConfig other = cfg;
  other.seed = 43;
  CHECK(PreparedData(d, other).query(0) == p.query(0));

  SECTION("blocks: the cut counts training frames through the blocks") {
    // Blocks of 100 frames, 60 training frames each: 360 training frames in 6 blocks, 0.7 of
    // them = 252, so the support frames are blocks 0-3 (240) and 12 frames of block 4.
    const auto [sf, qf] = support_query_frames(
        {{0, 60}, {100, 160}, {200, 260}, {300, 360}, {400, 460}, {500, 560}}, 0.7);
    REQUIRE(sf.size() == 5);
    CHECK(sf.back().begin == 400);
    CHECK(sf.back().end == 412);
    REQUIRE(qf.size() == 2);
    CHECK(qf.front().begin == 412);
    CHECK(qf.front().end == 460);
    CHECK(qf.back().begin == 500);
    const auto [all, none] = support_query_frames({{0, 60}, {100, 160}}, 1.0);
    CHECK(all.size() == 2);
    CHECK(none.empty());
    CHECK_THROWS_WITH(support_query_frames({{0, 60}}, 1.5), Contains("support fraction 1.5"));
  }
  SECTION("a session whose query share holds no window is noted") {
    Dataset d2;
    d2.sessions.push_back(ramp_session("short", 4, 200));
    PrepConfig c2;
    c2.support_split = SupportSplit::Chronological;
    c2.window = {48, 8, 1};
    c2.split.train = 0.5;  // train 100 frames: support 70 (23 windows), query 30 (< 48: none)
    c2.split.val = 0.25;
    c2.split.test = 0.25;
    const PreparedData p2(d2, c2);
    CHECK(p2.query(0).empty());
    CHECK(p2.support(0).size() == 23);
    CHECK(p2.notes().empty());  // noted by meta-learning only (standard training uses it all)
    CHECK_THAT(mt::meta::meta_sessions_note(p2),
               Contains("leaves out 1 training session") &&
                   Contains("short (23 support, 0 query windows)") && Contains("48 frames") &&
                   !Contains("without its inner loop"));
    CHECK(mt::meta::meta_sessions_note(PreparedData(d, cfg)).empty());
  }
}

TEST_CASE("preprocess: support and query split the training windows", "[data][preprocess]") {
  const Dataset d = synth_dataset();
  PrepConfig cfg;
  cfg.window = {32, 8, 1};
  cfg.seed = 42;
  cfg.support_split = SupportSplit::Shuffled;
  const PreparedData p(d, cfg);
  for (int64_t s = 0; s < p.num_sessions(); ++s) {
    const auto& train = p.windows(s, Split::Train);
    const auto& sup = p.support(s);
    const auto& qry = p.query(s);
    CHECK(static_cast<int64_t>(sup.size()) ==
          std::llround(0.7 * static_cast<double>(train.size())));
    // Disjoint and covering.
    std::vector<int64_t> both;
    std::set_intersection(sup.begin(), sup.end(), qry.begin(), qry.end(), std::back_inserter(both));
    CHECK(both.empty());
    std::vector<int64_t> all(sup);
    all.insert(all.end(), qry.begin(), qry.end());
    std::sort(all.begin(), all.end());
    CHECK(all == train);
    // Shuffled, not the first 70% in time.
    CHECK(sup.back() > qry.front());
  }
  // Deterministic by seed; another seed draws another split.
  const PreparedData again(d, cfg);
  CHECK(again.support(0) == p.support(0));
  PrepConfig other = cfg;
  other.seed = 43;
  CHECK(PreparedData(d, other).support(0) != p.support(0));

  const auto [s2, q2] = support_query_split({1, 2}, 0.99, 0);
  CHECK(s2.size() == 1);
  CHECK(q2.size() == 1);
}

TEST_CASE("preprocess: a split shorter than one window is an error", "[data][preprocess]") {
  Dataset d;
  d.sessions.push_back(ramp_session("short", 4, 200));
  PrepConfig cfg;
  cfg.window = {40, 8, 1};  // val and test are 30 frames
  REQUIRE_THROWS_WITH(PreparedData(d, cfg),
                      Contains("session 'short'") && Contains("val split is 30 frames") &&
                          Contains("frames 140..170 of 200") && Contains("seq_length 40") &&
                          Contains("seq_length <= 30"));
  cfg.split = SplitConfig::poco_blocks();
  cfg.split.block_length = 100;
  REQUIRE_THROWS_WITH(PreparedData(d, cfg), Contains("session 'short'") &&
                                                Contains("val split's longest stretch is 20") &&
                                                Contains("block_length"));
  // A zero fraction means no split, not an error.
  cfg.split = SplitConfig{};
  cfg.split.train = 0.7;
  cfg.split.val = 0.3;
  cfg.split.test = 0.0;
  const PreparedData p(d, cfg);
  CHECK(p.windows(0, Split::Test).empty());
  CHECK(p.windows(0, Split::Val).size() == 21);
  REQUIRE_THROWS_WITH(PreparedData(d, PrepConfig{{}, {8, 8, 1}}), Contains("must exceed"));
  // A recording shorter than one window: no fraction helps, and the fix says so.
  Dataset tiny;
  tiny.sessions.push_back(ramp_session("tiny", 4, 30));
  REQUIRE_THROWS_WITH(PreparedData(tiny, PrepConfig{{}, {40, 8, 1}}),
                      Contains("session 'tiny'") &&
                          Contains("the whole recording (30 frames) is shorter than one window") &&
                          Contains("at most 21 frames, this split's length") &&
                          !Contains("larger"));
  // More neurons than frames: the transposition is named first, the other fixes after.
  Dataset wide;
  wide.sessions.push_back(ramp_session("wide", 300, 200));
  REQUIRE_THROWS_WITH(PreparedData(wide, PrepConfig{{}, {40, 8, 1}}),
                      Contains("seq_length 40; the session has more neurons, 300, than frames, "
                               "200: is its matrix transposed?") &&
                          Contains("otherwise use seq_length <= 30"));
}
