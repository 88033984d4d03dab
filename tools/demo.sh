#!/usr/bin/env bash
# Installs dependencies, configures and builds (tools/build.sh, the build tools/test.sh uses
# too), then runs the demo: synthetic multi-session data -> train POCO (poco-paper) -> adapt it
# to two unseen sessions with each fine-tuning mode -> a table of steps-to-95%, score and time.
# Usage: tools/demo.sh [metatape demo arguments, e.g. --set train.steps=1000]
#   BUILD_DIR=dir tools/demo.sh   builds into dir instead of build/
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
BUILD_DIR="${BUILD_DIR:-build}"
export BUILD_DIR

bash tools/build.sh

exec "$BUILD_DIR/bin/metatape" demo "$@"
