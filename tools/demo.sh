#!/usr/bin/env bash
# Installs dependencies, configures and builds (tools/build.sh, the build tools/test.sh uses
# too), then runs the demo.
# Usage: tools/demo.sh [metatape-demo arguments...]
#   BUILD_DIR=dir tools/demo.sh   builds into dir instead of build/
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
BUILD_DIR="${BUILD_DIR:-build}"
export BUILD_DIR

bash tools/build.sh

exec "$BUILD_DIR/bin/metatape-demo" "$@"
