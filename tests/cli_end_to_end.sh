#!/usr/bin/env bash
# End-to-end check of build/bin/metatape: synthetic data, a short training run of each model
# kind, evaluation, adaptation, and the error paths (unknown config key, missing data folder,
# bad --set, bad attention settings in the environment). Prints "N passed, N failed" and exits non-zero on any failure.
set -uo pipefail
bin="$1"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
passed=0
failed=0
# Debian's interpreter, with python3-numpy (tools/install-deps.sh), whatever python3 is first on
# PATH.
py=python3
if [[ -x /usr/bin/python3 ]]; then py=/usr/bin/python3; fi
check() {  # check "description" command...
  local what="$1"
  shift
  if "$@" >"$work/out.txt" 2>&1; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    echo "FAILED: $what"
    tail -n 20 "$work/out.txt"
  fi
}
fails_with() {  # fails_with "description" "expected text" command...
  local what="$1" text="$2"
  shift 2
  if "$@" >"$work/out.txt" 2>&1; then
    failed=$((failed + 1))
    echo "FAILED (exit 0): $what"
  elif grep -qF -- "$text" "$work/out.txt"; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    echo "FAILED (message): $what; expected '$text' in:"
    cat "$work/out.txt"
  fi
}

small=(--set data.synthetic.num_sessions=3 --set data.synthetic.min_neurons=8
       --set data.synthetic.max_neurons=12 --set data.synthetic.num_frames=400
       --set data.synthetic.n_total=64 --set 'data.holdout=["synth_002"]'
       --set model.poco.dim=16 --set model.poco.dim_head=8 --set model.poco.self_heads=2
       --set model.poco.conditioning_dim=16 --set model.poco.num_latents=4
       --set model.poco.seq_length=16 --set model.poco.pred_length=4 --set model.poco.patch=4
       --set train.steps=6 --set train.batch_size=4 --set train.eval_every=3
       --set train.log_progress=false --set adapt.train.steps=4 --set adapt.train.eval_every=2)

# CUPTI (the profiler's device trace) is loaded at run time, not linked: the tool starts on a
# machine without libcupti.
check "no link-time dependency on libcupti" bash -c '! readelf -d "$1" | grep -q "NEEDED.*libcupti"' _ "$bin"
check "data synth" "$bin" data synth --out "$work/synth" --set data.synthetic.num_sessions=2 \
  --set data.synthetic.num_frames=300 --set data.synthetic.n_total=64 \
  --set data.synthetic.min_neurons=8 --set data.synthetic.max_neurons=10
check "synth wrote npz" test -f "$work/synth/synth_000.npz"
fails_with "synth into a folder holding a set" "holds 2 .npz file(s) already" "$bin" data synth \
  --out "$work/synth" --set data.synthetic.num_sessions=1
check "synth --overwrite replaces the set" "$bin" data synth --out "$work/synth_once" \
  --set data.synthetic.num_sessions=2 --set data.synthetic.num_frames=300
check "synth --overwrite replaces the set (second)" "$bin" data synth --out "$work/synth_once" \
  --set data.synthetic.num_sessions=1 --set data.synthetic.num_frames=300 --overwrite
check "the replaced set has one session" test "$(ls "$work/synth_once" | wc -l)" -eq 1
check "train poco" "$bin" train --run "$work/poco" "${small[@]}"
for f in config.json metrics.jsonl model.safetensors summary.json; do
  check "run folder has $f" test -s "$work/poco/$f"
done
check "metrics.jsonl has one line per evaluation" test "$(wc -l <"$work/poco/metrics.jsonl")" -eq 3
check "eval" "$bin" eval --run "$work/poco" --split test
check "eval wrote json" test -s "$work/poco/eval_test.json"
check "adapt" "$bin" adapt --run "$work/poco" --set 'adapt.modes=["embeddings"]'
check "adapt wrote json into the adaptation's folder" test -s \
  "$work/poco/adapt/synth_002/adapt.json"
check "online with a drift sweep" "$bin" online --run "$work/poco" --drift 0 0.2 \
  --set online.calibration_steps=2 --set online.stride=4
check "online wrote json" test -s "$work/poco/online.json"
# The held-out session is scored from its first frame, as a new recording would arrive: the
# stream is its 400 frames, the offline method calibrates on the first 200, and the windows
# scored after them are those starting at 200, 204, ..., 396 (stride 4, horizon 4): 50. Its
# online SGD steps move the model (a score other than the frozen one).
check "online scored the held-out session as a new one" "$py" -c '
import json, sys
rows = [r for r in json.load(open(sys.argv[1]))["rows"] if r["held_out"]]
assert [r["session"] for r in rows] == ["synth_002", "synth_002"], rows
for r in rows:
    assert r["stream_frames"] == [0, 400] and r["calibration_frames"] == 200, r
    assert r["windows"] == 50 and r["offline_calibrated"], r
    assert r["online"] != r["frozen"], r
trained = [r for r in json.load(open(sys.argv[1]))["rows"] if not r["held_out"]]
assert sorted({r["session"] for r in trained}) == ["synth_000", "synth_001"], trained' \
  "$work/poco/online.json"
# The calibration segment of a held-out session is capped by its first training-split range
# (0.7 x 400 = 280 frames), and the stream is z-scored with the frames before the first scored
# forecast: 30 windows from 280 to 396.
check "online with a calibration segment longer than the training split" "$bin" online \
  --run "$work/poco" --set online.calibration_frames=1000 --set online.calibration_steps=2 \
  --set online.stride=4
check "the held-out calibration segment was capped" "$py" -c '
import json, sys
r = next(r for r in json.load(open(sys.argv[1]))["rows"] if r["held_out"])
assert r["calibration_frames"] == 280 and r["zscore_frames"] == [0, 280], r
assert r["windows"] == 30, r' "$work/poco/online.json"
# Each row times the online method as a live system would wait for it: one update per online
# step, one forecast and one cycle (update + forecast) per scored window; the time between two
# prediction times is online.stride frames of the recording (synthetic: 0.1 s per frame).
check "online timed every update, forecast and cycle" "$py" -c '
import json, sys
out = json.load(open(sys.argv[1]))
assert out["device"] == "cpu", out["device"]
for r in out["rows"]:
    l = r["latency_ms"]
    assert l["update"]["count"] == r["online_steps"], r
    assert l["forecast"]["count"] == l["cycle"]["count"] == r["windows"], r
    for kind in ("update", "forecast", "cycle"):
        assert 0 < l[kind]["median"] <= l[kind]["p95"] <= l[kind]["max"], r
    assert l["cycle"]["median"] > l["forecast"]["median"], r
    assert abs(r["frame_interval_s"] - 0.1) < 1e-9, r
    assert abs(r["prediction_interval_ms"] - 400) < 1e-6, r
    seg = r["segments"]
    assert len(seg) == min(10, r["windows"]), r
    assert sum(s["windows"] for s in seg) == r["windows"], r
    # consecutive stretches of the prediction grid (stride 4)
    for a, b in zip(seg, seg[1:]):
        assert b["frames"][0] == a["frames"][1] + 4, seg
    for s in seg:
        assert s["frames"][1] - s["frames"][0] == 4 * (s["windows"] - 1), seg' \
  "$work/poco/online.json"
# A run's sessions are scored as they were split for its training: another split would put
# trained frames into the streams.
fails_with "online with another split than the run's" "data.test_fraction is 0.4 now, 0.15" \
  "$bin" online --run "$work/poco" --set data.train_fraction=0.5 --set data.val_fraction=0.1 \
  --set data.test_fraction=0.4
# Under data.split=poco_blocks a trained session's stream is its last block's validation + test
# frames, those after its last training frame (blocks of 150 of 400 frames: the last is
# [300, 400), trained on [300, 360)); a session whose last block leaves too few is left out.
check "train poco with block splits" "$bin" train --run "$work/poco_blocks" "${small[@]}" \
  --set data.split=poco_blocks --set data.block_length=150
check "online of a block-split run" "$bin" online --run "$work/poco_blocks" \
  --set online.calibration_steps=2 --set online.stride=4
check "... streams the frames after the last training frame" "$py" -c '
import json, sys
rows = json.load(open(sys.argv[1]))["rows"]
trained = [r for r in rows if not r["held_out"]]
assert len(trained) == 2, rows
for r in trained:
    assert r["stream_frames"] == [360, 400] and r["calibration_frames"] == 20, r' \
  "$work/poco_blocks/online.json"
check "train poco with a last block of 5 frames" "$bin" train --run "$work/poco_blocks5" \
  "${small[@]}" --set data.split=poco_blocks --set data.block_length=395
check "online leaves its trained sessions out" grep -q \
  "trained session(s) synth_000 (2 frames), synth_001 (2 frames) left out" \
  <("$bin" online --run "$work/poco_blocks5" --set online.calibration_steps=2 2>&1)
fails_with "... and with no held-out session, has none to score" "online: no session to score" \
  "$bin" online --run "$work/poco_blocks5" --set 'data.holdout=[]'
# One writer of a run folder at a time, and no reader beside it (eval, predict and online
# without --label read; train, adapt and online --label write); readers beside each other. The
# lock is held here by flock(1) (-o: released when flock itself is killed).
flock -o -x "$work/poco/.train.lock" sleep 60 &
holder=$!
sleep 1
fails_with "eval while the run is written" "is writing this folder" "$bin" eval \
  --run "$work/poco" --split test
kill "$holder"; wait "$holder" 2>/dev/null
flock -o -s "$work/poco/.train.lock" sleep 60 &
holder=$!
sleep 1
check "eval beside another reader" "$bin" eval --run "$work/poco" --split test
fails_with "adapt while the run is read" "is reading this folder" "$bin" adapt \
  --run "$work/poco" --set 'adapt.modes=["embeddings"]'
kill "$holder"; wait "$holder" 2>/dev/null
# A writer killed mid-write leaves .<file>.tmp.<pid>.<n>; the next writer removes it once that
# process is gone (4194305: above any pid).
check "train a run of no steps" "$bin" train --run "$work/stale_tmp" "${small[@]}" \
  --set train.steps=0
head -c 1000 /dev/zero >"$work/stale_tmp/.model.safetensors.tmp.4194305.0"
head -c 1000 /dev/zero >"$work/stale_tmp/.keep.tmp.x.0"
check "train over it" "$bin" train --run "$work/stale_tmp" "${small[@]}" --set train.steps=0 \
  --overwrite
check "... removed the dead writer's temporary file" test ! -e \
  "$work/stale_tmp/.model.safetensors.tmp.4194305.0"
check "... and nothing else" test -e "$work/stale_tmp/.keep.tmp.x.0"
# Frames 1 us apart (data.synthetic.dt, regenerated): no cycle fits between two of them.
check "online of a recording faster than its cycles" "$bin" online --run "$work/poco" \
  --set data.synthetic.dt=1e-6 --set online.stride=4 --set online.calibration_steps=2
cp "$work/out.txt" "$work/online_behind.txt"
check "... notes that it would fall behind" grep -q \
  "would fall behind a live recording of synth_000 (.* ms of 0.004 ms).*online.stride=[0-9]* would" \
  "$work/online_behind.txt"
# online --label keeps each held-out session's online-adapted model as an adaptation, which
# predict uses with the session z-scored as its stream was (the statistics of frames 0-200).
# With online.lr=0 the kept model is the transferred one, whose forecasts online scored as
# "frozen": predict's forecasts of the same windows (every window from frame 200) score the same.
cp -a "$work/poco" "$work/poco_live"
check "online keeps the held-out models under a label" "$bin" online --run "$work/poco_live" \
  --label live --set online.stride=4 --set online.calibration_steps=2 --set online.lr=0.05
check "... as an adaptation that names them" "$py" -c '
import json, os, sys
a = json.load(open(os.path.join(sys.argv[1], "adapt.json")))
assert a["made_by"] == "online" and a["best_method"] == "online", a
assert [s["name"] for s in a["sessions"]] == ["synth_002"], a
(m,) = a["methods"]
assert m["models"] == {"synth_002": "adapted_online_synth_002.safetensors"}, m
assert m["sessions"][0]["zscore_frames"] == [0, 200], m
# every window predicted (at 12, 16, ..., 396: the context is 12 frames) learned from once, the
# last after the stream ended
assert m["sessions"][0]["online_steps"] + m["sessions"][0]["final_steps"] == 97, m
assert m["sessions"][0]["final_steps"] == 1, m
assert os.path.getsize(os.path.join(sys.argv[1], m["models"]["synth_002"])) > 0
assert json.load(open(sys.argv[2]))["label"] == "live"' \
  "$work/poco_live/adapt/live" "$work/poco_live/online.json"
check "online keeps the unmoved model under another label" "$bin" online \
  --run "$work/poco_live" --label zero --set online.lr=0 --set online.calibration_steps=0
fails_with "predict with two adaptations of the session" "choose one with --adapted NAME" \
  "$bin" predict --run "$work/poco_live" --session synth_002 --out "$work/live.npz"
check "predict with the unmoved online model" "$bin" predict --run "$work/poco_live" \
  --session synth_002 --adapted zero --split all --out "$work/zero.npz"
check "... scores the windows online scored as its frozen model did" "$py" -c '
import json, sys
import numpy as np
z = np.load(sys.argv[1])
row = next(r for r in json.load(open(sys.argv[2]))["rows"] if r["held_out"])
norm = lambda v: (v - z["mean"][None, :, None]) / z["std"][None, :, None]
pred, target, start = norm(z["pred"]), norm(z["target"]), z["start"]
# copy-last: the frame before each window, the first target of the window one frame earlier
keep = start >= 200
last = target[np.flatnonzero(keep) - 1, :, :1]
score = 1 - ((pred[keep] - target[keep]) ** 2).sum() / ((last - target[keep]) ** 2).sum()
assert keep.sum() == row["windows"] == 197, (keep.sum(), row)
assert abs(score - row["frozen"]) < 1e-4, (score, row["frozen"])' "$work/zero.npz" \
  "$work/poco_live/online.json"
check "predict with the online-adapted model" "$bin" predict --run "$work/poco_live" \
  --session synth_002 --adapted live --split all --out "$work/live.npz"
cp "$work/out.txt" "$work/predict_live.txt"
check "... notes that it learned from the recording's windows" grep -q \
  "learned from the recording's windows up to frame 400, its end" "$work/predict_live.txt"
fails_with "predict --split unseen of a model that streamed the whole recording" \
  "holds no unseen frame; keep a model that leaves some with --set online.unseen_frames=N" \
  "$bin" predict --run "$work/poco_live" --session synth_002 --adapted live --split unseen \
  --out "$work/live.npz"
fails_with "predict --split unseen of a trained session" "is not such a model" "$bin" predict \
  --run "$work/poco_live" --session synth_000 --split unseen --out "$work/live.npz"
check "... scored as its stream was normalised" grep -q \
  "z-scored with frames \[0, 200) as its online stream was" "$work/predict_live.txt"
check "... whose forecasts are another model's" "$py" -c '
import sys
import numpy as np
a, b = np.load(sys.argv[1]), np.load(sys.argv[2])
assert (a["mean"] == b["mean"]).all() and abs(a["pred"] - b["pred"]).max() > 1e-4' \
  "$work/live.npz" "$work/zero.npz"
rm "$work/poco_live/adapt/live/adapted_online_synth_002.safetensors"
fails_with "predict with a kept model deleted: online keeps it again" \
  "keep it again: metatape online --run $work/poco_live --label live" "$bin" predict \
  --run "$work/poco_live" --session synth_002 --adapted live --out "$work/live.npz"
cp "$work/out.txt" "$work/predict_deleted.txt"
check "... with the online settings it was kept with" grep -q \
  "online.calibration_steps=2.*online.lr=0.05.*online.stride=4" "$work/predict_deleted.txt"
# online.unseen_frames holds the last frames of each stream back: no method learns from them, and
# each method's final model forecasts them without updates; the kept model's forecasts of them
# (predict --split unseen) score what online.json says.
check "online holding back the last 100 frames" "$bin" online --run "$work/poco_live" \
  --label tail --set online.unseen_frames=100 --set online.stride=4 \
  --set online.calibration_steps=2 --set online.lr=0.05 --forecasts "$work/fc/"
cp "$work/out.txt" "$work/online_tail.txt"
check "... prints their scores" grep -q \
  "its 100 held-back frames (online.unseen_frames), forecast without updates" \
  "$work/online_tail.txt"
check "... in a table of the new session alone" test \
  "$(grep -A2 'held-back frames' "$work/online_tail.txt" | grep -c 'synth_00[0-2]')" -eq 1
check "... and writes them" "$py" -c '
import json, sys
rows = json.load(open(sys.argv[1]))["rows"]
# a trained session streams its validation + test frames whole
assert all(r["unseen"] is None for r in rows if not r["held_out"]), rows
for r in (r for r in rows if r["held_out"]):
    u = r["unseen"]
    end = r["stream_frames"][1]
    assert u["stream_frames"] == [end, end + 100], r
    # prediction times end, end + 4, ... while t + 4 <= end + 100
    assert u["windows"] == 25 and u["frames"] == [end, end + 96], u
new = next(r for r in rows if r["held_out"])
assert new["stream_frames"] == [0, 300], new
kept = json.load(open(sys.argv[2]))["methods"][0]["sessions"][0]
assert kept["unseen"] == new["unseen"], kept' "$work/poco_live/online.json" \
  "$work/poco_live/adapt/tail/adapt.json"
check "predict --split unseen with the model kept" "$bin" predict --run "$work/poco_live" \
  --session synth_002 --adapted tail --split unseen --out "$work/tail.npz"
cp "$work/out.txt" "$work/predict_tail.txt"
check "... notes that it never learned from them" grep -q \
  "frames \[300, 400), after the model's online stream: it never learned" \
  "$work/predict_tail.txt"
check "... scores them as online did" "$py" -c '
import json, re, sys
row = next(r for r in json.load(open(sys.argv[1]))["rows"] if r["held_out"])
text = open(sys.argv[2]).read()
score = float(re.search(r"score (-?[0-9.]+) on these windows", text).group(1))
assert "25 forecast(s)" in text, text
assert abs(score - row["unseen"]["online"]) < 1e-4, (score, row["unseen"])' \
  "$work/poco_live/online.json" "$work/predict_tail.txt"
# online --forecasts: each session's forecasts as online made them, in the recording's units; the
# kept model's forecasts of the held-back frames are the ones predict makes with it.
check "online --forecasts wrote every session's, and nothing else" test \
  "$(ls -A "$work/fc" | tr '\n' ' ')" = "forecasts.json synth_000.npz synth_001.npz synth_002.npz "
check "... with forecasts.json saying what they are" "$py" -c '
import json, sys
m = json.load(open(sys.argv[1]))
rows = {r["session"]: r for r in json.load(open(sys.argv[2]))["rows"]}
assert m["label"] == "tail" and m["options"]["unseen_frames"] == 100, m
assert [f["file"] for f in m["files"]] == ["synth_000.npz", "synth_001.npz", "synth_002.npz"], m
for f in m["files"]:
    r = rows[f["session"]]
    assert f["windows"] == r["windows"] and f["held_out"] == r["held_out"], (f, r)
    assert f["unseen_windows"] == (25 if r["held_out"] else 0) and f["zscored"], f' \
  "$work/fc/forecasts.json" "$work/poco_live/online.json"
check "... the held-back windows as predict forecasts them with the kept model" "$py" -c '
import json, sys
import numpy as np
f, p = np.load(sys.argv[1]), np.load(sys.argv[2])
row = next(r for r in json.load(open(sys.argv[3]))["rows"] if r["held_out"])
unseen = f["unseen"] == 1
assert len(f["start"]) == row["windows"] + row["unseen"]["windows"], (f["start"].shape, row)
assert unseen.sum() == 25 and not unseen[:row["windows"]].any(), f["unseen"]
assert (f["start"][unseen] == p["start"]).all(), (f["start"][unseen], p["start"])
assert (f["target"][unseen] == p["target"]).all()
assert np.abs(f["online"][unseen] - p["pred"]).max() <= 1e-4 * np.abs(p["pred"]).max()
assert (f["mean"] == p["mean"]).all() and (f["std"] == p["std"]).all()
# the stream windows: every 4 frames from the first scored one
assert (np.diff(f["start"][~unseen]) == 4).all() and f["start"][~unseen][0] >= 200
assert np.abs(f["online"] - f["frozen"]).max() > 1e-4' "$work/fc/synth_002.npz" \
  "$work/tail.npz" "$work/poco_live/online.json"
touch "$work/fc_file"
fails_with "online --forecasts naming a file" "is a file, not a folder" "$bin" online \
  --run "$work/poco_live" --forecasts "$work/fc_file"
fails_with "online --forecasts into a folder holding files" \
  "holds 4 entries (forecasts.json, synth_000.npz, synth_001.npz, ...)" "$bin" online \
  --run "$work/poco_live" --forecasts "$work/fc"
fails_with "online --forecasts inside the run folder" "is inside the run folder" "$bin" online \
  --run "$work/poco_live" --forecasts "$work/poco_live/fc"
fails_with "online --forecasts of an empty name" "names no folder" "$bin" online \
  --run "$work/poco_live" --forecasts ""
fails_with "online --forecasts refused later" "an online.unseen_frames of at most" "$bin" online \
  --run "$work/poco_live" --forecasts "$work/fc_new" --set online.unseen_frames=390
check "... leaves no folder behind" test ! -e "$work/fc_new"
# A failure after the forecasts were moved in (online.json cannot be written) takes them out again.
cp -a "$work/poco" "$work/poco_fail"
rm -f "$work/poco_fail/online.json"
mkdir -p "$work/poco_fail/online.json/x"
fails_with "online whose online.json cannot be written" "online.json" "$bin" online \
  --run "$work/poco_fail" --forecasts "$work/fc_fail" --set online.stride=8 \
  --set online.calibration_steps=2
check "... leaves no forecasts" test ! -e "$work/fc_fail"
rm -rf "$work/poco_fail"
# The work folder of another online run: refused while that process runs (this script's pid
# stands for it), removed once it is gone (4194305: above any pid).
mkdir -p "$work/fc_stale/.online.$$.partial"
fails_with "online --forecasts into a running online's work folder" \
  "is the work of another online run, still running: wait for it to end" "$bin" online \
  --run "$work/poco_live" --forecasts "$work/fc_stale"
mv "$work/fc_stale/.online.$$.partial" "$work/fc_stale/.online.4194305.partial"
check "online --forecasts into a killed online's work folder" "$bin" online \
  --run "$work/poco_live" --forecasts "$work/fc_stale" --set online.stride=8 \
  --set online.calibration_steps=2
check "... removed it" test ! -e "$work/fc_stale/.online.4194305.partial" -a \
  -e "$work/fc_stale/forecasts.json"
fails_with "online holding back more frames than a stream can spare" \
  "an online.unseen_frames of at most" "$bin" online --run "$work/poco_live" \
  --set online.unseen_frames=390
check "... before any stream ran" test "$(grep -c '^online: ' "$work/out.txt")" -eq 0
fails_with "online holding back frames without held-out sessions" \
  "online.unseen_frames (100) holds the last frames of each held-out session" "$bin" online \
  --run "$work/poco_live" --set online.unseen_frames=100 --set 'data.holdout=[]'
fails_with "online --label of a drift sweep" "drop --label" "$bin" online \
  --run "$work/poco_live" --label drift --drift 0.1
fails_with "online --label without held-out sessions" "data.holdout is empty" "$bin" online \
  --run "$work/poco_live" --label none --set 'data.holdout=[]'
fails_with "online --label with other preprocessing" "online: data.zscore is false now" \
  "$bin" online --run "$work/poco_live" --label raw --set data.zscore=false
fails_with "online --label of an empty name" "the adaptation's name '' is 0 bytes long" "$bin" \
  online --run "$work/poco_live" --label ""
# adapt's fine-tuned models and online's kept ones are not replaced by the other command.
fails_with "online --label naming adapt's adaptation" "made by metatape adapt" "$bin" online \
  --run "$work/poco_live" --label synth_002
fails_with "adapt --label naming online's adaptation" "made by metatape online" "$bin" adapt \
  --run "$work/poco_live" --label live
# A user's folder of the label's name is refused before any stream runs; nothing is left behind.
mkdir "$work/poco_live/adapt/mine"
fails_with "online --label naming a user's folder" "is there and is not an adaptation" "$bin" \
  online --run "$work/poco_live" --label mine
check "... before any stream ran" test "$(grep -c '^online: ' "$work/out.txt")" -eq 0
# A stride that leaves a stream nothing to score is refused, naming one that would.
fails_with "online with a stride longer than the scored range" \
  "online.stride 1000000 leaves no prediction time to score" "$bin" online --run "$work/poco" \
  --set online.stride=1000000
check "... before any stream ran" test "$(grep -c '^online: ' "$work/out.txt")" -eq 0
fails_with "online holding out a trained session" "a session the model was trained on" "$bin" \
  online --run "$work/poco" --drift 0.1 --set 'data.holdout=["synth_000"]'
check "train nlinear on the npz folder" "$bin" train --run "$work/nl" "${small[@]}" \
  --set model.kind=nlinear --set "data.path=\"$work/synth\"" --set 'data.holdout=[]'
check "train mlp" "$bin" train --run "$work/mlp" "${small[@]}" --set model.kind=mlp \
  --set model.mlp_hidden=8
# A baseline has no embedding tables: online updates all of its parameters, on its trained
# sessions and on the held-out one (whose model is the transferred one); each adapt mode
# fine-tunes all of it, at the mode's step size.
check "online of an mlp run" "$bin" online --run "$work/mlp" --set online.stride=8 \
  --set online.calibration_steps=2
cp "$work/out.txt" "$work/online_mlp.txt"
check "... updates all of its parameters" grep -q "online steps update all of its parameters" \
  "$work/online_mlp.txt"
check "... and moved the held-out session's model" "$py" -c '
import json, sys
r = next(r for r in json.load(open(sys.argv[1]))["rows"] if r["held_out"])
assert r["online"] != r["frozen"], r' "$work/mlp/online.json"
check "adapt an mlp run" "$bin" adapt --run "$work/mlp"
cp "$work/out.txt" "$work/adapt_mlp.txt"
check "... notes that each mode fine-tunes all of it" grep -q "each mode fine-tunes all of its" \
  "$work/adapt_mlp.txt"
check "... at each mode's step size" "$py" -c '
import json, sys
lr = {m["method"]: m.get("lr") for m in json.load(open(sys.argv[1]))["methods"]}
assert lr == {"copy_last": None, "finetune:embeddings": 0.003, "finetune:embeddings+head": 0.001,
              "finetune:all": 0.0003}, lr' "$work/mlp/adapt/synth_002/adapt.json"
fails_with "a misspelt mode in adapt.lr_by_mode" "adapt.lr_by_mode.embedings: parameter set" \
  "$bin" adapt --run "$work/mlp" --set adapt.lr_by_mode.embedings=0.1
fails_with "online --drift on recorded data" "regenerates synthetic data" "$bin" online \
  --run "$work/nl" --drift 0.1

check "train fomaml" "$bin" train --run "$work/fomaml" "${small[@]}" --method fomaml \
  --set train.meta.inner_steps=2
check "train e2e-ttt" "$bin" train --run "$work/e2e" "${small[@]}" --method e2e-ttt \
  --set train.meta.inner_steps=2 --set train.meta.meta_batch=2
check "e2e-ttt run recorded its method" grep -q '"method": "e2e-ttt"' "$work/e2e/config.json"
check "train e2e-ttt, first step checkpointed, saved outputs recomputed, dropout" "$bin" train \
  --run "$work/e2e_ckpt" "${small[@]}" --method e2e-ttt --set train.meta.inner_steps=2 \
  --set train.meta.checkpoint_steps=1 --set saved_recompute=always --set train.meta.dropout=true
check "the run recorded its checkpointing" grep -q '"checkpoint_steps": 1' "$work/e2e_ckpt/config.json"
check "the run recorded dropout in meta-training" "$py" -c '
import json, sys
assert json.load(open(sys.argv[1]))["train"]["meta"]["dropout"] is True' \
  "$work/e2e_ckpt/config.json"
fails_with "unknown saved_recompute" "saved_recompute 'sometimes' is not known" "$bin" train \
  --run "$work/x" --set saved_recompute=sometimes
fails_with "negative checkpoint_steps" "checkpoint_steps must be >= 0" "$bin" train \
  --run "$work/x" --set train.meta.checkpoint_steps=-1
fails_with "unknown method" "method 'maml'" "$bin" train --run "$work/x" --method maml

# Meta-learned runs are evaluated as they are used: after the inner loop (eval and summary).
check "fomaml summary names its test procedure" grep -q '"test_procedure": "after the 2-step inner loop' \
  "$work/fomaml/summary.json"
check "eval of a fomaml run" "$bin" eval --run "$work/fomaml" --split val
check "eval after the inner loop" grep -q '"procedure": "after the 2-step inner loop' \
  "$work/fomaml/eval_val.json"
check "eval --unadapted" "$bin" eval --run "$work/fomaml" --split val --unadapted
check "eval --unadapted wrote its own file" grep -q '"procedure": "initial weights' \
  "$work/fomaml/eval_val_unadapted.json"
# eval of a meta-learned run also gives the initial weights' score (what the inner loop adds),
# and notes an inner loop at the default step size that barely moves the model.
check "eval gives the inner loop's gain" "$bin" eval --run "$work/fomaml" --split val
cp "$work/out.txt" "$work/eval_gain.txt"
check "... printed" grep -q "^the inner loop: [-+][0-9.]* over the initial weights" \
  "$work/eval_gain.txt"
check "... noted at train.meta.inner_lr 0.001" grep -q \
  "inner loop barely changes the score (.*train.meta.inner_lr 0.001" "$work/eval_gain.txt"
check "... the same as eval --unadapted's score" "$py" -c '
import json, sys
a, u = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
assert a["unadapted_score"] == u["score"], (a["unadapted_score"], u["score"])' \
  "$work/fomaml/eval_val.json" "$work/fomaml/eval_val_unadapted.json"
check "adapt of a meta-learned run" "$bin" adapt --run "$work/e2e" --set 'adapt.modes=["embeddings"]'
check "adapt ran its inner loop" grep -q '"method": "inner-loop"' \
  "$work/e2e/adapt/synth_002/adapt.json"
check "adapt with POCO's random rows for the new sessions" "$bin" adapt --run "$work/e2e" \
  --set 'adapt.modes=["embeddings"]' --set adapt.new_session_init=random
check "adapt recorded the initialisation" grep -q '"new_session_init": "random"' \
  "$work/e2e/adapt/synth_002/adapt.json"
# test@0 is the transferred starting point, the same for the fine-tuning modes and the inner
# loop (two code paths: evaluate, and adapt_session's evaluation before its first step), within
# f32 summation order.
check "adapt's test@0 is the starting point's for every method" "$py" -c '
import json, sys
m = {x["method"]: x for x in json.load(open(sys.argv[1]))["methods"]}
ft, inner = m["finetune:embeddings"], m["inner-loop"]
assert abs(ft["test_score_initial"] - inner["test_score_initial"]) < 1e-6, (ft, inner)' \
  "$work/e2e/adapt/synth_002/adapt.json"
check "predict with a fine-tuned model" "$bin" predict --run "$work/e2e" --session synth_002 \
  --method finetune:embeddings --out "$work/e2e_pred_ft.npz"
ft_score=$(grep -o 'score [-0-9.]*' "$work/out.txt" | head -1 | cut -d' ' -f2)
check "adapt's test@best is the saved fine-tuned model's test score" "$py" -c '
import json, sys
m = {x["method"]: x for x in json.load(open(sys.argv[1]))["methods"]}
sys.exit(0 if sys.argv[2] and "%.4f" % m["finetune:embeddings"]["test_score_at_best"] == sys.argv[2] else 1)
' "$work/e2e/adapt/synth_002/adapt.json" "$ft_score"
check "predict with the inner loop's adapted model" "$bin" predict --run "$work/e2e" \
  --session synth_002 --method inner-loop --out "$work/e2e_pred.npz"
inner_score=$(grep -o 'score [-0-9.]*' "$work/out.txt" | head -1 | cut -d' ' -f2)
check "the saved inner-loop model is the one of its best point and scores as it did (test split)" "$py" -c '
import json, struct, sys
adapt = json.load(open(sys.argv[1]))
inner = next(m for m in adapt["methods"] if m["method"] == "inner-loop")
run = next(s for s in inner["sessions"] if s["session"] == "synth_002")
with open(sys.argv[3], "rb") as f:
    header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
saved = json.loads(header["__metadata__"]["metatape.metadata"])["adapted"]["scores"]
assert saved["best_step"] == run["best_step"], (saved, run["best_step"])
assert saved["test_score"] == run["test_score_at_best"], saved
# Validated at steps 0, 1, 2 (the inner loop is meta-learned for 2 steps) and 4.
assert [p["step"] for p in run["curve"]] == [0, 1, 2, 4], run["curve"]
sys.exit(0 if sys.argv[2] and "%.4f" % run["test_score_at_best"] == sys.argv[2] else 1)
' "$work/e2e/adapt/synth_002/adapt.json" "$inner_score" \
  "$work/e2e/adapt/synth_002/adapted_inner-loop_synth_002.safetensors"
# A meta-learned run adapts online at online.lr: another step size than its inner loop's is noted.
check "online of a meta-learned run at another step size" "$bin" online --run "$work/e2e" \
  --set online.lr=0.01 --set online.stride=8 --set online.calibration_steps=2
cp "$work/out.txt" "$work/online_meta.txt"
check "... is noted, with the settings of its inner loop" grep -q \
  "meta-learned (e2e-ttt) for SGD at train.meta.inner_lr 0.001.*--set online.lr=0.001" \
  "$work/online_meta.txt"
fails_with "an unknown new-session initialisation" "'zeros' is not known" "$bin" adapt \
  --run "$work/e2e" --set adapt.new_session_init=zeros
# A run folder is never mixed: a second train refuses it, --overwrite removes the old run first.
fails_with "train into a run folder that holds a run" "holds a run already" "$bin" train \
  --run "$work/fomaml" "${small[@]}"
check "adapt the fomaml run" "$bin" adapt --run "$work/fomaml" --set 'adapt.modes=["embeddings"]' \
  --set adapt.train.steps=2 --set adapt.train.eval_every=1
check "train --overwrite" "$bin" train --run "$work/fomaml" "${small[@]}" --overwrite
check "--overwrite removed the old run's results" test ! -e "$work/fomaml/eval_val_unadapted.json" \
  -a ! -e "$work/fomaml/adapt"
check "--overwrite wrote the new method" grep -q '"method": "standard"' "$work/fomaml/config.json"
check "a run's config.json is a valid --config" "$bin" train --config "$work/poco/config.json" \
  --run "$work/poco_again" --set train.steps=2
# Resumable training: train_state.safetensors holds the state of the last evaluation point. A run
# that stopped at step 6 and is resumed to step 9 ends byte for byte as a 9-step run (same model
# file, same curve); only settings that do not change the training may differ.
check "train 9 steps" "$bin" train --run "$work/nine" "${small[@]}" --set train.steps=9
check "train 6 steps" "$bin" train --run "$work/six" "${small[@]}"
check "the run folder has a training state" test -s "$work/six/train_state.safetensors"
check "eval the 6-step run" "$bin" eval --run "$work/six" --split test
check "adapt the 6-step run" "$bin" adapt --run "$work/six" --set 'adapt.modes=["embeddings"]' \
  --set adapt.train.steps=2 --set adapt.train.eval_every=1
fails_with "resume a finished run" "nothing to resume" "$bin" train --run "$work/six" --resume
fails_with "resume with another config value" "train.lr is 0.5 now, 0.001 in the run" "$bin" \
  train --run "$work/six" --resume --set train.steps=9 --set train.lr=0.5
fails_with "resume with another method" "train.method is \"fomaml\" now" "$bin" \
  train --run "$work/six" --resume --set train.steps=9 --method fomaml
check "a refused resume leaves the run's results" test -s "$work/six/summary.json" -a \
  -s "$work/six/eval_test.json" -a -s "$work/six/adapt/synth_002/adapt.json"
fails_with "resume with --config" "drop --config" "$bin" train --run "$work/six" --resume \
  --config "$work/six/config.json"
fails_with "resume a folder without a run" "no config.json" "$bin" train --run "$work/none" --resume
check "resume 6 -> 9 steps" "$bin" train --run "$work/six" --resume --set train.steps=9
check "resuming removed the stale evaluation and adaptations" test \
  ! -e "$work/six/eval_test.json" -a ! -e "$work/six/adapt"
check "the resumed run's model is the 9-step run's" cmp "$work/nine/model.safetensors" \
  "$work/six/model.safetensors"
check "the resumed run's curve is the 9-step run's" test \
  "$(grep -o '"score":[^,]*' "$work/six/metrics.jsonl")" = \
  "$(grep -o '"score":[^,]*' "$work/nine/metrics.jsonl")"
check "the resumed run has 4 evaluation points" test "$(wc -l <"$work/six/metrics.jsonl")" -eq 4
check "the resumed run's config has the new train.steps" grep -q '"steps": 9' "$work/six/config.json"
# Early stopping (train.patience): a run stops once 2 evaluations in a row have not improved on
# the best (a large learning rate: the score stalls within 30 evaluations; step 11 here); resumed
# with early stopping off it ends byte for byte as the run without it.
stall=(--set train.steps=30 --set train.eval_every=1 --set train.lr=0.01)
check "train with train.patience=2" "$bin" train --run "$work/patient" "${small[@]}" "${stall[@]}" \
  --set train.patience=2
cp "$work/out.txt" "$work/patient.txt"
check "the early stop is printed" grep -q "stopped early at step" "$work/patient.txt"
check "summary.json says it stopped early" grep -q '"stopped_early": true' "$work/patient/summary.json"
check "the early-stopped run has fewer than 31 evaluation points" \
  test "$(wc -l <"$work/patient/metrics.jsonl")" -lt 31
fails_with "resume an early-stopped run with its patience" "raise train.patience above 2" \
  "$bin" train --run "$work/patient" --resume
fails_with "adapt.train.patience" "adapt.train.patience is 3" "$bin" adapt --run "$work/patient" \
  --set adapt.train.patience=3
check "train 30 steps without early stopping" "$bin" train --run "$work/impatient" "${small[@]}" \
  "${stall[@]}"
check "resume the early-stopped run with train.patience=0" "$bin" train --run "$work/patient" \
  --resume --set train.patience=0
check "it ends as the run without early stopping" cmp "$work/impatient/model.safetensors" \
  "$work/patient/model.safetensors"
# The run without early stopping has its best at step 28 of 30: patience 1 would stop it at once.
fails_with "resume a finished run with a patience its curve already exhausts" \
  "train.patience 1 stops it at once" "$bin" train --run "$work/impatient" --resume \
  --set train.steps=60 --set train.patience=1
check "the refused resume left the finished run's summary" test -s "$work/impatient/summary.json"
check "with its 31 evaluation points" test "$(wc -l <"$work/patient/metrics.jsonl")" -eq 31
fails_with "a negative train.patience" "train.patience must be >= 0" "$bin" train \
  --run "$work/negative_patience" "${small[@]}" --set train.patience=-1
# A run written before a setting existed (its state and config.json lack data.csv.header,
# time_axis, label_column, time_column and train.meta.dropout) resumes, and ends as the run that
# did not stop.
check "train 6 steps for the older-state resume" "$bin" train --run "$work/older" "${small[@]}"
check "strip the settings added since from the run's state and config" "$py" -c '
import json, struct, sys, zlib
run = sys.argv[1]
new_keys = ("time_axis", "header", "label_column", "time_column")
path = run + "/train_state.safetensors"
raw = open(path, "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
header, data = json.loads(raw[8:8 + n]), raw[8 + n:]
meta = header["__metadata__"]
state = json.loads(meta["metatape.train_state"])
for k in new_keys: del state["identity"]["data"]["csv"][k]
del state["identity"]["train"]["meta"]["dropout"]
text = json.dumps(state, separators=(",", ":"))
meta["metatape.train_state"] = text
meta["metatape.train_state.crc32"] = "%08x" % zlib.crc32(text.encode())
h = json.dumps(header, separators=(",", ":")).encode()
h += b" " * (-len(h) % 8)
open(path, "wb").write(struct.pack("<Q", len(h)) + h + data)
config = json.load(open(run + "/config.json"))
for k in new_keys: del config["data"]["csv"][k]
del config["train"]["meta"]["dropout"]
json.dump(config, open(run + "/config.json", "w"), indent=2)
' "$work/older"
check "a run from before the new settings resumes" "$bin" train --run "$work/older" --resume \
  --set train.steps=9
check "the older run, resumed, ends as the 9-step run" cmp "$work/nine/model.safetensors" \
  "$work/older/model.safetensors"
# The recordings are part of what a run resumes with: a moved data folder is fine, other contents
# (same session names and sizes, another seed) are refused.
check "train on the npz folder for resuming" "$bin" train --run "$work/nl_resume" "${small[@]}" \
  --set model.kind=nlinear --set "data.path=\"$work/synth\"" --set 'data.holdout=[]'
cp -r "$work/synth" "$work/synth_moved"
"$bin" data synth --out "$work/synth_other" --set data.synthetic.num_sessions=2 \
  --set data.synthetic.num_frames=300 --set data.synthetic.n_total=64 \
  --set data.synthetic.min_neurons=8 --set data.synthetic.max_neurons=10 \
  --set data.synthetic.seed=7 >/dev/null
fails_with "resume on other recordings" "is not the one the run was trained on" "$bin" train --run "$work/nl_resume" \
  --resume --set train.steps=9 --set "data.path=\"$work/synth_other\""
cp -r "$work/nl_resume" "$work/nl_other"
sed -i "s|$work/synth\"|$work/synth_other\"|" "$work/nl_other/config.json"
fails_with "eval on other recordings" "is not the one the run was trained on" "$bin" eval \
  --run "$work/nl_other"
check "resume from a moved data folder, with another thread count" "$bin" train \
  --run "$work/nl_resume" --resume --set train.steps=9 --set "data.path=\"$work/synth_moved\"" \
  --set threads=1
cp "$work/out.txt" "$work/resume_threads.txt"
check "... noted (on a machine of 2 cores or more)" bash -c '[ "$(nproc)" -lt 2 ] ||
  [ -n "${OMP_NUM_THREADS:-}" ] || grep -q "trained with [0-9]* CPU threads and continues with 1" "$1"' _ \
  "$work/resume_threads.txt"
cp -r "$work/synth_moved" "$work/synth_plus"
cp "$work/synth_other/synth_000.npz" "$work/synth_plus/synth_009.npz"
check "resume with a later recording added to the folder" "$bin" train --run "$work/nl_resume" \
  --resume --set train.steps=12 --set "data.path=\"$work/synth_plus\""
cp "$work/out.txt" "$work/resume_plus.txt"
check "the resumed run left the later recording out" grep -q "left out 1 session(s).*synth_009" \
  "$work/resume_plus.txt"
fails_with "resume a model without parameters" "nothing to resume" "$bin" train \
  --run "$work/poco" --resume --set model.kind=copy_last
# Ctrl-C (SIGINT) once the first evaluation is written: the run stops after its current step,
# saves its state there, exits with 130, and resumed ends as the run that was not stopped.
long=("${small[@]}" --set train.steps=6000 --set train.eval_every=1000)
check "train 6000 steps" "$bin" train --run "$work/long" "${long[@]}"
# Waits until a background process has written a file (its signal handler is then installed),
# or has ended; fails the check if neither happens within 60 s.
wait_for_file() {  # wait_for_file path pid [tries of 0.05 s, default 1200: a minute]
  for _ in $(seq "${3:-1200}"); do
    [ -s "$1" ] && return 0
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.05
  done
  return 1
}
# ... until a path exists (a folder, whose size some file systems give as 0).
wait_for_path() {  # wait_for_path path pid
  for _ in $(seq 1200); do
    [ -e "$1" ] && return 0
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.05
  done
  return 1
}
# ... for a background train: its first evaluation.
wait_for_first_evaluation() {  # wait_for_first_evaluation run_dir pid
  wait_for_file "$1/metrics.jsonl" "$2"
}
"$bin" train --run "$work/stopped" "${long[@]}" >"$work/stopped.txt" 2>&1 &
pid=$!
check "the stopped run started training" wait_for_first_evaluation "$work/stopped" "$pid"
# One train per run folder: a second one is refused while the first runs.
fails_with "a second train on a folder in use" "another metatape train" "$bin" train \
  --run "$work/stopped" --resume
kill -INT "$pid"
wait "$pid"
check "Ctrl-C stops training with exit code 130" test $? -eq 130
check "Ctrl-C names the resume command" grep -q "continue with metatape train --resume" \
  "$work/stopped.txt"
fails_with "train into a stopped run names --resume" "train --resume --run" "$bin" train \
  --run "$work/stopped" "${long[@]}"
check "resume after Ctrl-C" "$bin" train --run "$work/stopped" --resume
check "the run resumed after Ctrl-C ends as the one not stopped" cmp \
  "$work/long/model.safetensors" "$work/stopped/model.safetensors"
"$bin" train --run "$work/termed" "${long[@]}" >"$work/termed.txt" 2>&1 &
pid=$!
check "the SIGTERM run started training" wait_for_first_evaluation "$work/termed" "$pid"
kill -TERM "$pid"
wait "$pid"
check "SIGTERM stops training with exit code 143" test $? -eq 143
check "SIGTERM saved the state" grep -q "stopped after step" "$work/termed.txt"
check "resume after SIGTERM" "$bin" train --run "$work/termed" --resume
check "the run resumed after SIGTERM ends as the one not stopped" cmp \
  "$work/long/model.safetensors" "$work/termed/model.safetensors"
rm "$work/six/train_state.safetensors"
rm "$work/six/summary.json"
fails_with "resume without a training state" "has no train_state.safetensors" "$bin" train \
  --run "$work/six" --resume
# A (frames, neurons) table as pandas' DataFrame.to_csv writes it: a header of neuron names, a
# first column of times (quoted names; 2 Hz), one row per frame. data info reads it as training
# would, and a short training runs on it.
mkdir -p "$work/pandas"
for session in 0 1 2; do
  awk -v s="$session" 'BEGIN {
    printf "time"; for (n = 0; n < 10; ++n) printf ",\"n%d, s%d\"", n, s; printf "\n";
    for (t = 0; t < 600; ++t) {
      printf "%.1f", t / 2.0;
      for (n = 0; n < 10; ++n) printf ",%.4f", sin(0.05 * t * (n + 1) + s) + 0.1 * n;
      printf "\n";
    } }' >"$work/pandas/animal_$session.csv"
done
pandas_sets=(--set "data.path=\"$work/pandas\"" --set data.csv.time_axis=0
             --set data.csv.header=true --set 'data.csv.time_column="time"')
fails_with "a header row read as numbers: the hint names the option" "data.csv.header=true" \
  "$bin" data info --set "data.path=\"$work/pandas\""
check "data info reads a (frames, neurons) csv table" "$bin" data info "${pandas_sets[@]}" \
  --set 'data.holdout=["animal_2"]'
cp "$work/out.txt" "$work/info.txt"
check "data info: 10 neurons x 600 frames at 0.5 s, held out as asked" grep -qE \
  "^animal_2 +held out +10 +600 +299.5 +0.5 " "$work/info.txt"
# Session names in tables are padded by characters, not bytes: a non-ASCII name lines up.
mkdir -p "$work/umlaut"
cp "$work/pandas/animal_0.csv" "$work/umlaut/animal_0.csv"
cp "$work/pandas/animal_1.csv" "$work/umlaut/Tier_äöü.csv"
check "data info on a non-ASCII session name" "$bin" data info "${pandas_sets[@]}" \
  --set "data.path=\"$work/umlaut\"" --set 'data.holdout=["Tier_äöü"]'
cp "$work/out.txt" "$work/umlaut.txt"
check "its columns line up" "$py" -c '
import sys
lines = open(sys.argv[1], encoding="utf-8").read().splitlines()
header = next(l for l in lines if l.startswith("session"))
at = header.index(" role") + 1
rows = [l for l in lines if l.startswith(("animal_0", "Tier_"))]
assert len(rows) == 2 and all(r[at:at + 4] in ("trai", "held") for r in rows), (at, rows)
' "$work/umlaut.txt"
fails_with "a time column the header does not have" "is not a column of the header" \
  "$bin" data info "${pandas_sets[@]}" --set 'data.csv.time_column="t"'
check "train on the csv table" "$bin" train --run "$work/pandas_run" "${pandas_sets[@]}" \
  --set 'data.holdout=["animal_2"]' --set model.poco.dim=16 --set model.poco.dim_head=8 \
  --set model.poco.self_heads=2 --set train.steps=2 --set train.eval_every=1
check "the run records the csv options" grep -q '"time_column": "time"' \
  "$work/pandas_run/config.json"
# predict: forecasts of a training session from the trained model, of a held-out one from the
# model adapt saved; targets and times are the recording's own (checked against the CSV file).
fails_with "predict a held-out session before adapt" "adapt it first with metatape adapt" \
  "$bin" predict --run "$work/pandas_run" --session animal_2 --out "$work/p.npz"
check "adapt the csv run" "$bin" adapt --run "$work/pandas_run" --set adapt.train.steps=4 \
  --set adapt.train.eval_every=2
check "adapt saved an adapted model per mode" test -s \
  "$work/pandas_run/adapt/animal_2/adapted_embeddings.safetensors"
check "adapt.json names the best method" grep -q '"best_method"' \
  "$work/pandas_run/adapt/animal_2/adapt.json"
check "predict every window of the held-out session" "$bin" predict --run "$work/pandas_run" \
  --session animal_2 --split all --out "$work/p_all.npz"
check "predict after the last frame" "$bin" predict --run "$work/pandas_run" --session animal_2 \
  --method finetune:all --split next --out "$work/p_next.npz"
check "predict a training session's test windows" "$bin" predict --run "$work/pandas_run" \
  --session animal_0 --out "$work/p_train.npz"
predicted_score=$(grep -o 'score [-0-9.]*' "$work/out.txt" | head -1 | cut -d' ' -f2)
check "predict printed a score" test -n "$predicted_score"
check "eval the csv run" "$bin" eval --run "$work/pandas_run" --split test
cp "$work/out.txt" "$work/eval.txt"
# Read otherwise than by the training (another frame rate): the error names the setting, not an
# edited recording.
rate_sets=(--set "data.path=\"$work/pandas\"" --set data.csv.time_axis=0 --set data.csv.header=true
           --set data.csv.label_column=true --set data.csv.sampling_rate_hz=2)
check "train on the csv table timed by its rate" "$bin" train --run "$work/rate_run" \
  "${rate_sets[@]}" --set 'data.holdout=["animal_2"]' --set model.poco.dim=16 \
  --set model.poco.dim_head=8 --set model.poco.self_heads=2 --set train.steps=2 \
  --set train.eval_every=1
check "eval may set data.holdout (it scores the run's training sessions)" "$bin" eval \
  --run "$work/pandas_run" --set 'data.holdout=[]'
fails_with "eval at another frame rate names the setting" "data.csv.sampling_rate_hz is 1" \
  "$bin" eval --run "$work/rate_run" --set data.csv.sampling_rate_hz=1
fails_with "predict at another frame rate names the setting" "data.csv.sampling_rate_hz is 1" \
  "$bin" predict --run "$work/rate_run" --session animal_0 --out "$work/rate.npz" \
  --set data.csv.sampling_rate_hz=1
check "predict scores a training session as eval does" grep -qE \
  "^  animal_0 +[0-9]+ +[-0-9.]+ +[-0-9.]+ +$predicted_score " "$work/eval.txt"
check "the forecasts' targets, starts and times are the recording's" "$py" -c '
import sys, numpy as np
csv, all_path, next_path = sys.argv[1:]
table = np.genfromtxt(csv, delimiter=",", skip_header=1)
times, raw = table[:, 0], table[:, 1:].T.astype(np.float32)  # raw: (neurons, frames)
z = np.load(all_path)
W, N, H = z["pred"].shape
assert (N, H) == (10, 16) and W == 600 - 64 + 1, z["pred"].shape
assert np.all(np.isfinite(z["pred"]))
assert list(z["start"]) == list(range(48, 48 + W))
for w in (0, W // 2, W - 1):
    s = z["start"][w]
    assert np.allclose(z["target"][w], raw[:, s:s + H], rtol=1e-7, atol=0), w
    assert np.array_equal(z["t"][w], times[s:s + H]), w
n = np.load(next_path)
assert n["pred"].shape == (1, 10, 16) and "target" not in n.files
assert n["start"][0] == 600 and np.allclose(n["t"][0], 300.0 + 0.5 * np.arange(16))
' "$work/pandas/animal_2.csv" "$work/p_all.npz" "$work/p_next.npz"
fails_with "predict an unknown session" "no session 'animal_9'" "$bin" predict \
  --run "$work/pandas_run" --session animal_9 --out "$work/p.npz"
fails_with "predict with a method adapt did not run" "its methods with a model" "$bin" predict \
  --run "$work/pandas_run" --session animal_2 --method inner-loop --out "$work/p.npz"
fails_with "predict into a file that is not .npz" "name the file *.npz" "$bin" predict \
  --run "$work/pandas_run" --session animal_2 --out "$work/p.csv"
cp "$work/pandas/animal_2.csv" "$work/animal_2.csv.saved"
sed -i '2s/^\([^,]*\),[^,]*/\1,7.5/' "$work/pandas/animal_2.csv"
fails_with "predict on a recording changed since adapt" "is not the one" "$bin" predict \
  --run "$work/pandas_run" --session animal_2 --out "$work/p.npz"
mv "$work/animal_2.csv.saved" "$work/pandas/animal_2.csv"
# A later animal: its recording joins the folder; adapt and predict take it as held out, and
# eval leaves it out of the run's training sessions with a note.
sed '2s/^\([^,]*\),[^,]*/\1,2.5/' "$work/pandas/animal_1.csv" >"$work/pandas/animal_3.csv"
check "adapt to a later animal" "$bin" adapt --run "$work/pandas_run" \
  --set 'data.holdout=["animal_3"]' --set adapt.train.steps=4 --set adapt.train.eval_every=2
check "predict the later animal" "$bin" predict --run "$work/pandas_run" --session animal_3 \
  --out "$work/p3.npz"
check "the earlier animal's adaptation is kept" test -s \
  "$work/pandas_run/adapt/animal_2/adapt.json" -a -s "$work/pandas_run/adapt/animal_3/adapt.json"
check "predict the earlier animal after adapting to the later one" "$bin" predict \
  --run "$work/pandas_run" --session animal_2 --split all --out "$work/p_all_again.npz"
check "its forecasts are those before" cmp "$work/p_all.npz" "$work/p_all_again.npz"
check "eval with a recording the run was not trained on in the folder" "$bin" eval \
  --run "$work/pandas_run" --split test
cp "$work/out.txt" "$work/eval_later.txt"
check "eval names the session it left out" grep -q "left out 1 session(s).*animal_3" \
  "$work/eval_later.txt"
# The new recording alone in its own folder is enough for predict (the model knows the rest).
mkdir -p "$work/only_new"
cp "$work/pandas/animal_3.csv" "$work/only_new/"
check "predict from a folder holding only the new recording" "$bin" predict \
  --run "$work/pandas_run" --session animal_3 --out "$work/p3_alone.npz" \
  --set "data.path=\"$work/only_new\""
check "the same forecasts from either folder" cmp "$work/p3.npz" "$work/p3_alone.npz"
fails_with "predict with other preprocessing" "data.zscore is false now, true in the run" \
  "$bin" predict --run "$work/pandas_run" --session animal_3 --out "$work/p.npz" \
  --set data.zscore=false
# A mode whose step size diverges is reported; the others still give models.
check "adapt with one diverging mode" "$bin" adapt --run "$work/pandas_run" \
  --set 'data.holdout=["animal_3"]' --set adapt.train.steps=4 --set adapt.train.eval_every=2 \
  --set adapt.lr_by_mode.all=1e30
cp "$work/out.txt" "$work/adapt_diverged.txt"
check "the diverged mode names its setting" grep -q "finetune:all.*DIVERGED.*adapt.lr_by_mode.all" \
  "$work/adapt_diverged.txt"
check "the other modes saved their models" test -s \
  "$work/pandas_run/adapt/animal_3/adapted_embeddings.safetensors" -a \
  ! -e "$work/pandas_run/adapt/animal_3/adapted_all.safetensors"
fails_with "predict with the diverged mode" "no model of method 'finetune:all'" "$bin" predict \
  --run "$work/pandas_run" --session animal_3 --method finetune:all --out "$work/p.npz"
fails_with "predict reading the recording otherwise than adapt did" \
  "data.csv.label_column is true now, false in the adapt" "$bin" predict --run "$work/pandas_run" \
  --session animal_3 --out "$work/p.npz" --set 'data.csv.time_column=""' \
  --set data.csv.label_column=true
# Both animals in one more adaptation: predict then needs to be told which.
check "adapt to both animals under a label" "$bin" adapt --run "$work/pandas_run" \
  --set 'data.holdout=["animal_3","animal_2"]' --set adapt.train.steps=2 \
  --set adapt.train.eval_every=1 --set 'adapt.modes=["embeddings"]' --label both
fails_with "predict a session two adaptations cover" "choose one with --adapted" "$bin" predict \
  --run "$work/pandas_run" --session animal_2 --out "$work/p.npz"
check "predict with the adaptation named" "$bin" predict --run "$work/pandas_run" \
  --session animal_2 --split all --adapted animal_2 --out "$work/p_all_named.npz"
check "the named adaptation's forecasts" cmp "$work/p_all.npz" "$work/p_all_named.npz"
check "predict with the other adaptation" "$bin" predict --run "$work/pandas_run" \
  --session animal_2 --adapted both --out "$work/p_both.npz"
fails_with "predict with an adaptation there is not" "its adaptations: animal_2, animal_3, both" \
  "$bin" predict --run "$work/pandas_run" --session animal_2 --adapted animal_9 \
  --out "$work/p.npz"
fails_with "predict with an adaptation of other sessions" \
  "adaptations of 'animal_2': animal_2, both" "$bin" predict --run "$work/pandas_run" \
  --session animal_2 --adapted animal_3 --out "$work/p.npz"
fails_with "predict a training session with --adapted" "drop --method and --adapted" "$bin" \
  predict --run "$work/pandas_run" --session animal_0 --adapted both --out "$work/p.npz"
fails_with "an adaptation name that is not a folder name" \
  "may neither start with '.' nor hold '/'" "$bin" adapt --run "$work/pandas_run" --label ../x
fails_with "an adaptation name too long" "1 to 200 allowed" "$bin" adapt \
  --run "$work/pandas_run" --label "$(printf 'a%.0s' {1..201})"
check "nothing was written for the refused names" test ! -e "$work/pandas_run/x" -a \
  "$(ls -A "$work/pandas_run/adapt" | tr '\n' ' ')" = "animal_2 animal_3 both "
# An adaptation an earlier metatape wrote into the run folder itself: predict reads it there,
# and the next adapt moves it into its own folder.
mv "$work/pandas_run/adapt/animal_2"/* "$work/pandas_run/"
rmdir "$work/pandas_run/adapt/animal_2"
"$py" -c '
import json, sys
a = json.load(open(sys.argv[1]))
del a["label"], a["trained_model_crc32"]  # keys an earlier metatape did not write
json.dump(a, open(sys.argv[1], "w"), indent=2)
' "$work/pandas_run/adapt.json"
fails_with "predict names an earlier metatape's adaptation among those covering a session" \
  "(., both); choose one with --adapted" "$bin" predict --run "$work/pandas_run" \
  --session animal_2 --out "$work/p.npz"
check "predict from an earlier metatape's adaptation" "$bin" predict --run "$work/pandas_run" \
  --session animal_2 --split all --adapted . --out "$work/p_all_earlier.npz"
check "its forecasts" cmp "$work/p_all.npz" "$work/p_all_earlier.npz"
mkdir "$work/pandas_run/adapt/.both.partial"  # as an adapt that was killed leaves it
check "adapt again under a name already there" "$bin" adapt --run "$work/pandas_run" \
  --set 'data.holdout=["animal_3","animal_2"]' --set adapt.train.steps=2 \
  --set adapt.train.eval_every=1 --set 'adapt.modes=["all"]' --label both
check "the earlier metatape's adaptation moved into its folder" test -s \
  "$work/pandas_run/adapt/animal_2/adapted_embeddings.safetensors" -a \
  ! -e "$work/pandas_run/adapt.json" -a ! -e "$work/pandas_run/adapted_embeddings.safetensors"
check "the replaced adaptation holds only the new models, and no work folder is left" test \
  -s "$work/pandas_run/adapt/both/adapted_all.safetensors" -a \
  ! -e "$work/pandas_run/adapt/both/adapted_embeddings.safetensors" -a \
  "$(ls -A "$work/pandas_run/adapt" | tr '\n' ' ')" = "animal_2 animal_3 both "
check "predict from the moved adaptation" "$bin" predict --run "$work/pandas_run" \
  --session animal_2 --split all --adapted animal_2 --out "$work/p_all_moved.npz"
check "its forecasts, moved" cmp "$work/p_all.npz" "$work/p_all_moved.npz"
# Every mode diverging saves nothing and keeps the adaptation of that name as it was.
fails_with "an adapt where every mode diverges" "is kept as it was" "$bin" adapt \
  --run "$work/pandas_run" --set 'data.holdout=["animal_3","animal_2"]' \
  --set adapt.train.steps=2 --set adapt.train.eval_every=1 --set 'adapt.modes=["all"]' \
  --set adapt.lr_by_mode.all=1e30 --label both
check "the adaptation kept its model" test -s "$work/pandas_run/adapt/both/adapted_all.safetensors"
# A default name already taken by an adaptation of other sessions is refused.
check "adapt under a name another set of sessions has by default" "$bin" adapt \
  --run "$work/pandas_run" --set 'data.holdout=["animal_2"]' --set adapt.train.steps=2 \
  --set adapt.train.eval_every=1 --set 'adapt.modes=["embeddings"]' --label animal_2+animal_3
fails_with "adapt by default into that name" "name this one with --label NAME" "$bin" adapt \
  --run "$work/pandas_run" --set 'data.holdout=["animal_3","animal_2"]' \
  --set adapt.train.steps=2 --set adapt.train.eval_every=1
# One unreadable adaptation does not keep predict from the others.
mkdir -p "$work/pandas_run/adapt/broken"
echo "{" >"$work/pandas_run/adapt/broken/adapt.json"
check "predict beside an unreadable adaptation" "$bin" predict --run "$work/pandas_run" \
  --session animal_3 --adapted animal_3 --out "$work/p.npz"
cp "$work/out.txt" "$work/predict_broken.txt"
check "predict noted the unreadable one" grep -q "skipped the adaptation 'broken'" \
  "$work/predict_broken.txt"
fails_with "predict with the unreadable adaptation" "adapt the run again under that name" \
  "$bin" predict --run "$work/pandas_run" --session animal_3 --adapted broken --out "$work/p.npz"
rm -r "$work/pandas_run/adapt/broken"
# An adaptation of another model than the run's (the run trained again since) is refused.
"$py" -c '
import json, sys
a = json.load(open(sys.argv[1]))
a["trained_model_crc32"] = "00000000"
json.dump(a, open(sys.argv[1], "w"), indent=2)
' "$work/pandas_run/adapt/animal_3/adapt.json"
fails_with "predict from an adaptation of another model" "started from another model" "$bin" \
  predict --run "$work/pandas_run" --session animal_3 --adapted animal_3 --out "$work/p.npz"
cp "$work/out.txt" "$work/predict_other_model.txt"
check "... whose fix gives the adapt settings it was made with" grep -qF \
  "'data.holdout=[\"animal_3\"]' --set 'adapt.lr_by_mode={\"all\":1e+30," \
  "$work/predict_other_model.txt"
check "... and no others" grep -qF \
  "}' --set adapt.train.eval_every=2 --set adapt.train.steps=4 [" \
  "$work/predict_other_model.txt"
# Adaptations whose run was removed by hand are not taken over by a new training.
check "train a run to adapt" "$bin" train --run "$work/stale" "${small[@]}"
check "adapt it" "$bin" adapt --run "$work/stale" --set 'adapt.modes=["embeddings"]' \
  --set adapt.train.steps=2 --set adapt.train.eval_every=1
find "$work/stale" -maxdepth 1 -type f -delete
echo "a user's file" >"$work/stale/adapt/notes.txt"
fails_with "train into a folder holding adaptations of a removed run" \
  "holds adaptations of an earlier run" "$bin" train --run "$work/stale" "${small[@]}"
check "train --overwrite there" "$bin" train --run "$work/stale" "${small[@]}" --overwrite
check "--overwrite removed the adaptations, not the user's file" test \
  ! -e "$work/stale/adapt/synth_002" -a -s "$work/stale/adapt/notes.txt"
mkdir -p "$work/stale/adapt/mine"
echo "a user's file" >"$work/stale/adapt/mine/keep.txt"
fails_with "adapt under the name of a user's folder" "is there and is not an adaptation" "$bin" \
  adapt --run "$work/stale" --label mine --set adapt.train.steps=2 --set adapt.train.eval_every=1
check "the user's folder is kept" test -s "$work/stale/adapt/mine/keep.txt"
echo "a user's file" >"$work/stale/adapt/synth_002"
fails_with "adapt by default under the name of a user's file" "name this adaptation with --label" \
  "$bin" adapt --run "$work/stale" --set adapt.train.steps=2 --set adapt.train.eval_every=1
check "the user's file is kept" test -f "$work/stale/adapt/synth_002"
# A model without parameters (copy_last) adapts and predicts too: nothing to fit, nothing saved.
check "train copy_last" "$bin" train --run "$work/copy" "${small[@]}" --set model.kind=copy_last
check "adapt copy_last" "$bin" adapt --run "$work/copy"
check "copy_last's adaptation records its scores, no model and no model CRC" "$py" -c '
import json, os, sys
d = sys.argv[1]
a = json.load(open(os.path.join(d, "adapt.json")))
assert a["trained_model_crc32"] is None and a["methods"], a
assert not [f for f in os.listdir(d) if f.startswith("adapted_")], os.listdir(d)
' "$work/copy/adapt/synth_002"
check "predict copy_last's held-out session" "$bin" predict --run "$work/copy" \
  --session synth_002 --out "$work/p_copy.npz"
fails_with "online of copy_last" "has no parameters to adapt" "$bin" online --run "$work/copy"
# How files are read is part of the config (data.npz / hdf5 / csv), checked like the rest.
fails_with "an hdf5 time axis of 2" "data.hdf5.time_axis = 2" "$bin" train --run "$work/x" \
  --set data.hdf5.time_axis=2
fails_with "a two-character csv delimiter" "data.csv.delimiter" "$bin" train --run "$work/x" \
  --set 'data.csv.delimiter="ab"'
fails_with "an unknown hdf5 key" "unknown key 'data.hdf5.bogus'" "$bin" train --run "$work/x" \
  --set data.hdf5.bogus=1
fails_with "a holdout that is not a list" "must be a list of names" "$bin" train --run "$work/x" \
  --set 'data.holdout="x"'
# Values checked before the run folder exists.
fails_with "inner_lr 0" "train.meta.inner_lr must be a positive number" "$bin" train \
  --run "$work/bad_inner" "${small[@]}" --method fomaml --set train.meta.inner_lr=0
check "no run folder after a bad value" test ! -e "$work/bad_inner"
fails_with "meta-batch above the sessions" "meta_batch is 5, but only 2 training session" \
  "$bin" train --run "$work/bad_batch" "${small[@]}" --method fomaml --set train.meta.meta_batch=5
check "no run folder after a meta-batch error" test ! -e "$work/bad_batch"
fails_with "a test-time parameter prefix that selects nothing" "'sesion_emb.' selects no parameter" \
  "$bin" train --run "$work/x" "${small[@]}" --method fomaml \
  --set 'train.meta.params=["unit_emb.","sesion_emb."]'
fails_with "e2e-ttt without inner steps" "inner_steps is 0" "$bin" train --run "$work/x" \
  "${small[@]}" --method e2e-ttt --set train.meta.inner_steps=0
fails_with "negative clip" "train.clip must be >= 0" "$bin" train --run "$work/x" --set train.clip=-1
fails_with "a number out of range" "is not usable" "$bin" train --run "$work/x" --set train.lr=1e400
# A training that diverges says how to go on: its folder keeps the last evaluation point, but a
# run resumes only with its own settings.
fails_with "a diverging training names its setting" "lower train.lr (now 1e+300)" "$bin" train \
  --run "$work/diverged" "${small[@]}" --set train.lr=1e300
cp "$work/out.txt" "$work/diverged.txt"
check "and says how to train it again" grep -q "train it again with the lower value and --overwrite" \
  "$work/diverged.txt"
fails_with "a number without a leading digit" "need a digit before the point" "$bin" train \
  --run "$work/x" --set train.lr=.001
fails_with "a non-integer in a list of whole numbers" "holds 2.5: each entry must be an integer" \
  "$bin" train --run "$work/x" --set 'bench.memory_inner_steps=[1, 2.5]'
fails_with "a name given twice" "names \"synth_002\" twice" "$bin" train --run "$work/x" \
  --set 'data.holdout=["synth_002","synth_002"]'
fails_with "a thread count out of range" "config: threads is -1" "$bin" train --run "$work/x" \
  --set threads=-1
fails_with "a quoted number" "a number, not text: drop the quotes" "$bin" train --run "$work/x" \
  --set 'train.lr="0.001"'
fails_with "a hidden synthetic file name" "name_prefix \".hid\" cannot start" "$bin" data synth \
  --out "$work/hidden" --set 'data.synthetic.name_prefix=".hid"'
check "... wrote nothing" test ! -e "$work/hidden"
fails_with "a split's fractions named by their keys" "data.train_fraction -0.5 + data.val_fraction" \
  "$bin" train --run "$work/x" --set data.train_fraction=-0.5
printf '{"train": {"lr": 1e-3}, "train": {"steps": 3}}' >"$work/twice.json"
fails_with "a config file with a key twice" "the key 'train' is given twice" "$bin" train \
  --run "$work/x" --config "$work/twice.json"
check "no run folder after the config errors" test ! -e "$work/x"
# One step size of adapt.lr_by_mode set: the other modes keep theirs.
check "train with one mode's step size set" "$bin" train --run "$work/lr_one" "${small[@]}" \
  --set train.steps=0 --set adapt.lr_by_mode.embeddings=0.005
check "... the other modes keep their defaults" "$py" -c '
import json, sys
c = json.load(open(sys.argv[1]))
assert c["adapt"]["lr_by_mode"]["embeddings"] == 0.005, c["adapt"]
assert c["adapt"]["lr_by_mode"]["all"] == 3e-4, c["adapt"]
assert c["train"]["meta"]["lr"] == 1e-4 and c["train"]["lr"] == 1e-3, c["train"]' \
  "$work/lr_one/config.json"
fails_with "online calibration batch 0" "online.calibration_batch must be positive" "$bin" online \
  --run "$work/poco" --set online.calibration_batch=0
# adapt: the saved weights must fit, and the sessions must be new.
fails_with "adapt with another model architecture" "model.poco.dim is 32 now" "$bin" adapt \
  --run "$work/poco" --set model.poco.dim=32
fails_with "adapt to a session the model was trained on" "the model was trained on" "$bin" adapt \
  --run "$work/poco" --set 'data.holdout=["synth_000"]'

bench_small=(--set bench.train_steps.standard=4 --set bench.train_steps.fomaml=2
             --set bench.train_steps.e2e-ttt=2 --set train.meta.inner_steps=2
             --set bench.adapt_steps=4 --set bench.adapt_eval_every=2 --set bench.adapt_batch_size=4
             --set 'bench.param_sets=["embeddings","all"]')
check "bench adaptation" "$bin" bench adaptation --out "$work/bench" "${small[@]}" "${bench_small[@]}"
check "bench adaptation wrote json" test -s "$work/bench/adaptation.json"
check "bench adaptation records the load average at start and end" grep -q \
  '"load_average_at_end": \[' "$work/bench/adaptation.json"
fails_with "a new benchmark over a finished one" "holds a finished benchmark" "$bin" bench \
  adaptation --out "$work/bench" "${small[@]}" "${bench_small[@]}"
# Meta-training's weight decay is train.weight_decay unless bench.meta_weight_decay is set.
weight_decays() {  # weight_decays adaptation.json: "method=decay ..." of its trainings
  "$py" -c '
import json, sys
print(" ".join("%s=%g" % (t["method"], t["weight_decay"])
               for t in json.load(open(sys.argv[1]))["training"]))
' "$1"
}
check "meta-training takes train.weight_decay by default" test \
  "$(weight_decays "$work/bench/adaptation.json")" = "standard=0.0001 fomaml=0.0001 e2e-ttt=0.0001"
check "--overwrite replaces a finished benchmark" "$bin" bench adaptation --out "$work/bench" \
  --overwrite "${small[@]}" "${bench_small[@]}" --set bench.meta_weight_decay=0.05
check "bench.meta_weight_decay sets meta-training's weight decay only" test \
  "$(weight_decays "$work/bench/adaptation.json")" = "standard=0.0001 fomaml=0.05 e2e-ttt=0.05"
# Two benchmark results equal in the given sections but for their timings and peak memory.
same_results() {  # same_results a.json b.json section...
  "$py" -c '
import json, sys
timing = {"seconds", "ms_per_step", "peak_bytes", "eval_seconds", "resumed"}
def strip(x):
    if isinstance(x, dict): return {k: strip(v) for k, v in x.items() if k not in timing}
    if isinstance(x, list): return [strip(v) for v in x]
    return x
a, b = (json.load(open(p)) for p in sys.argv[1:3])
sys.exit(0 if all(strip(a[k]) == strip(b[k]) for k in sys.argv[3:]) else 1)
' "$@"
}
# A benchmark stopped by Ctrl-C in its first training, resumed, stopped again in its second and
# resumed to the end gives the models and results of the benchmark that did not stop.
bench_long=(--set bench.train_steps.standard=4000 --set bench.train_steps.fomaml=1500
            --set bench.train_steps.e2e-ttt=20 --set train.meta.inner_steps=2
            --set train.eval_every=200 --set bench.adapt_steps=20 --set bench.adapt_eval_every=10
            --set bench.adapt_batch_size=4 --set 'bench.param_sets=["embeddings"]')
check "bench adaptation, not stopped" "$bin" bench adaptation --out "$work/bench_whole" \
  "${small[@]}" "${bench_long[@]}"
"$bin" bench adaptation --out "$work/bench_stopped" "${small[@]}" "${bench_long[@]}" \
  >"$work/bench_stopped.txt" 2>&1 &
pid=$!
check "the benchmark started its first training" wait_for_file \
  "$work/bench_stopped/train_state_standard.safetensors" "$pid"
fails_with "a second benchmark on a folder in use" "another metatape bench adaptation" "$bin" \
  bench adaptation --out "$work/bench_stopped" --resume
kill -INT "$pid"
wait "$pid"
check "Ctrl-C stops the benchmark with exit code 130" test $? -eq 130
check "the stopped benchmark says how to continue" grep -q "bench adaptation --resume --out" \
  "$work/bench_stopped.txt"
fails_with "a new benchmark over an unfinished one" "continue it with --resume, or pass --overwrite" \
  "$bin" bench adaptation --out "$work/bench_stopped" "${small[@]}" "${bench_long[@]}"
fails_with "resuming a benchmark with another setting" "train.lr is 0.5 now, 0.001 in the benchmark" \
  "$bin" bench adaptation --out "$work/bench_stopped" --resume --set train.lr=0.5
"$bin" bench adaptation --out "$work/bench_stopped" --resume >"$work/bench_stopped.txt" 2>&1 &
pid=$!
check "the resumed benchmark reached its second training" wait_for_file \
  "$work/bench_stopped/train_state_fomaml.safetensors" "$pid"
kill -INT "$pid"
wait "$pid"
check "Ctrl-C stops the resumed benchmark with exit code 130" test $? -eq 130
check "resume the benchmark to the end" "$bin" bench adaptation --out "$work/bench_stopped" --resume
for m in standard fomaml e2e-ttt; do
  check "the resumed benchmark's $m model is the one not stopped" cmp \
    "$work/bench_whole/model_$m.safetensors" "$work/bench_stopped/model_$m.safetensors"
done
check "the resumed benchmark's results are those of the one not stopped" same_results \
  "$work/bench_whole/adaptation.json" "$work/bench_stopped/adaptation.json" training runs table
check "a finished benchmark keeps no progress file" test ! -e "$work/bench_stopped/bench_state.json"
fails_with "resuming a finished benchmark" "the benchmark there finished" "$bin" bench adaptation \
  --out "$work/bench_stopped" --resume
# Cross-validated benchmark (bench.folds): each of 3 groups (one session each) held out in turn,
# one benchmark per fold in fold_<k>, pooled in adaptation.json. Stopped by Ctrl-C in the second
# fold and resumed, it gives the results of the one that did not stop.
folds_sets=(--set 'data.holdout=[]' --set bench.folds=3 --set bench.train_steps.standard=3000
            --set bench.train_steps.fomaml=20 --set bench.train_steps.e2e-ttt=4
            --set train.meta.inner_steps=2 --set train.eval_every=500 --set bench.adapt_steps=10
            --set bench.adapt_eval_every=5 --set bench.adapt_batch_size=4
            --set 'bench.param_sets=["embeddings"]')
check "bench adaptation with bench.folds=3" "$bin" bench adaptation --out "$work/folds_whole" \
  "${small[@]}" "${folds_sets[@]}"
check "the pooled results: 3 folds, each session held out once, 3 sessions per row" "$py" -c '
import json, sys
r = json.load(open(sys.argv[1]))
assert [f["holdout"] for f in r["folds"]] == [["synth_000"], ["synth_001"], ["synth_002"]], r["folds"]
assert all(row["sessions"] == 3 for row in r["table"]), r["table"]
assert len(r["training"]) == 9 and {t["fold"] for t in r["training"]} == {1, 2, 3}
' "$work/folds_whole/adaptation.json"
check "each fold has its own results" test -s "$work/folds_whole/fold_3/adaptation.json"
"$bin" bench adaptation --out "$work/folds_stopped" "${small[@]}" "${folds_sets[@]}" \
  >"$work/folds_stopped.txt" 2>&1 &
pid=$!
check "the cross-validated benchmark reached its second fold" wait_for_file \
  "$work/folds_stopped/fold_2/train_state_standard.safetensors" "$pid" 6000
kill -INT "$pid"
wait "$pid"
check "Ctrl-C stops it with exit code 130" test $? -eq 130
check "the stopped fold names the benchmark's folder to resume" grep -qF -- \
  "--resume --out '$work/folds_stopped'" "$work/folds_stopped.txt"
fails_with "a new benchmark over an unfinished cross-validated one" "pass --overwrite" \
  "$bin" bench adaptation --out "$work/folds_stopped" "${small[@]}" "${folds_sets[@]}"
check "resume the cross-validated benchmark" "$bin" bench adaptation --out "$work/folds_stopped" \
  --resume
cp "$work/out.txt" "$work/folds_resumed.txt"
check "the first fold was not run again" grep -q "fold 1 finished earlier" "$work/folds_resumed.txt"
check "the resumed cross-validated results are those of the one not stopped" same_results \
  "$work/folds_whole/adaptation.json" "$work/folds_stopped/adaptation.json" folds training runs \
  table
fails_with "bench.folds with data.holdout" "data.holdout must be empty" "$bin" bench adaptation \
  --out "$work/folds_refused" "${small[@]}" --set bench.folds=3
check "the refused benchmark left no folder" test ! -e "$work/folds_refused"
check "a run trained with bench.folds in its config" "$bin" train \
  --run "$work/folds_config_run" "${small[@]}" --set bench.folds=3
check "adapts to its data.holdout" "$bin" adapt --run "$work/folds_config_run" \
  --set 'adapt.modes=["embeddings"]'
# A plain benchmark over a cross-validated one's folder, and files a benchmark did not write.
fails_with "a plain benchmark over a cross-validated one" "holds a finished benchmark" \
  "$bin" bench adaptation --out "$work/folds_whole" "${small[@]}" "${bench_small[@]}" \
  --set 'data.holdout=["synth_002"]'
rm "$work/folds_whole/adaptation.json"
fails_with "... without its adaptation.json too" "holds another benchmark's files" \
  "$bin" bench adaptation --out "$work/folds_whole" "${small[@]}" "${bench_small[@]}"
check "--overwrite replaces it" "$bin" bench adaptation --out "$work/folds_whole" --overwrite \
  "${small[@]}" "${bench_small[@]}"
check "the folds are gone" test ! -e "$work/folds_whole/fold_1"
mkdir -p "$work/own_files/fold_9"
touch "$work/own_files/model_final.safetensors" "$work/own_files/fold_9/notes.txt"
check "a benchmark leaves files it did not write" "$bin" bench adaptation \
  --out "$work/own_files" "${small[@]}" "${bench_small[@]}"
check "... in place" test -e "$work/own_files/model_final.safetensors" -a \
  -e "$work/own_files/fold_9/notes.txt"
fails_with "bench.folds=1" "bench.folds is 1" "$bin" bench adaptation --out "$work/x" \
  "${small[@]}" --set 'data.holdout=[]' --set bench.folds=1
fails_with "more folds than sessions" "lower bench.folds to at most 3" "$bin" bench adaptation \
  --out "$work/x" "${small[@]}" --set 'data.holdout=[]' --set bench.folds=4
# 3 methods x (2 parameter sets + 1 cross-procedure control) rows.
check "bench adaptation table has 9 rows" test "$(grep -c '"procedure"' "$work/bench/adaptation.json")" -ge 9
check "bench memory" "$bin" bench memory --out "$work/mem" "${small[@]}" \
  --set 'bench.memory_inner_steps=[1,2]' --set bench.memory_batch_size=2
check "bench memory wrote json" test -s "$work/mem/memory.json"
# The plot script is run without a shell: a quote in the output path is just a character.
check "bench memory into a folder with a quote" bash -c 'out=$("$1" bench memory --out "$2" "${@:3}") && ! grep -q "plots:.*failed" <<<"$out"' _ \
  "$bin" "$work/mem'q" "${small[@]}" --set 'bench.memory_inner_steps=[1]' --set bench.memory_batch_size=2
check "the plot in the quoted folder" test -s "$work/mem'q/memory.png"
fails_with "bench with no held-out session" "data.holdout" "$bin" bench adaptation \
  --out "$work/x" "${small[@]}" --set 'data.holdout=[]'
fails_with "bench with an unknown method" "bench.methods names 'maml'" "$bin" bench adaptation \
  --out "$work/x" "${small[@]}" --set 'bench.methods=["maml"]'
fails_with "bench with an unknown parameter set" "parameter set 'heads'" "$bin" bench adaptation \
  --out "$work/x" "${small[@]}" --set 'bench.param_sets=["heads"]'

fails_with "unknown config key" "unknown key 'train.stepz'" "$bin" train --run "$work/x" --set train.stepz=3
fails_with "unknown attention kernels in the environment" \
  "METATAPE_FLASH_KERNELS='spilt' is not one of mma, split, simple" \
  env METATAPE_FLASH_KERNELS=spilt "$bin" --help
fails_with "a split count that is not a number" \
  "METATAPE_FLASH_KV_SPLITS='4x' is not a whole number" \
  env METATAPE_FLASH_KV_SPLITS=4x "$bin" --help
fails_with "an unknown f32 attention choice" \
  "METATAPE_FLASH_F32='yes' is not one of split, tensor_cores" \
  env METATAPE_FLASH_F32=yes "$bin" --help
check "the attention settings' accepted values" env METATAPE_FLASH_KERNELS=split \
  METATAPE_FLASH_KV_SPLITS=3 METATAPE_FLASH_F32=tensor_cores "$bin" --help
fails_with "bad type" "'train.steps'" "$bin" train --run "$work/x" --set train.steps=abc
fails_with "missing data folder" "does not exist" "$bin" train --run "$work/x" \
  --set 'data.path="/nonexistent/metatape"'
fails_with "unknown model kind" "model.kind 'rnn'" "$bin" train --run "$work/x" "${small[@]}" \
  --set model.kind=rnn
fails_with "eval without a run" "config.json" "$bin" eval --run "$work/none"
fails_with "holdout names a missing session" "synth_009" "$bin" train --run "$work/x" \
  "${small[@]}" --set 'data.holdout=["synth_009"]'

# What users get wrong: a misspelt command, a device the machine lacks, paths relative to another
# folder, recordings that moved.
fails_with "a misspelt command" "unknown command 'trian'" "$bin" trian --run "$work/x"
check "a meta-learning setting in a standard training" "$bin" train --run "$work/meta_note" \
  "${small[@]}" --set train.meta.inner_steps=5
cp "$work/out.txt" "$work/meta_note.txt"
check "... is noted" grep -q "standard training does not use train.meta.inner_steps" \
  "$work/meta_note.txt"
fails_with "a device the machine lacks" "--device cuda:7" "$bin" train --run "$work/x" \
  "${small[@]}" --device cuda:7
for command in eval online; do
  fails_with "$command on a device the machine lacks" "--device cuda:7" "$bin" "$command" \
    --run "$work/poco" --device cuda:7
done
fails_with "predict on a device the machine lacks" "--device cuda:7" "$bin" predict \
  --run "$work/poco" --session synth_000 --out "$work/x.npz" --device cuda:7
check "... and wrote nothing" test ! -e "$work/x.npz"
mkdir -p "$work/relative"
cp "$work/synth/"*.npz "$work/relative/"
check "train with a relative data.path" bash -c 'cd "$1" && "$2" train --run rel_run "${@:3}"' \
  _ "$work" "$(realpath "$bin")" "${small[@]}" --set 'data.path="relative"' --set 'data.holdout=[]'
check "config.json records it as an absolute path" \
  grep -qF "\"path\": \"$(realpath "$work")/relative\"" "$work/rel_run/config.json"
check "eval from another folder" bash -c 'cd / && "$1" eval --run "$2"' _ "$(realpath "$bin")" \
  "$work/rel_run"
mv "$work/relative" "$work/moved"
fails_with "eval after the recordings moved" "pass --set data.path=" "$bin" eval \
  --run "$work/rel_run"
check "eval --set data.path reads them where they are" "$bin" eval --run "$work/rel_run" \
  --set "data.path=\"$work/moved\"" --unadapted
cp "$work/out.txt" "$work/unadapted.txt"
check "--unadapted on a standard run is noted" grep -q "has no inner loop" "$work/unadapted.txt"
# Each fine-tuning mode takes its step size from adapt.lr_by_mode: a changed adapt.train.lr would
# go unused, and is named; the step size a mode took is in adapt.json.
check "adapt with adapt.train.lr changed" "$bin" adapt --run "$work/poco" --label lr_note \
  --set 'adapt.modes=["embeddings"]' --set adapt.train.lr=1e-4 --set train.lr=0.5
cp "$work/out.txt" "$work/lr_note.txt"
check "... is noted as unused, with the key that is" grep -q \
  "adapt.train.lr (0.0001) is not used.*adapt.lr_by_mode.embeddings=0.0001" "$work/lr_note.txt"
check "... and so is the training's train.lr" grep -q \
  "adapt does not read train.lr: training settings" "$work/lr_note.txt"
check "adapt.json records each mode's step size and its key" "$py" -c '
import json, sys
m = next(x for x in json.load(open(sys.argv[1]))["methods"] if x["method"] == "finetune:embeddings")
assert m["lr"] == 0.003 and m["lr_key"] == "adapt.lr_by_mode.embeddings", m' \
  "$work/poco/adapt/lr_note/adapt.json"
fails_with "eval --set of a model setting" "drop that --set" "$bin" eval --run "$work/rel_run" \
  --set "data.path=\"$work/moved\"" --set model.poco.dim=32
fails_with "eval --set of a validation setting" "train.meta.inner_steps" "$bin" eval \
  --run "$work/rel_run" --set "data.path=\"$work/moved\"" --set train.meta.inner_steps=5
fails_with "adapt a run that holds no session out" "--set 'data.holdout=" "$bin" adapt \
  --run "$work/rel_run" --set "data.path=\"$work/moved\""
fails_with "a run into the recordings' folder" "is the recordings' folder" "$bin" train \
  --run "$work/moved" "${small[@]}" --set "data.path=\"$work/moved\"" --set 'data.holdout=[]'
mkdir -p "$work/csv_recordings"
printf '1,2,3\n4,5,6\n' >"$work/csv_recordings/a.csv"
fails_with "data synth into a folder of CSV recordings" "holds recordings already (a.csv)" \
  "$bin" data synth --out "$work/csv_recordings"
check "... which is left as it was" test "$(ls "$work/csv_recordings")" = a.csv
# Ctrl-C during adapt (once its work folder exists: the handler is installed): nothing of that
# adaptation is kept, and it says so. The signal comes twice back to back, as `timeout` sends it
# (to the process, then to its group): one request to stop, not a second Ctrl-C that aborts.
"$bin" adapt --run "$work/poco" --label stopped --set adapt.train.steps=1000000 \
  --set adapt.train.eval_every=500000 --set 'adapt.modes=["embeddings"]' \
  >"$work/adapt_stopped.txt" 2>&1 &
pid=$!
check "the stopped adapt started" wait_for_path "$work/poco/adapt/.stopped.partial" "$pid"
# Ctrl-C sent twice back to back to a background process; its exit status.
stop_twice() {  # stop_twice pid
  kill -INT "$1"
  kill -INT "$1" 2>/dev/null
  wait "$1"
}
stop_twice "$pid"
check "Ctrl-C stops adapt with exit code 130" test $? -eq 130
check "... saying that nothing was kept" grep -q "nothing of this adaptation was kept" \
  "$work/adapt_stopped.txt"
check "... and keeping nothing" test ! -e "$work/poco/adapt/stopped" -a \
  ! -e "$work/poco/adapt/.stopped.partial"
# Ctrl-C during online (a long regenerated stream): exit 130, a message, online.json as it was.
cp "$work/poco/online.json" "$work/online_before_stop.json"
"$bin" online --run "$work/poco" --set data.synthetic.num_frames=200000 \
  >"$work/online_stopped.txt" 2>&1 &
pid=$!
wait_for_text() {  # wait_for_text file text pid: until the file holds the text, or pid ends
  for _ in $(seq 1200); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    kill -0 "$3" 2>/dev/null || return 1
    sleep 0.05
  done
  return 1
}
check "the stopped online started its first session" wait_for_text "$work/online_stopped.txt" \
  "online: synth_000" "$pid"
stop_twice "$pid"
check "Ctrl-C stops online with exit code 130" test $? -eq 130
check "... saying that nothing was written" grep -q "online.json was not written" \
  "$work/online_stopped.txt"
check "... and leaving online.json as it was" cmp "$work/poco/online.json" \
  "$work/online_before_stop.json"

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
