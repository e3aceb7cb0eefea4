#!/usr/bin/env bash
# The CUDA generator's GPU run, in two halves.
#
# Here (the build machine):
#   scripts/llm_gpu_run.sh pack
# builds //llm/cuda:cuda_model_test and //bench:llm_bench with -c opt and the portable
# libraries (see below for why not --config=portable itself) and packs them, stripped and xz-compressed, into .gpul/ (git-ignored through
# .git/info/exclude), with the transformers bf16 references of the tiny fixtures in
# .gpul/refs/ (made here on the CPU by llm/testdata/make_tiny_llama.py).
#
# On the GPU machine (the repository root, .gpul carried):
#   scripts/llm_gpu_run.sh run [test] [bench] [peer] [sanitize] [tp2]
# unpacks the binaries and runs the named stages (default: all but tp2), writing logs
# under $OUT and a summary at the end.
set -uo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "pack" ]]; then
  set -e
  ob=()
  [[ -n "${BAZEL_OUTPUT_BASE:-}" ]] && ob=(--output_base="$BAZEL_OUTPUT_BASE")
  # The portable libraries (static absl, gtest, OpenBLAS) but the shared libstdc++: cuBLAS
  # and NCCL load the GPU machine's libstdc++.so.6, and a second, static copy in the
  # binary exports its locale facet ids (GNU unique symbols), which the newer shared one
  # then mixes with its own: iostream number formatting breaks (gtest aborts at start).
  cfg=(-c opt --define=portable=1 --platform_suffix=portable_dynstd)
  bazel "${ob[@]}" build "${cfg[@]}" //llm/cuda:cuda_model_test //bench:llm_bench
  bin="$(bazel "${ob[@]}" info "${cfg[@]}" bazel-bin 2>/dev/null)"
  mkdir -p .gpul/refs
  rm -f .gpul/*.xz
  for b in llm/cuda/cuda_model_test bench/llm_bench; do
    strip -o ".gpul/$(basename "$b")" "$bin/$b"
    xz -9 -T2 -f ".gpul/$(basename "$b")"
  done
  if [[ ! -f .gpul/refs/tiny_llama/expected_bfloat16.json ]]; then
    python3 llm/testdata/make_tiny_llama.py --reference-only --dtype bfloat16 --out .gpul/refs
  fi
  du -sh .gpul
  exit 0
fi

[[ "${1:-}" == "run" ]] && shift
stages=("$@")
[[ ${#stages[@]} -eq 0 ]] && stages=(test bench peer sanitize)
OUT="${OUT:-/tmp/llm_out}"
mkdir -p "$OUT" /tmp/svl /tmp/srcdir
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONUNBUFFERED=1
python3 - <<'PY'
import glob, lzma, os
for f in glob.glob('.gpul/*.xz'):
    dst = '/tmp/svl/' + os.path.basename(f)[:-3]
    with lzma.open(f) as src, open(dst, 'wb') as out:
        out.write(src.read())
    os.chmod(dst, 0o755)
PY
B=/tmp/svl
# cuBLAS and NCCL are shared libraries: the CUDA toolkit's, else the Python wheels'.
for lib in libnccl.so.2 libcublas.so.13 libcublasLt.so.13; do
  if ! ldconfig -p | grep -q "$lib" && [[ ! -e /usr/local/cuda/lib64/$lib ]]; then
    dir="$(dirname "$(find / -name "$lib" -not -path '*/proc/*' 2>/dev/null | head -1)")"
    [[ -n "$dir" && "$dir" != "." ]] && export LD_LIBRARY_PATH="$dir:${LD_LIBRARY_PATH:-}"
  fi
done
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/device.txt"
ln -sfn "$PWD" /tmp/srcdir/shardvec
export TEST_SRCDIR=/tmp/srcdir TEST_TMPDIR=/tmp LLM_BF16_REFS="$PWD/.gpul/refs"

for stage in "${stages[@]}"; do
  echo "=== $stage $(date +%T)"
  case "$stage" in
    test)
      timeout 120 "$B/cuda_model_test" > "$OUT/test.log" 2>&1
      echo "cuda_model_test exit $?"
      grep -E "^\[ +(OK|FAILED|SKIPPED) +\]|Failure|Expected|Which is|error|seed" "$OUT/test.log" | head -60 ;;
    bench)
      timeout 150 "$B/llm_bench" --batches 1,8,64 --context 128 --steps 64 \
        --prefill 1x512,8x512 --ablation > "$OUT/bench.log" 2>&1
      echo "llm_bench exit $?"; cat "$OUT/bench.log" ;;
    peer)
      timeout 200 python3 bench/hf_peer.py --batches 1,8,64 --context 128 --steps 64 \
        --prefill 1x512,8x512 > "$OUT/peer.log" 2>&1
      echo "hf_peer exit $?"; grep -v Warning "$OUT/peer.log" | tail -14 ;;
    sanitize)
      timeout 150 compute-sanitizer --tool memcheck --error-exitcode 3 "$B/cuda_model_test" \
        --gtest_filter='LlmKernels.*:CudaModel.AgreesWith*:CudaModel.Continuous*:*F32Greedy*/0' \
        > "$OUT/memcheck.log" 2>&1
      echo "memcheck exit $?"; tail -4 "$OUT/memcheck.log"
      timeout 100 compute-sanitizer --tool racecheck --error-exitcode 3 "$B/cuda_model_test" \
        --gtest_filter='LlmKernels.Attention*:LlmKernels.AddRms*:LlmKernels.ArgMax*' \
        > "$OUT/racecheck.log" 2>&1
      echo "racecheck exit $?"; tail -3 "$OUT/racecheck.log" ;;
    profile)  # per-kernel device times of batch-1 decode steps, kernels launched one by one
      timeout 120 ncu --metrics gpu__time_duration.sum --cache-control none --clock-control none \
        --csv --page raw "$B/llm_bench" --batches 1 --steps 3 --context 128 --prefill "" \
        --graphs 0 --pdl 0 > "$OUT/ncu.csv" 2> "$OUT/ncu.err"
      echo "ncu exit $?"; tail -3 "$OUT/ncu.err"
      python3 - "$OUT/ncu.csv" <<'PY'
import csv, sys, collections
lines = open(sys.argv[1]).read().splitlines()
start = next(i for i, l in enumerate(lines) if l.startswith('"ID"'))
rows = list(csv.reader(lines[start:]))
head = rows[0]
name_i, t_i, grid_i = head.index("Kernel Name"), head.index("gpu__time_duration.sum"), head.index("Grid Size")
unit = {"ns": 1e-3, "nsecond": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3, "msecond": 1e3}[rows[1][t_i]]
data = [r for r in rows[2:] if len(r) > t_i]
starts = [i for i, r in enumerate(data) if "EmbedGather" in r[name_i]]
last = data[starts[-3]:]  # the last 3 decode steps
agg = collections.OrderedDict()
for r in last:
    key = r[name_i].split("(")[0].split("::")[-1][:40] + " grid " + r[grid_i]
    agg.setdefault(key, []).append(float(r[t_i].replace(",", "")) * unit)
print("per decode step (mean of 3), kernels one at a time: %.1f us" % (sum(sum(v) for v in agg.values()) / 3))
for k, v in agg.items():
    print("%9.2f us x %3.0f  %s" % (sum(v) / len(v), len(v) / 3, k))
PY
      ;;
    tp2)  # needs 2 GPUs
      timeout 200 "$B/llm_bench" --tp 2 --batches 1,8,64 --prefill 1x512,8x512 \
        > "$OUT/bench_tp2.log" 2>&1
      echo "llm_bench --tp 2 exit $?"; cat "$OUT/bench_tp2.log" ;;
    *) echo "unknown stage $stage" ;;
  esac
done
echo "=== done $(date +%T)"
