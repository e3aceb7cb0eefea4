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
for f in glob.glob('.gpu/*.xz') + glob.glob('.gpuf/*.xz') + glob.glob('.gpuft/*.xz'):
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
        --gtest_filter='*FewerRows*:*Merge*:*BadArg*:*Deleted*:*Ivf*:*NearTies*:*Tf32FilterSmall*' > "$OUT/sanitizer.log" 2>&1
      echo "memcheck exit $?"; tail -5 "$OUT/sanitizer.log"
      compute-sanitizer --tool racecheck --error-exitcode 3 "$B/knn_test" \
        --gtest_filter='*FewerRows*:*Merge*:*Tf32FilterSmall*' > "$OUT/racecheck.log" 2>&1
      echo "racecheck exit $?"; tail -3 "$OUT/racecheck.log" ;;
    flat1m)
      "$B/gpu_bench" --synthetic 1000000 --dim 128 --csv "$CSV" \
        --write-base /tmp/sv/base1m.fbin --write-queries /tmp/sv/q1m.fbin 2>&1 | tee "$OUT/$stage.log" | tail -30 ;;
    ivf1m)
      "$B/gpu_bench" --synthetic 1000000 --dim 128 --flat 0 --ivf 4096 --nprobes 8,16,32,64 \
        --csv "$CSV" 2>&1 | tee "$OUT/$stage.log" | tail -30 ;;
    flat768)
      "$B/gpu_bench" --synthetic 1000000 --dim 768 --nq 4096 --batches 1,16,256,1024,4096 --csv "$CSV" \
        --write-base /tmp/sv/base768.fbin --write-queries /tmp/sv/q768.fbin 2>&1 | tee "$OUT/$stage.log" | tail -30 ;;
    flat10m)
      "$B/gpu_bench" --synthetic 10000000 --dim 128 --nq 4096 --storage f32,f32-tile,f16 --csv "$CSV" \
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
    faiss)  # carried in .gpuf/
      "$B/faiss_gpu_bench" --synthetic 1000000 --dim 128 --dataset synth1M --metrics l2 \
        --nlist 4096 --nprobes 8,16,32,64 --csv "$OUT/faiss.csv" 2>&1 | tee "$OUT/$stage.log" | tail -40 ;;
    torch768)
      python3 bench/torch_peer.py --base /tmp/sv/base768.fbin --queries /tmp/sv/q768.fbin \
        --metrics l2 --csv "$CSV" 2>&1 | tee "$OUT/$stage.log" | tail -20 ;;
    faiss768)
      "$B/faiss_gpu_bench" --synthetic 1000000 --dim 768 --synthetic-queries 4096 --dataset synth1M \
        --metrics l2 --indexes flat --csv "$OUT/faiss768.csv" 2>&1 | tee "$OUT/$stage.log" | tail -20 ;;
    faiss10m)
      "$B/faiss_gpu_bench" --synthetic 10000000 --dim 128 --synthetic-queries 4096 --dataset synth10M \
        --metrics l2 --indexes flat --csv "$OUT/faiss10m.csv" 2>&1 | tee "$OUT/$stage.log" | tail -20 ;;
    wordnet16)  # ours alone on the .wn16/ rows (the peer's numbers come from faisswordnet)
      mkdir -p /tmp/sv/wn16
      python3 -c "
import lzma, numpy as np
raw = np.frombuffer(lzma.open('.wn16/base.f16.xz').read(), dtype=np.float16).reshape(-1, 128).astype(np.float32)
rows = np.hstack([np.full((raw.shape[0], 1), 128, dtype=np.int32).view(np.float32), raw])
rows.tofile('/tmp/sv/wn16/base.fvecs')"
      cp .wn16/query.fvecs /tmp/sv/wn16/
      "$B/gpu_bench" --base /tmp/sv/wn16/base.fvecs --queries /tmp/sv/wn16/query.fvecs --ivf 1024 --flat 0 \
        --nprobes 2,4,8,16,32 --batches 1,16,256,1000 --ks 10 --storage f32 --csv "$CSV" 2>&1 \
        | tee "$OUT/wn16.log" | tail -30 ;;
    faisswordnet)  # .wn16/: the real set's rows in float16 (to fit beside the peer), exact truth recomputed
      mkdir -p /tmp/sv/wn16
      python3 -c "
import lzma, struct, numpy as np
raw = np.frombuffer(lzma.open('.wn16/base.f16.xz').read(), dtype=np.float16).reshape(-1, 128).astype(np.float32)
rows = np.hstack([np.full((raw.shape[0], 1), 128, dtype=np.int32).view(np.float32), raw])
rows.tofile('/tmp/sv/wn16/base.fvecs')"
      cp .wn16/query.fvecs /tmp/sv/wn16/
      "$B/faiss_gpu_bench" --base /tmp/sv/wn16/base.fvecs --queries /tmp/sv/wn16/query.fvecs --dataset wordnet16 \
        --metrics l2 --nlist 1024 --nprobes 2,4,8,16,32 --batches 1,16,256,1000 --csv "$OUT/faisswn.csv" 2>&1 \
        | tee "$OUT/$stage.log" | tail -40
      "$B/gpu_bench" --base /tmp/sv/wn16/base.fvecs --queries /tmp/sv/wn16/query.fvecs --ivf 1024 \
        --nprobes 2,4,8,16,32 --batches 1,16,256,1000 --storage f32 --csv "$CSV" 2>&1 | tee "$OUT/wn16.log" | tail -40 ;;
    e2e)  # a router and one shard with device=gpu on 127.0.0.1, timed by `shardvec bench`
      "$B/gpu_bench" --synthetic 1000000 --dim 128 --flat 0 --write-base /tmp/sv/e2e_base.fbin \
        --write-queries /tmp/sv/e2e_q.fbin --write-truth /tmp/sv/e2e_gt.ivecs > "$OUT/e2e_prep.log" 2>&1
      rm -rf /tmp/sv/cluster
      "$B/shardvec" local up --shards 1 --port 7600 --data-dir /tmp/sv/cluster --gpus 0 > "$OUT/e2e_cluster.log" 2>&1 &
      up=$!
      S="$B/shardvec --router 127.0.0.1:7600"
      for i in $(seq 1 100); do $S status > /dev/null 2>&1 && break; sleep 0.2; done
      for dev in gpu; do
        $S collection create e2e_$dev --dim 128 --metric l2 --index Flat --device $dev
        $S ingest e2e_$dev /tmp/sv/e2e_base.fbin 2>&1 | tail -1
        for b in 1 16 256; do
          for c in 1 4; do
            echo "--- $dev batch $b concurrency $c"
            $S bench e2e_$dev --queries /tmp/sv/e2e_q.fbin --groundtruth /tmp/sv/e2e_gt.ivecs \
              --k 10 --batch $b --concurrency $c --seconds 3 2>&1 | tail -6
          done
        done
      done 2>&1 | tee "$OUT/e2e.log"
      kill -TERM $up; wait $up ;;
    faissindex)  # carried in .gpuft/
      "$B/faiss_gpu_index_test" 2>&1 | tee "$OUT/faiss_gpu_index_test.log" | grep -E "OK \]|FAILED  \]|Failure|Expected|Which|error" | head -30 ;;
    gpuindex)
      "$B/gpu_index_test" 2>&1 | tee "$OUT/gpu_index_test.log" | grep -E "OK \]|FAILED  \]|Failure" | head -30
      "$B/gpu_merge_test" 2>&1 | tee "$OUT/gpu_merge_test.log" | grep -E "OK \]|FAILED  \]|Failure" | head -30 ;;
    *) echo "unknown stage $stage" ;;
  esac
done
cp "$CSV" "$OUT/" 2>/dev/null
echo "=== done $(date +%T)"
