#!/usr/bin/env bash
# Installs what is missing, builds, and runs the embedded default: a local cluster
# (router + 3 shards on 127.0.0.1), WordNet's 117k synsets loaded as text (embedded by
# the built-in embedder) and searched by text, then a sample vector collection and a
# query against it. With SHARDVEC_MODEL=/path/to/a/Llama-family/checkpoint (config.json,
# *.safetensors, tokenizer.json), the cluster also runs a generator and answers a question
# from WordNet with `rag` (SHARDVEC_MODEL_DEVICE=cuda to generate on the GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install_deps.sh
bazel build -c opt //cli:shardvec
bin=bazel-bin/cli/shardvec
work=$(mktemp -d /tmp/shardvec-demo-XXXXXX)
port=${SHARDVEC_PORT:-7000}
router=127.0.0.1:$port

generator=()
if [[ -n "${SHARDVEC_MODEL:-}" ]]; then
  generator=(--generator-model "$SHARDVEC_MODEL" --generator-device "${SHARDVEC_MODEL_DEVICE:-cpu}")
fi
"$bin" local up --shards 3 --port "$port" --data-dir "$work/data" "${generator[@]}" >"$work/local.out" 2>&1 &
cluster=$!
trap 'kill -TERM $cluster 2>/dev/null; wait $cluster 2>/dev/null || true' EXIT
# A model can take minutes to load; a cluster alone starts in seconds.
limit=600
[[ ${#generator[@]} -gt 0 ]] && limit=6000
for _ in $(seq 1 "$limit"); do
  grep -q ready "$work/local.out" && break
  kill -0 $cluster 2>/dev/null || { cat "$work/local.out"; exit 1; }
  sleep 0.1
done
grep ready "$work/local.out" || { cat "$work/local.out"; exit 1; }

"$bin" --router "$router" load-wordnet wordnet
echo "Text search (id, score, text), answered by the built-in embedder:"
"$bin" --router "$router" search wordnet --text "large wild cat" --k 5
if [[ -n "${SHARDVEC_MODEL:-}" ]]; then
  echo "RAG: the answer streams as the model writes it, then the sources it was given:"
  "$bin" --router "$router" rag wordnet "Which large wild cats live in Asia?" --k 4 --max-tokens 128
fi

"$bin" gen "$work/base.fvecs" --rows 100000 --dim 64 --clusters 200 --seed 1
"$bin" gen "$work/queries.fvecs" --rows 3 --dim 64 --clusters 200 --seed 1
"$bin" --router "$router" collection create sample --dim 64 --metric l2 --index "IVF256,Flat"
"$bin" --router "$router" ingest sample "$work/base.fvecs"
"$bin" --router "$router" status
echo "Top 5 neighbours (id:squared distance), nprobe 16. The queries are rows 0-2 of the data, so each finds itself first:"
"$bin" --router "$router" search sample --queries "$work/queries.fvecs" --k 5 --nprobe 16
echo "The cluster stops now. Keep one running with: $bin local up --shards 3 --port $port --data-dir DIR"
