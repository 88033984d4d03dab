#!/usr/bin/env bash
# The one command to run on a machine with an NVIDIA GPU: configures and builds for the GPU that
# is present (CMAKE_CUDA_ARCHITECTURES=native) into its own build folder, runs every [cuda] test
# case, runs them again under compute-sanitizer's memcheck, and runs the CUDA benchmarks (kernel
# bandwidth and GEMM, embedding sparse updates, fused attention, the E2E-TTT meta-step of poco-seed
# and poco-paper, eager and replayed as a CUDA graph; the PyTorch peers when torch with CUDA is
# installed; the latency of online adaptation on the GPU and on the CPU).
# Logs and JSON go to the folder given as the first argument (default: $OUT, else
# gpu-check-results/).
#
# Usage: tools/gpu-check.sh [--prebuilt ARCHIVE] [OUTPUT_DIR]
#   --prebuilt ARCHIVE  skip configure and build: unpack binaries and libraries packed by
#                       tools/gpu-pack.sh on a machine with the Debian development packages (a bare
#                       CUDA machine has the toolkit but not Eigen, fmt, HDF5, libzip or Catch2)
#   BUILD_DIR=dir   build folder (default build-gpu)
#   JOBS=n          parallel build jobs (default: all cores)
#   MEMCHECK_TIMEOUT=s  stop compute-sanitizer after s seconds (default: no limit)
#   META_STEP_BENCH=0   skip the E2E-TTT meta-step benchmark
#   STEPS="a b ..."     run only these steps (names as in summary.json, e.g. "cuda_tests
#                       bench_meta_step_graph"): for a short device session
#   STEP_TIMEOUT=s      stop any one step after s seconds (exit 124 in summary.json) so that a
#                       hanging kernel cannot use up a short device session; the later steps run
#   CUDA_TESTS=spec     the Catch2 test spec of cuda_tests and memcheck (default "[cuda]"; e.g.
#                       "[cuda][graph]" for the CUDA-graph cases)
# Exits non-zero when any step fails; every step still runs, and summary.json lists them.
#   PACK_TO=file.tgz    also pack the output folder into this archive at the end (the device
#                       tool brings back at most 8 files from $OUT:
#                       PACK_TO=$OUT/results.tgz tools/gpu-check.sh --prebuilt ARCHIVE /tmp/r)
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
PREBUILT=""
if [[ "${1:-}" == "--prebuilt" ]]; then
  PREBUILT="${2:?--prebuilt needs the archive made by tools/gpu-pack.sh}"
  shift 2
fi
OUT_DIR="${1:-${OUT:-gpu-check-results}}"
BUILD_DIR="${BUILD_DIR:-build-gpu}"
JOBS="${JOBS:-$(nproc)}"
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
COMMIT="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
if ! git diff --quiet HEAD 2>/dev/null; then COMMIT="${COMMIT}-dirty"; fi
if [[ -n "$PREBUILT" ]]; then
  BUILD_DIR="$(mktemp -d)/prebuilt"
  mkdir -p "$BUILD_DIR"
  tar -C "$BUILD_DIR" -xJf "$PREBUILT" || { echo "gpu-check: cannot unpack $PREBUILT" >&2; exit 1; }
  COMMIT="$(cat "$BUILD_DIR/COMMIT")"
  export LD_LIBRARY_PATH="$BUILD_DIR/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
  export METATAPE_SOURCE_DIR="$PWD"  # golden files and fixtures from this copy of the tree
fi

export PATH="/usr/local/cuda/bin:$PATH"
declare -A status
wanted() { [[ -z "${STEPS:-}" || " $STEPS " == *" $1 "* ]]; }  # wanted NAME: the step is to run
missing() { if wanted "$1"; then status[$1]=127; fi; }  # missing NAME: its binary was not built
run_step() {  # run_step NAME LOGFILE COMMAND...
  local name="$1" log="$2"
  shift 2
  if ! wanted "$name"; then
    echo "=== $name: not in STEPS, skipped"
    return 0
  fi
  echo "=== $name (log: $log)"
  if [[ -n "${STEP_TIMEOUT:-}" ]]; then
    timeout --kill-after=10 "$STEP_TIMEOUT" "$@" >"$OUT_DIR/$log" 2>&1
  else
    "$@" >"$OUT_DIR/$log" 2>&1
  fi
  status[$name]=$?
  if [[ -n "${STEP_TIMEOUT:-}" && ( ${status[$name]} -eq 124 || ${status[$name]} -eq 137 ) ]]; then
    echo "$name: stopped after STEP_TIMEOUT=${STEP_TIMEOUT}s (a hang, or a slower step)" >>"$OUT_DIR/$log"
  fi
  tail -n 15 "$OUT_DIR/$log"
  echo "=== $name: exit ${status[$name]}"
}

{
  echo "commit: $COMMIT"
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  nvidia-smi 2>&1 || echo "nvidia-smi not available"
  nvcc --version 2>&1 | tail -n 2
} >"$OUT_DIR/environment.txt"
cat "$OUT_DIR/environment.txt"

if [[ -z "$PREBUILT" ]]; then
  run_step configure configure.log \
    cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMETATAPE_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES=native -DMETATAPE_BUILD_TESTS=ON -DMETATAPE_BUILD_BENCH=ON \
    -DMETATAPE_WERROR=ON
  run_step build build.log cmake --build "$BUILD_DIR" -j "$JOBS"
fi

TESTS="$BUILD_DIR/bin/metatape_tests"
if [[ -x "$TESTS" ]]; then
  # Every [cuda] case, with a JUnit report; -s shows the skip warnings if no device is visible.
  run_step cuda_tests cuda_tests.log \
    "$TESTS" "${CUDA_TESTS:-[cuda]}" --durations yes --reporter junit \
    --out "$OUT_DIR/cuda_tests.junit.xml"
  "$TESTS" "${CUDA_TESTS:-[cuda]}" --list-tests >"$OUT_DIR/cuda_tests_list.txt" 2>&1 || true
  SANITIZER="$(command -v compute-sanitizer || ls /usr/local/cuda/compute-sanitizer/compute-sanitizer 2>/dev/null || true)"
  if [[ -n "$SANITIZER" ]]; then
    # Memory errors in kernels only: API errors are the engine's own to report (MT_CUDA_CHECK), and
    # the out-of-memory test provokes some on purpose.
    run_step memcheck memcheck.log \
      timeout "${MEMCHECK_TIMEOUT:-0}" \
      "$SANITIZER" --tool memcheck --report-api-errors no --error-exitcode 3 "$TESTS" \
      "${CUDA_TESTS:-[cuda]}"
  else
    echo "compute-sanitizer not found" >"$OUT_DIR/memcheck.log"
    missing memcheck
  fi
  # The whole suite too: the CPU backend must not have changed.
  if [[ -n "$PREBUILT" ]]; then
    run_step all_tests all_tests.log "$TESTS" --durations yes
  else
    run_step all_tests all_tests.log ctest --test-dir "$BUILD_DIR" --output-on-failure -j "$JOBS"
  fi
else
  missing cuda_tests
fi

BENCH="$BUILD_DIR/bin/metatape-bench-cuda-kernels"
if [[ -x "$BENCH" ]]; then
  run_step bench_kernels bench_kernels.log \
    "$BENCH" --json "$OUT_DIR/cuda_kernels_bench.json" --commit "$COMMIT"
else
  missing bench_kernels
fi
BENCH_EMB="$BUILD_DIR/bin/metatape-bench-embedding-update"
if [[ -x "$BENCH_EMB" ]]; then
  run_step bench_embedding_update bench_embedding_update.log \
    "$BENCH_EMB" --json "$OUT_DIR/embedding_update_bench.json" --commit "$COMMIT"
else
  missing bench_embedding_update
fi
# The E2E-TTT meta-step of poco-seed and poco-paper on the GPU (bench/meta_step_bench.cpp), and
# the PyTorch peer on the same GPU where torch with CUDA is importable (skipped otherwise).
BENCH_META="$BUILD_DIR/bin/metatape-bench-meta-step"
if [[ "${META_STEP_BENCH:-1}" == 0 ]]; then
  echo "meta-step benchmark skipped (META_STEP_BENCH=0)"
elif [[ -x "$BENCH_META" ]]; then
  run_step bench_meta_step bench_meta_step.log bash -c '
    for config in poco-seed poco-paper; do
      "$1" --device cuda --config "$config" --warmup 2 --repeats 10 \
        --json "$2/meta_step_${config}_cuda_metatape.json" || exit 1
    done' _ "$BENCH_META" "$OUT_DIR"
  # The same meta-step captured once as a CUDA graph and replayed (--graph), a step of its own so
  # that a capture failure does not hide the eager figures.
  run_step bench_meta_step_graph bench_meta_step_graph.log bash -c '
    for config in poco-seed poco-paper; do
      "$1" --device cuda --graph --config "$config" --warmup 2 --repeats 10 \
        --json "$2/meta_step_${config}_cuda_metatape_graph.json" || exit 1
    done' _ "$BENCH_META" "$OUT_DIR"
  # poco-seed as the GPU goal needs it (both <= 0.1 of PyTorch's time and <= 0.5 of its memory):
  # the graph with TF32 matmuls, with checkpointed inner steps (all, or the first only), with
  # both, and with saved outputs kept instead of recomputed (what the recomputation costs); then
  # the f32 attention on its tensor-core kernels (METATAPE_FLASH_F32=tensor_cores, 3xTF32; off
  # by default until verified) instead of the split kernels.
  run_step bench_meta_step_variants bench_meta_step_variants.log bash -c '
    for variant in "--tf32" "--checkpoint" "--checkpoint --tf32" "--checkpoint-steps 1 --tf32" \
        "--tf32 --saved-recompute never"; do
      tag="$(echo "$variant" | tr -d " -")"
      # shellcheck disable=SC2086
      "$1" --device cuda --graph $variant --config poco-seed --warmup 2 --repeats 10 \
        --json "$2/meta_step_poco-seed_cuda_metatape_graph_${tag}.json" || exit 1
    done
    METATAPE_FLASH_F32=tensor_cores "$1" --device cuda --graph --config poco-seed --warmup 2 \
      --repeats 10 --json "$2/meta_step_poco-seed_cuda_metatape_graph_f32tensorcores.json" \
      || exit 1
    METATAPE_FLASH_F32=tensor_cores "$1" --device cuda --graph --tf32 --checkpoint-steps 1 \
      --config poco-seed --warmup 2 --repeats 10 \
      --json "$2/meta_step_poco-seed_cuda_metatape_graph_checkpointsteps1tf32_f32tensorcores.json" \
      || exit 1' _ "$BENCH_META" "$OUT_DIR"
  # Where the device time goes (CUPTI through the profiler): eager and replayed, poco-seed.
  run_step profile_meta_step profile_meta_step.log bash -c '
    "$1" --device cuda --config poco-seed --warmup 2 --repeats 2 --profile --graph-memory \
      --json "$2/meta_step_poco-seed_cuda_profile.json" || exit 1
    "$1" --device cuda --graph --config poco-seed --warmup 2 --repeats 3 --profile \
      --json "$2/meta_step_poco-seed_cuda_graph_profile.json" || exit 1' _ "$BENCH_META" "$OUT_DIR"
  if python3 -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    run_step bench_meta_step_torch bench_meta_step_torch.log bash -c '
      for config in poco-seed poco-paper; do
        python3 tools/reference/meta_step_bench.py --device cuda --config "$config" --warmup 2 \
          --repeats 10 --json "$1/meta_step_${config}_cuda_pytorch.json" || exit 1
      done' _ "$OUT_DIR"
  else
    echo "torch with CUDA is not importable: PyTorch peer skipped" >"$OUT_DIR/bench_meta_step_torch.log"
  fi
else
  missing bench_meta_step
fi

FLASH_BENCH="$BUILD_DIR/bin/metatape-bench-flash-attention"
if [[ -x "$FLASH_BENCH" ]]; then
  run_step bench_flash_attention bench_flash_attention.log \
    "$FLASH_BENCH" --json "$OUT_DIR/flash_attention_bench.json" --commit "$COMMIT"
  # f32 with one TF32 product (the default above is 3xTF32), the composite on TF32 GEMMs.
  run_step bench_flash_attention_tf32 bench_flash_attention_tf32.log \
    "$FLASH_BENCH" --tf32 --json "$OUT_DIR/flash_attention_bench_tf32.json" --commit "$COMMIT"
  # The PyTorch peer at the same shapes, when torch with CUDA is installed.
  if python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    run_step peer_flash_attention peer_flash_attention.log \
      python3 tools/reference/attention_peer.py --json "$OUT_DIR/attention_peer.json"
  fi
else
  missing bench_flash_attention
fi

# Online adaptation as a live system runs it (metatape online): the latency of one SGD step of
# the test-time parameters and of one forecast, on the GPU and on the host's cores, for a
# poco-paper trained briefly on the default synthetic sessions, one of them held out (a new
# session from its first frame). The scores are not the point: the milliseconds are.
CLI="$BUILD_DIR/bin/metatape"
if [[ -x "$CLI" ]]; then
  run_step online_latency online_latency.log bash -c '
    run="$(mktemp -d)/run"
    "$1" train --run "$run" --device cuda --set train.steps=200 --set train.eval_every=100 \
      --set "data.holdout=[\"synth_003\"]" || exit 1
    for device in cuda cpu; do
      "$1" online --run "$run" --device "$device" || exit 1
      cp "$run/online.json" "$2/online_latency_${device}.json"
    done
    rm -rf "$(dirname "$run")"' _ "$CLI" "$OUT_DIR"
else
  missing online_latency
fi

# summary.json: one entry per step with its exit status.
{
  echo "{"
  echo "  \"commit\": \"$COMMIT\","
  echo "  \"device\": \"$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)\","
  echo "  \"steps\": {"
  first=1
  for name in configure build cuda_tests memcheck all_tests bench_kernels bench_embedding_update \
    bench_flash_attention bench_flash_attention_tf32 peer_flash_attention bench_meta_step bench_meta_step_graph \
    bench_meta_step_variants profile_meta_step bench_meta_step_torch online_latency; do
    [[ -n "${status[$name]+x}" ]] || continue
    [[ $first -eq 1 ]] || echo ","
    printf '    "%s": %s' "$name" "${status[$name]}"
    first=0
  done
  echo ""
  echo "  }"
  echo "}"
} >"$OUT_DIR/summary.json"
cat "$OUT_DIR/summary.json"

if [[ -n "${PACK_TO:-}" ]]; then
  tar -C "$OUT_DIR" -czf "$PACK_TO" . && echo "gpu-check: results packed into $PACK_TO"
fi

for name in "${!status[@]}"; do
  if [[ "${status[$name]}" -ne 0 ]]; then
    echo "gpu-check: step '$name' failed (exit ${status[$name]}); see $OUT_DIR" >&2
    exit 1
  fi
done
echo "gpu-check: all steps passed; results in $OUT_DIR"
