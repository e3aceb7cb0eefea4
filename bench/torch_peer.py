#!/usr/bin/env python3
"""PyTorch peer of bench/gpu_bench: exact k-NN the plain way users write it.

Distances come from one GEMM per batch (torch.addmm for L2 as
||x||^2 - 2 q.x + ||q||^2 with the base norms precomputed, torch.mm for inner product),
then torch.topk. Storage "f32" is float32 under torch's default settings (TF32 off
unless --tf32; the setting is printed), "f16" keeps the base in float16 and multiplies
in half. When a batch's distance tile would not fit the tile budget, the base is cut
into chunks whose top-k are merged, as a user would; an allocation failure is recorded
as OOM.

The data are the files gpu_bench writes (--write-base/--write-queries/--write-truth), so
both sides see the same rows and there is one generator (bench/synth.h):

  gpu_bench --synthetic 1000000 --write-base /tmp/base.fbin --write-queries /tmp/q.fbin
  python3 bench/torch_peer.py --base /tmp/base.fbin --queries /tmp/q.fbin \
      --dataset synth1M --csv out.csv --copy-bandwidth

Formats: .fbin/.ibin (int32 rows, int32 dim, then row-major float32/int32), .fvecs/.ivecs
(every row prefixed by its int32 dim). CSV columns are gpu_bench's:
impl,dataset,n,d,storage,metric,index,batch,k,nprobe,ms_per_batch,qps,recall_at_10.
recall_at_10 is against --groundtruth (L2 ids) when given; without it only f16 rows
carry one, against the f32 result of the same metric.

The file readers need only the standard library (no numpy, no torch):
  python3 bench/torch_peer.py --base base.fbin --queries q.fbin --inspect
"""

import argparse
import array
import os
import statistics
import sys

CSV_HEADER = "impl,dataset,n,d,storage,metric,index,batch,k,nprobe,ms_per_batch,qps,recall_at_10"


class Rows:
    """Rows of a vector file as a flat array: row i is
    values[i * stride + offset : i * stride + offset + dim]."""

    def __init__(self, path, n, dim, values, stride, offset):
        self.path, self.n, self.dim = path, n, dim
        self.values, self.stride, self.offset = values, stride, offset

    def row(self, i):
        start = i * self.stride + self.offset
        return self.values[start:start + self.dim]


def read_rows(path, typecode):
    """Reads .fbin/.ibin or .fvecs/.ivecs; typecode 'f' (float32) or 'i' (int32)."""
    values = array.array(typecode)
    if values.itemsize != 4:
        raise SystemExit(f"{path}: array('{typecode}') is not 4 bytes on this platform")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        if path.endswith("vecs"):
            header = array.array("i")
            header.fromfile(f, 1)
            if sys.byteorder != "little":
                header.byteswap()
            dim = header[0]
            if dim <= 0 or size % (4 * (dim + 1)) != 0:
                raise SystemExit(f"{path}: size {size} is not a whole number of {dim}-d rows")
            n = size // (4 * (dim + 1))
            f.seek(0)
            values.fromfile(f, n * (dim + 1))
            stride, offset = dim + 1, 1
        else:
            header = array.array("i")
            header.fromfile(f, 2)
            if sys.byteorder != "little":
                header.byteswap()
            n, dim = header
            if n < 0 or dim <= 0 or size != 8 + 4 * n * dim:
                raise SystemExit(f"{path}: header says {n} x {dim}, file has {size} bytes")
            values.fromfile(f, n * dim)
            stride, offset = dim, 0
    if sys.byteorder != "little":
        values.byteswap()
    if offset:
        dims = values[0::stride]
        if typecode == "f":  # the dims were read as floats: check their bit patterns
            dims = array.array("i", dims.tobytes())
        if any(d != dim for d in dims):
            raise SystemExit(f"{path}: rows of different dimensions")
    return Rows(path, n, dim, values, stride, offset)


def default_dataset_name(path, n):
    """gpu_bench's names: synthetic data (which it writes as .fbin) by size, files by name."""
    if path.endswith(".fbin"):
        return f"synth{n // 1000000}M" if n >= 1000000 else f"synth{n}"
    return os.path.basename(path)


def inspect(rows):
    if rows.values.typecode == "i":
        print(f"{rows.path}: {rows.n} x {rows.dim} ids; first row starts {list(rows.row(0))[:5]}")
        return
    norms = [sum(v * v for v in rows.row(i)) ** 0.5 for i in range(min(rows.n, 5))]
    print(f"{rows.path}: {rows.n} x {rows.dim}; first rows' norms " + " ".join(f"{x:.4f}" for x in norms))


# Everything below needs torch and a CUDA device.


def to_device(rows, torch, dtype):
    t = torch.frombuffer(rows.values, dtype=torch.float32 if rows.values.typecode == "f" else torch.int32)
    t = t.view(rows.n, rows.stride)[:, rows.offset:rows.offset + rows.dim]
    return t.to("cuda").to(dtype).contiguous()


def search_tile(torch, xb, xb_norm, q, k, metric):
    k = min(k, xb.shape[0])
    if metric == "l2":
        dist = torch.addmm(xb_norm.unsqueeze(0), q, xb.t(), beta=1, alpha=-2)
        dist += (q * q).sum(dim=1, keepdim=True)
        return torch.topk(dist, k, dim=1, largest=False)
    return torch.topk(torch.mm(q, xb.t()), k, dim=1, largest=True)


def search(torch, xb, xb_norm, q, k, metric, chunk):
    """Top-k of q against xb, the base cut into chunks of `chunk` rows when it is smaller."""
    n = xb.shape[0]
    if chunk >= n:
        return search_tile(torch, xb, xb_norm, q, k, metric)
    dists, ids = [], []
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        d, i = search_tile(torch, xb[start:stop], None if xb_norm is None else xb_norm[start:stop], q, k,
                           metric)
        dists.append(d)
        ids.append(i + start)
    d, pos = torch.topk(torch.cat(dists, dim=1), k, dim=1, largest=(metric == "ip"))
    return d, torch.gather(torch.cat(ids, dim=1), 1, pos)


def time_ms(torch, run, min_reps, min_seconds):
    """Median ms of run(rep) by CUDA events, after warm-up; >= min_reps and ~min_seconds."""
    for rep in range(3):
        run(rep)
    torch.cuda.synchronize()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for rep in range(100000):
        start.record()
        run(rep)
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
        total = sum(times)
        if len(times) >= min_reps and total >= min_seconds * 1000:
            break
        if len(times) >= 3 and total >= 20 * min_seconds * 1000:
            break
    return statistics.median(times)


def copy_bandwidth(torch, gib=1):
    """Device-to-device copy, bytes read plus written per second; returns (ms, bytes/s)."""
    n = gib << 30
    src = torch.ones(n, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = time_ms(torch, lambda rep: dst.copy_(src), 10, 0.5)
    del src, dst
    torch.cuda.empty_cache()
    return ms, 2.0 * n / (ms / 1000)


def recall10(got, truth):
    """got, truth: lists of id lists; the share of each query's true top 10 found in got's 10."""
    hits = 0
    for g, t in zip(got, truth):
        hits += len(set(g[:10]) & set(t[:10]))
    return hits / (10 * len(got))


def all_ids(torch, xb, xb_norm, q_all, k, metric, chunk_for):
    out = []
    step = 1024
    for s in range(0, q_all.shape[0], step):
        q = q_all[s:s + step]
        _, ids = search(torch, xb, xb_norm, q, k, metric, chunk_for(q.shape[0]))
        out.extend(ids.tolist())
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help=".fbin or .fvecs base vectors")
    p.add_argument("--queries", required=True, help=".fbin or .fvecs query vectors")
    p.add_argument("--groundtruth", help=".ibin or .ivecs exact L2 ids, for recall")
    p.add_argument("--dataset", help="name in the output (default: gpu_bench's name for the file)")
    p.add_argument("--batches", default="1,16,256,4096")
    p.add_argument("--ks", default="10,100")
    p.add_argument("--storage", default="f32,f16")
    p.add_argument("--metrics", default="l2,ip")
    p.add_argument("--tile-gb", type=float, default=0,
                   help="largest distance tile; 0 = 40%% of the free memory once the base is loaded")
    p.add_argument("--tf32", action="store_true", help="allow TF32 in float32 matmuls (default off, as torch)")
    p.add_argument("--min-reps", type=int, default=10)
    p.add_argument("--min-seconds", type=float, default=0.5)
    p.add_argument("--csv", help="append CSV rows here (header first if the file is new)")
    p.add_argument("--copy-bandwidth", action="store_true", help="also measure device-to-device copy bandwidth")
    p.add_argument("--inspect", action="store_true", help="only read the files and describe them (no torch)")
    args = p.parse_args()

    base = read_rows(args.base, "f")
    queries = read_rows(args.queries, "f")
    truth = read_rows(args.groundtruth, "i") if args.groundtruth else None
    if queries.dim != base.dim:
        raise SystemExit(f"queries are {queries.dim}-d, base {base.dim}-d")
    if truth is not None and truth.n < queries.n:
        raise SystemExit(f"ground truth has {truth.n} rows for {queries.n} queries")
    dataset = args.dataset or default_dataset_name(args.base, base.n)
    if args.inspect:
        for r in (base, queries) + ((truth,) if truth else ()):
            inspect(r)
        return

    import torch  # only here, so the readers above work without it

    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    print(f"# torch {torch.__version__}, CUDA {torch.version.cuda}, device {torch.cuda.get_device_name(0)}")
    print(f"# torch.backends.cuda.matmul.allow_tf32 = {torch.backends.cuda.matmul.allow_tf32}, "
          f"allow_fp16_reduced_precision_reduction = "
          f"{torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction}")
    print(f"# data {dataset}: {base.n} x {base.dim}, {queries.n} queries")
    batches = [int(x) for x in args.batches.split(",")]
    ks = [int(x) for x in args.ks.split(",")]
    rows = []  # dicts with the CSV columns

    copy_bw = 0.0
    if args.copy_bandwidth:
        ms, copy_bw = copy_bandwidth(torch)
        print(f"# device-to-device copy: {copy_bw / 1e9:.0f} GB/s (read + write), {ms:.3f} ms per GiB")
        rows.append(dict(impl="copy_bw", dataset="device", n=1 << 30, d=0, storage="u8", metric="",
                         index="copy", batch=0, k=0, nprobe=0, ms=f"{ms:.4f}", qps=f"{copy_bw / 1e9:.1f}",
                         recall="", floor=""))

    truth_ids = [list(truth.row(i)) for i in range(queries.n)] if truth is not None else None
    unit = all(abs(sum(v * v for v in base.row(i)) - 1) < 1e-3 for i in range(0, base.n, max(1, base.n // 64)))
    q32 = to_device(queries, torch, torch.float32)
    f32_ids = {}  # (metric, k) -> ids of every query, when there is no ground truth
    for storage in args.storage.split(","):
        dtype = {"f32": torch.float32, "f16": torch.float16}[storage]
        label = "f32-tf32" if storage == "f32" and args.tf32 else storage
        xb = to_device(base, torch, dtype)
        xb_norm = (xb.float() ** 2).sum(dim=1).to(dtype) if "l2" in args.metrics else None
        q_all = q32.to(dtype)
        free, _ = torch.cuda.mem_get_info()
        tile_bytes = args.tile_gb * (1 << 30) if args.tile_gb > 0 else 0.4 * free
        elem = xb.element_size()

        def chunk_for(batch):
            return max(max(ks), int(tile_bytes // (batch * elem)))

        for metric in args.metrics.split(","):
            for k in ks:
                recall = ""
                try:
                    if k >= 10 and truth_ids is not None and (metric == "l2" or unit):
                        recall = f"{recall10(all_ids(torch, xb, xb_norm, q_all, k, metric, chunk_for), truth_ids):.4f}"
                    elif k >= 10 and truth_ids is None:
                        ids = all_ids(torch, xb, xb_norm, q_all, k, metric, chunk_for)
                        if storage == "f32":
                            f32_ids[(metric, k)] = ids
                        elif (metric, k) in f32_ids:
                            recall = f"{recall10(ids, f32_ids[(metric, k)]):.4f}"
                except torch.cuda.OutOfMemoryError:
                    torch.cuda.empty_cache()
                for batch in batches:
                    sets = max(1, queries.n // batch)
                    if queries.n >= batch:
                        qsets = [q_all[s * batch:(s + 1) * batch] for s in range(sets)]
                    else:  # fewer queries than a batch: repeat them
                        qsets = [q_all[torch.arange(batch, device="cuda") % queries.n]]
                    chunk = chunk_for(batch)

                    def run(rep):
                        search(torch, xb, xb_norm, qsets[rep % len(qsets)], k, metric, chunk)

                    row = dict(impl="torch", dataset=dataset, n=base.n, d=base.dim, storage=label, metric=metric,
                               index="flat", batch=batch, k=k, nprobe=0, recall=recall, floor="")
                    try:
                        ms = time_ms(torch, run, args.min_reps, args.min_seconds)
                        row.update(ms=f"{ms:.4f}", qps=f"{batch / (ms / 1000):.1f}")
                        if batch == 1 and copy_bw > 0:
                            floor_ms = base.n * base.dim * elem / copy_bw * 1000
                            row["floor"] = f"{ms / floor_ms:.2f}"
                        if chunk < base.n:
                            print(f"# {label} {metric} batch {batch} k {k}: base in chunks of {chunk} rows")
                    except torch.cuda.OutOfMemoryError:
                        torch.cuda.empty_cache()
                        row.update(ms="OOM", qps="")
                    rows.append(row)
                    print(f"# {row['storage']} {metric} batch {batch} k {k}: {row['ms']} ms", flush=True)
        del xb, xb_norm, q_all
        torch.cuda.empty_cache()

    print("\n| impl | data | n | d | storage | metric | index | batch | k | nprobe | ms/batch | QPS | "
          "recall@10 | x floor |\n|---|---|---:|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        ms = r["ms"] if r["ms"] == "OOM" else f"{float(r['ms']):.3f}"
        qps = f"{float(r['qps']):.0f}" if r["qps"] else ""
        recall = f"{float(r['recall']):.3f}" if r["recall"] else ""
        print(f"| {r['impl']} | {r['dataset']} | {r['n']} | {r['d']} | {r['storage']} | {r['metric']} | "
              f"{r['index']} | {r['batch']} | {r['k']} | {r['nprobe']} | {ms} | {qps} | {recall} | {r['floor']} |")
    if args.csv:
        new = not os.path.exists(args.csv) or os.path.getsize(args.csv) == 0
        with open(args.csv, "a") as f:
            if new:
                f.write(CSV_HEADER + "\n")
            for r in rows:
                f.write(",".join(str(r[c]) for c in ("impl", "dataset", "n", "d", "storage", "metric", "index",
                                                     "batch", "k", "nprobe", "ms", "qps", "recall")) + "\n")


if __name__ == "__main__":
    main()
