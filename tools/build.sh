#!/usr/bin/env bash
# Installs dependencies, configures into build/ (or $BUILD_DIR) and builds everything: the one
# build that tools/test.sh and tools/demo.sh share.
# Usage: tools/build.sh [extra cmake configure arguments...]
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
BUILD_DIR="${BUILD_DIR:-build}"

bash tools/install-deps.sh

cmake -S . -B "$BUILD_DIR" -G Ninja \
  -DCMAKE_BUILD_TYPE=Release \
  -DMETATAPE_BUILD_TESTS=ON \
  -DMETATAPE_BUILD_BENCH=ON \
  -DMETATAPE_WERROR=ON \
  "$@"

cmake --build "$BUILD_DIR" -j "$(nproc)"
