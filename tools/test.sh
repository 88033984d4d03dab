#!/usr/bin/env bash
# Installs dependencies, configures, builds (tools/build.sh) and runs the whole ctest suite.
# Usage: tools/test.sh [extra cmake configure arguments...]
#   BUILD_DIR=dir tools/test.sh   builds into dir instead of build/
# Exits with ctest's status.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
BUILD_DIR="${BUILD_DIR:-build}"
export BUILD_DIR

bash tools/build.sh "$@"

status=0
ctest --test-dir "$BUILD_DIR" --output-on-failure -j "$(nproc)" || status=$?
exit "$status"
