#!/usr/bin/env bash
# Installs dependencies, configures and builds (same build directory and options as
# tools/test.sh, so the two share one build), then runs the demo.
# Usage: tools/demo.sh [metatape-demo arguments...]
#   BUILD_DIR=dir tools/demo.sh   builds into dir instead of build/
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
BUILD_DIR="${BUILD_DIR:-build}"

bash tools/install-deps.sh

cmake -S . -B "$BUILD_DIR" -G Ninja \
  -DCMAKE_BUILD_TYPE=Release \
  -DMETATAPE_BUILD_TESTS=ON \
  -DMETATAPE_BUILD_BENCH=ON \
  -DMETATAPE_WERROR=ON

cmake --build "$BUILD_DIR" -j "$(nproc)"

exec "$BUILD_DIR/bin/metatape-demo" "$@"
