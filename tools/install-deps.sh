#!/usr/bin/env bash
# Installs the Debian packages metatape needs to configure, build and test (see
# third_party/README.md). Checks each package first; does nothing when all are present.
# As root it runs apt-get; otherwise it names the missing packages and the command to run.
# The CUDA toolkit is not a Debian package here: it is expected under /usr/local/cuda.
set -euo pipefail

PACKAGES=(
  build-essential
  cmake
  ninja-build
  pkg-config
  libeigen3-dev
  libopenblas-openmp-dev
  libfmt-dev
  nlohmann-json3-dev
  catch2
  libcli11-dev
  libbenchmark-dev
  libzip-dev
  libhdf5-dev
  zlib1g-dev
  python3-matplotlib
  python3-numpy
)

if ! command -v dpkg-query >/dev/null 2>&1; then
  echo "install-deps: dpkg-query not found; this script supports Debian-based systems only." >&2
  echo "install-deps: install by hand: ${PACKAGES[*]}" >&2
  exit 1
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
  status="$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)"
  if [[ "$status" != "install ok installed" ]]; then
    missing+=("$pkg")
  fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "install-deps: all ${#PACKAGES[@]} packages present; nothing to do."
  exit 0
fi

echo "install-deps: missing packages: ${missing[*]}"

if [[ "$(id -u)" -ne 0 ]]; then
  echo "install-deps: not running as root, so nothing was installed. Run:" >&2
  echo "  sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${missing[*]}" >&2
  exit 1
fi

echo "install-deps: running apt-get update"
apt-get update
echo "install-deps: installing ${missing[*]}"
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
echo "install-deps: installed ${#missing[@]} package(s): ${missing[*]}"
