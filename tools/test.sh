#!/usr/bin/env bash
# Installs dependencies, configures, builds and runs the whole ctest suite.
# Usage: tools/test.sh [extra cmake configure arguments...]
#   BUILD_DIR=dir tools/test.sh   builds into dir instead of build/
# Exits with ctest's status.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
BUILD_DIR="${BUILD_DIR:-build}"
JOBS="$(nproc)"

bash tools/install-deps.sh

cmake -S . -B "$BUILD_DIR" -G Ninja \
  -DCMAKE_BUILD_TYPE=Release \
  -DMETATAPE_BUILD_TESTS=ON \
  -DMETATAPE_BUILD_BENCH=ON \
  -DMETATAPE_WERROR=ON \
  "$@"

cmake --build "$BUILD_DIR" -j "$JOBS"

status=0
ctest --test-dir "$BUILD_DIR" --output-on-failure -j "$JOBS" || status=$?
exit "$status"
