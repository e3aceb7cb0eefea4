#!/usr/bin/env bash
# Builds the GPU test and benchmark binaries with the static `portable` config and packs
# them, stripped and xz-compressed, into .gpu/ (git-ignored) for a run on a GPU machine
# that has the CUDA driver and libraries but no build tools: scripts/gpu_run.sh there
# unpacks and runs them.
#   scripts/pack_gpu.sh [extra bazel targets...]
#   scripts/pack_gpu.sh --faiss   the FAISS GPU peer into .gpuf/ and the FAISS GPU backend's test
#                                  into .gpuft/ (about 33 MB each packed;
#                                  needs scripts/build_faiss_gpu.sh once)
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "--faiss" ]]; then
  bazel build -c opt --config=portable --config=faiss_gpu //bench:faiss_gpu_bench \
    //index:faiss_gpu_index_test
  # One folder each: both hold FAISS's GPU code and together pass one 64 MiB transfer.
  for pair in .gpuf:bench/faiss_gpu_bench .gpuft:index/faiss_gpu_index_test; do
    dir="${pair%%:*}" bin="${pair#*:}"
    mkdir -p "$dir"
    rm -f "$dir"/*.xz
    strip -o "$dir/$(basename "$bin")" "bazel-out/k8-optportable/bin/$bin"
    xz -9 -T2 -f "$dir/$(basename "$bin")"
  done
  du -sh .gpuf .gpuft
  exit 0
fi
targets=(//kernels:knn_test //bench:gpu_bench //index:gpu_index_test //router:gpu_merge_test //cli:shardvec "$@")
bazel build -c opt --config=portable "${targets[@]}"
out=bazel-out/k8-optportable/bin
mkdir -p .gpu
rm -f .gpu/*.xz
for t in "${targets[@]}"; do
  path="${t#//}"
  bin="$out/${path/://}"
  name="$(basename "$bin")"
  strip -o ".gpu/$name" "$bin"
  xz -9 -T2 -f ".gpu/$name"
done
cp scripts/gpu_run.sh .gpu/ 2>/dev/null || true
ls -la .gpu
du -sh .gpu
