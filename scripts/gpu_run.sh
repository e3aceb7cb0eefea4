#!/usr/bin/env bash
# Runs on the GPU machine: unpacks the binaries that scripts/pack_gpu.sh put in .gpu/,
# then the stages named on the command line, writing logs and CSV under $OUT.
#   scripts/gpu_run.sh test sanitize flat1m ivf1m wordnet flat10m torch faiss
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/gpu_out}"
mkdir -p "$OUT" /tmp/sv
export NCCL_NVLS_ENABLE=0
python3 - <<'PY'
import glob, lzma, os
for f in glob.glob('.gpu/*.xz'):
    dst = '/tmp/sv/' + os.path.basename(f)[:-3]
    with lzma.open(f) as src, open(dst, 'wb') as out:
        out.write(src.read())
    os.chmod(dst, 0o755)
PY
B=/tmp/sv
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/device.txt"
CSV="$OUT/results.csv"
echo "impl,dataset,n,d,storage,metric,index,batch,k,nprobe,ms_per_batch,qps,recall_at_10" > "$CSV"
for stage in "$@"; do
  echo "=== $stage $(date +%T)"
  case "$stage" in
    test)
      "$B/knn_test" 2>&1 | tee "$OUT/knn_test.log" | grep -E "OK \]|FAILED  \]|Failure|INTERNAL|Expected|trace:|knn_test.cc:1[0-9][0-9]: n=" | head -40 ;;
    sanitize)
      compute-sanitizer --tool memcheck --error-exitcode 3 "$B/knn_test" \
        --gtest_filter='*FewerRows*:*Merge*:*BadArg*:*Deleted*' > "$OUT/sanitizer.log" 2>&1
      echo "memcheck exit $?"; tail -5 "$OUT/sanitizer.log"
      compute-sanitizer --tool racecheck --error-exitcode 3 "$B/knn_test" \
        --gtest_filter='*FewerRows*:*Merge*' > "$OUT/racecheck.log" 2>&1
      echo "racecheck exit $?"; tail -3 "$OUT/racecheck.log" ;;
    flat1m)
      "$B/gpu_bench" --synthetic 1000000 --dim 128 --csv "$CSV" \
        --write-base /tmp/sv/base1m.fbin --write-queries /tmp/sv/q1m.fbin 2>&1 | tee "$OUT/$stage.log" | tail -30 ;;
    ivf1m)
      "$B/gpu_bench" --synthetic 1000000 --dim 128 --flat 0 --ivf 4096 --nprobes 8,16,32,64 \
        --csv "$CSV" 2>&1 | tee "$OUT/$stage.log" | tail -30 ;;
    flat768)
      "$B/gpu_bench" --synthetic 1000000 --dim 768 --nq 4096 --csv "$CSV" 2>&1 | tee "$OUT/$stage.log" | tail -30 ;;
    flat10m)
      "$B/gpu_bench" --synthetic 10000000 --dim 128 --nq 4096 --storage f32,f16 --csv "$CSV" \
        --write-base /tmp/sv/base10m.fbin --write-queries /tmp/sv/q10m.fbin 2>&1 | tee "$OUT/$stage.log" | tail -30 ;;
    wordnet)  # carried in .wn/: base.fvecs.xz, query.fvecs, groundtruth.ivecs
      mkdir -p /tmp/sv/wn && cp .wn/query.fvecs .wn/groundtruth.ivecs /tmp/sv/wn/
      python3 -c "import lzma,shutil; shutil.copyfileobj(lzma.open('.wn/base.fvecs.xz'), open('/tmp/sv/wn/base.fvecs','wb'))"
      "$B/gpu_bench" --base /tmp/sv/wn/base.fvecs --queries /tmp/sv/wn/query.fvecs \
        --groundtruth /tmp/sv/wn/groundtruth.ivecs --ivf 1024 --nprobes 2,4,8,16,32 \
        --batches 1,16,256,1000 --csv "$CSV" 2>&1 | tee "$OUT/$stage.log" | tail -30 ;;
    torch)
      python3 bench/torch_peer.py --base /tmp/sv/base1m.fbin --queries /tmp/sv/q1m.fbin \
        --metrics l2 --csv "$CSV" --copy-bandwidth 2>&1 | tee "$OUT/$stage.log" | tail -30 ;;
    torch10m)
      python3 bench/torch_peer.py --base /tmp/sv/base10m.fbin --queries /tmp/sv/q10m.fbin \
        --metrics l2 --csv "$CSV" 2>&1 | tee "$OUT/$stage.log" | tail -30 ;;
    faiss)
      "$B/faiss_gpu_bench" --synthetic 1000000 --dim 128 --csv "$CSV" 2>&1 | tee "$OUT/$stage.log" | tail -30 ;;
    *) echo "unknown stage $stage" ;;
  esac
done
cp "$CSV" "$OUT/" 2>/dev/null
echo "=== done $(date +%T)"
