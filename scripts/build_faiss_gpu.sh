#!/usr/bin/env bash
# Builds the GPU part of FAISS 1.7.3 (Debian's source package) for sm_90 against
# /usr/local/cuda and caches it outside the source tree, for `--config=faiss_gpu`.
# Idempotent: a finished cache is left alone; an interrupted one resumes.
#
# Result, in $SHARDVEC_FAISS_GPU_DIR (default ~/.cache/shardvec/faiss-gpu-1.7.3):
#   lib/libfaiss_gpu.a      only the faiss/gpu objects; link beside Debian's CPU libfaiss.a
#   include/faiss/gpu/...   the GPU headers (CPU headers come from /usr/include/faiss)
#   DONE                    written last
# See /work/shared/FAISS_GPU_NOTES.md for why CUDA must be compiled as C++17.
set -euo pipefail

CACHE_ROOT=${SHARDVEC_CACHE:-$HOME/.cache/shardvec}
OUT=${SHARDVEC_FAISS_GPU_DIR:-$CACHE_ROOT/faiss-gpu-1.7.3}
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
SRC_LIST=/etc/apt/sources.list.d/shardvec-faiss-src.sources
DEBIAN_LIST=/etc/apt/sources.list.d/debian.sources
SRC_DIR=$OUT/src/faiss-1.7.3
BUILD_DIR=$OUT/build

if [ -f "$OUT/DONE" ]; then
  echo "build_faiss_gpu: already built in $OUT"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

t_start=$(date +%s)
mkdir -p "$OUT/src"

remove_src_list() {
  if [ -e "$SRC_LIST" ]; then
    $SUDO rm -f "$SRC_LIST"
    $SUDO apt-get update -qq || echo "build_faiss_gpu: warning: apt-get update failed" >&2
  fi
}

fetch_source() {
  # A separate deb-src list, copied from the first (main archive) stanza of Debian's
  # own list, so that file is never edited; the trap removes it even on failure.
  trap remove_src_list EXIT
  trap 'exit 1' INT TERM
  awk '/^[[:space:]]*$/ { if (seen) exit; next }
       /^[[:space:]]*#/ { next }
       /^Types:/ { print "Types: deb-src"; seen = 1; next }
       /^(URIs|Suites|Components|Signed-By):/ { print; seen = 1 }' \
    "$DEBIAN_LIST" | $SUDO tee "$SRC_LIST" >/dev/null
  echo "build_faiss_gpu: wrote $SRC_LIST:"
  sed 's/^/  /' "$SRC_LIST"
  $SUDO apt-get update -qq
  (cd "$OUT/src" && apt-get source faiss)
  remove_src_list
  trap - EXIT INT TERM
  if [ ! -f "$SRC_DIR/CMakeLists.txt" ]; then
    echo "build_faiss_gpu: expected $SRC_DIR after apt-get source faiss" >&2
    exit 1
  fi
}

if [ -f "$SRC_DIR/CMakeLists.txt" ]; then
  echo "build_faiss_gpu: source already in $SRC_DIR"
else
  fetch_source
fi
t_source=$(date +%s)

cmake -B "$BUILD_DIR" -S "$SRC_DIR" \
  -DFAISS_ENABLE_GPU=ON -DFAISS_ENABLE_PYTHON=OFF -DBUILD_TESTING=OFF \
  -DCMAKE_CUDA_ARCHITECTURES=90 -DCMAKE_CUDA_STANDARD=17 \
  -DCMAKE_CUDA_COMPILER="$CUDA_HOME/bin/nvcc" \
  -DCMAKE_BUILD_TYPE=Release -DBLA_VENDOR=OpenBLAS
t_configure=$(date +%s)

# Others share this machine; compile at a lower priority.
nice -n "${SHARDVEC_NICE:-10}" cmake --build "$BUILD_DIR" --target faiss -j"$(nproc)"
t_build=$(date +%s)

OBJ_DIR=$BUILD_DIR/faiss/CMakeFiles/faiss.dir/gpu
mapfile -t objs < <(find "$OBJ_DIR" -name '*.o' | sort)
if [ "${#objs[@]}" -eq 0 ]; then
  echo "build_faiss_gpu: no GPU objects under $OBJ_DIR" >&2
  exit 1
fi
mkdir -p "$OUT/lib"
rm -f "$OUT/lib/libfaiss_gpu.a.tmp"
# q, not r: members with the same base name from different folders must all stay.
ar qcD "$OUT/lib/libfaiss_gpu.a.tmp" "${objs[@]}"
ranlib -D "$OUT/lib/libfaiss_gpu.a.tmp"
mv "$OUT/lib/libfaiss_gpu.a.tmp" "$OUT/lib/libfaiss_gpu.a"

rm -rf "$OUT/include"
mkdir -p "$OUT/include"
(cd "$SRC_DIR" && find faiss/gpu \( -name '*.h' -o -name '*.cuh' \) \
  -not -path 'faiss/gpu/test/*' -exec cp --parents -p {} "$OUT/include" \;)

date -u +%Y-%m-%dT%H:%M:%SZ > "$OUT/DONE"
t_end=$(date +%s)

echo "build_faiss_gpu: ${#objs[@]} GPU objects -> $OUT/lib/libfaiss_gpu.a" \
  "($(du -h "$OUT/lib/libfaiss_gpu.a" | cut -f1))"
echo "build_faiss_gpu: headers -> $OUT/include/faiss/gpu"
echo "build_faiss_gpu: timings (s): source $((t_source - t_start))," \
  "configure $((t_configure - t_source)), build $((t_build - t_configure))," \
  "archive $((t_end - t_build)), total $((t_end - t_start))"
echo "build_faiss_gpu: now run 'bazel sync --only=faiss_gpu' so Bazel sees the cache," \
  "then build with --config=faiss_gpu"
