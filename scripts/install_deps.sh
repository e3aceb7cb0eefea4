#!/usr/bin/env bash
# Installs the Debian 12 packages shardvec builds and tests with. Idempotent: packages
# already present are skipped, and nothing is downloaded when all are there.
set -euo pipefail

PACKAGES=(
  bazel-bootstrap
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev libfaiss-dev libopenblas-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  libcli11-dev librocksdb-dev libhdf5-dev nlohmann-json3-dev libpcre2-dev
  wordnet-base
  g++ python3
)

# The CUDA Toolkit is not a Debian 12 package: the GPU code builds against NVIDIA's CUDA
# 13 at /usr/local/cuda (nvcc, cudart, cuBLAS), which the build machines carry. Say so
# plainly instead of failing later inside Bazel.
if [ ! -x /usr/local/cuda/bin/nvcc ]; then
  echo "install_deps: the CUDA Toolkit (13.x) is missing at /usr/local/cuda; install it from" \
       "NVIDIA's Debian 12 repository (cuda-toolkit-13-0) before building" >&2
  exit 1
fi

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "install_deps: all ${#PACKAGES[@]} packages present"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "install_deps: installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
