#!/usr/bin/env bash
# Builds the CUDA test and benchmark binaries on this machine and packs them, with the shared
# libraries they need that a bare CUDA machine lacks (HDF5, libzip, fmt and their dependencies;
# not glibc, not CUDA's own libraries), into one archive for a GPU machine that has the CUDA
# toolkit but none of the Debian development packages. On the GPU machine:
#   tools/gpu-check.sh --prebuilt ARCHIVE [OUTPUT_DIR]
#
# Usage: tools/gpu-pack.sh [ARCHIVE]          (default .gpu/bundle.tar.xz)
#   BUILD_DIR=dir   build folder (default build-gpu-pack)
#   CUDA_ARCH=list  CUDA architectures (default 90: H100/H200)
#   JOBS=n          parallel build jobs (default: all cores)
#   TARGETS="a b"   targets to build and pack (default: every target). The device tool carries
#                   at most 64 MiB of working tree and every binary holds the whole static engine
#                   (~30 MB each, ~59 MB packed for all of them): for a device session pack what
#                   gpu-check's steps run, e.g. TARGETS="metatape_tests metatape-bench-meta-step
#                   metatape-bench-flash-attention metatape-bench-cuda-kernels
#                   metatape-bench-embedding-update metatape-cli" (metatape-cli: the command-line
#                   tool, bin/metatape, for the online_latency step)
# The binaries are built without -march=native so they run on any x86-64 host processor.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ARCHIVE="${1:-.gpu/bundle.tar.xz}"
BUILD_DIR="${BUILD_DIR:-build-gpu-pack}"
CUDA_ARCH="${CUDA_ARCH:-90}"
JOBS="${JOBS:-$(nproc)}"
export PATH="/usr/local/cuda/bin:$PATH"

cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMETATAPE_CUDA=ON \
  -DCMAKE_CUDA_ARCHITECTURES="$CUDA_ARCH" -DMETATAPE_NATIVE=OFF -DMETATAPE_BUILD_TESTS=ON \
  -DMETATAPE_BUILD_BENCH=ON -DMETATAPE_WERROR=ON >/dev/null
if [[ -n "${TARGETS:-}" ]]; then
  # shellcheck disable=SC2086
  cmake --build "$BUILD_DIR" -j "$JOBS" --target $TARGETS
else
  cmake --build "$BUILD_DIR" -j "$JOBS"
fi

STAGE="$(mktemp -d)"
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE/bin" "$STAGE/lib"
for exe in "$BUILD_DIR"/bin/*; do
  [[ -x "$exe" && -f "$exe" ]] || continue
  # (the command-line tool's target is metatape-cli, its binary metatape)
  target="$(basename "$exe")"
  [[ "$target" == metatape ]] && target=metatape-cli
  if [[ -n "${TARGETS:-}" && " $TARGETS " != *" $target "* ]]; then continue; fi
  cp "$exe" "$STAGE/bin/"
  strip --strip-unneeded "$STAGE/bin/$(basename "$exe")" 2>/dev/null || true
done
# Every shared library the binaries load, except the C library's own and CUDA's.
ldd "$STAGE"/bin/* 2>/dev/null | awk '/=> \// {print $1, $3}' | sort -u | while read -r name path; do
  case "$name" in
    libc.so*|libm.so*|libdl.so*|libpthread.so*|librt.so*|libresolv.so*|ld-linux*) continue ;;
    libcuda.so*|libcudart.so*|libcublas.so*|libcublasLt.so*|libnccl.so*|libnvidia*) continue ;;
  esac
  cp -L "$path" "$STAGE/lib/$name"
done
# CUPTI is loaded at run time (the profiler's device trace), so ldd does not list it: carry the
# toolkit's copy under its soname, found on LD_LIBRARY_PATH by the device trace.
for cupti in /usr/local/cuda/lib64/libcupti.so.* /usr/local/cuda/extras/CUPTI/lib64/libcupti.so.*; do
  [[ -f "$cupti" ]] || continue
  soname="$(objdump -p "$cupti" | awk '/SONAME/ {print $2}')"
  if [[ -n "$soname" && ! -e "$STAGE/lib/$soname" ]]; then cp -L "$cupti" "$STAGE/lib/$soname"; fi
done
git rev-parse --short HEAD >"$STAGE/COMMIT" 2>/dev/null || echo unknown >"$STAGE/COMMIT"
git diff --quiet HEAD 2>/dev/null || sed -i 's/$/-dirty/' "$STAGE/COMMIT"
mkdir -p "$(dirname "$ARCHIVE")"
TMP_ARCHIVE="$ARCHIVE.tmp.$$"
tar -C "$STAGE" -cJf "$TMP_ARCHIVE" .
mv "$TMP_ARCHIVE" "$ARCHIVE"
echo "gpu-pack: $(du -h "$ARCHIVE" | cut -f1) in $ARCHIVE (commit $(cat "$STAGE/COMMIT"))"
if (( $(stat -c %s "$ARCHIVE") > 48 * 1024 * 1024 )); then
  echo "gpu-pack: warning: the archive is over 48 MiB; with the tree it may exceed the device" \
    "tool's 64 MiB: pack fewer TARGETS" >&2
fi
