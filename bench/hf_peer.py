#!/usr/bin/env python3
"""transformers peer of bench/llm_bench: the same Llama-3.2-1B-shaped model with random
weights, run the plain way users run it (LlamaForCausalLM from the config, bf16,
attn_implementation="sdpa", model.generate with do_sample=False), printing llm_bench's
table columns.

    python3 bench/hf_peer.py --batches 1,8,64 --context 128 --steps 64 --prefill 1x512,8x512

decode ms/step = (generate of steps + 1 new tokens - generate of 1 new token) / steps,
min_new_tokens = max_new_tokens so that no sequence stops early; prefill ms = generate
of one new token (the prompt's forward pass and the first token), median of 5.
The batch-1 floor is the same formula as llm_bench's: bytes of weights read per step over
the device-to-device copy bandwidth measured here (bytes read + written).
"""
import argparse
import statistics
import time

import torch
import transformers
from transformers import AutoModelForCausalLM, LlamaConfig


def llama32_1b():
    return LlamaConfig(
        vocab_size=128256,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        tie_word_embeddings=True,
        bos_token_id=128000,
        eos_token_id=128001,
    )


def copy_bandwidth():
    n = 1 << 28  # 1 GiB of float32
    a = torch.ones(n, device="cuda")
    b = torch.empty_like(a)
    times = []
    for i in range(12):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        b.copy_(a)
        e.record()
        e.synchronize()
        if i >= 2:
            times.append(s.elapsed_time(e))
    del a, b
    return 2 * n * 4 / (statistics.median(times) * 1e-3) / 1e9


def weight_bytes(cfg, elem=2):
    h, d, i = cfg.hidden_size, cfg.head_dim, cfg.intermediate_size
    qh, kvh = cfg.num_attention_heads, cfg.num_key_value_heads
    layer = (qh + 2 * kvh) * d * h + h * qh * d + 3 * i * h + 2 * h
    return elem * (cfg.num_hidden_layers * layer + cfg.vocab_size * h + h)


def make_model(cfg):
    major = int(transformers.__version__.split(".")[0])
    kw = {"dtype": torch.bfloat16} if major >= 5 else {"torch_dtype": torch.bfloat16}
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa", **kw)
    return model.to(device="cuda", dtype=torch.bfloat16).eval()


def prompts(batch, length, vocab, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(4, vocab, (batch, length), generator=g).cuda()


@torch.no_grad()
def generate_ms(model, ids, new_tokens):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=0,
    )
    torch.cuda.synchronize()
    assert out.shape[1] == ids.shape[1] + new_tokens
    return (time.perf_counter() - t0) * 1e3


def row(impl, phase, batch, tokens_per_step, ms, floor_ms=None):
    frac = "%.1f%%" % (100.0 * floor_ms / ms) if floor_ms else ""
    print("| %-12s | %-8s | %-6s | %11d | %9.3f | %10.1f | %s |" % (
        impl, phase, batch, tokens_per_step, ms, tokens_per_step / (ms * 1e-3), frac), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", default="1,8,64")
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--prefill", default="1x512,8x512")
    args = ap.parse_args()
    torch.manual_seed(0)
    cfg = llama32_1b()
    bw = copy_bandwidth()
    wbytes = weight_bytes(cfg)
    floor_ms = wbytes / (bw * 1e9) * 1e3
    print("device: %s; device-to-device copy %.0f GB/s (read + write); torch %s, transformers %s"
          % (torch.cuda.get_device_name(), bw, torch.__version__, transformers.__version__))
    print("batch-1 floor: %.3f GB of weights per step / %.0f GB/s = %.3f ms (%.0f tokens/s)"
          % (wbytes / 1e9, bw, floor_ms, 1e3 / floor_ms))
    model = make_model(cfg)
    rows = []
    for b in [int(x) for x in args.batches.split(",") if x]:
        ids = prompts(b, args.context, cfg.vocab_size, b)
        generate_ms(model, ids, 2)  # warm-up
        one = statistics.median(generate_ms(model, ids, 1) for _ in range(3))
        full = statistics.median(generate_ms(model, ids, args.steps + 1) for _ in range(2))
        rows.append(("decode", str(b), b, (full - one) / args.steps, floor_ms if b == 1 else None))
    for spec in [s for s in args.prefill.split(",") if s]:
        b, n = (int(x) for x in spec.split("x"))
        ids = prompts(b, n, cfg.vocab_size, 7 * b + n)
        generate_ms(model, ids, 1)
        ms = statistics.median(generate_ms(model, ids, 1) for _ in range(5))
        rows.append(("prefill", spec, b * n, ms, None))
    print("\ncontext %d tokens before decoding; decode ms/step from generate of %d vs 1 new tokens"
          % (args.context, args.steps + 1))
    print("| %-12s | %-8s | %-6s | %11s | %9s | %10s | %s |" % (
        "impl", "phase", "batch", "tokens/step", "ms/step", "tokens/s", "of floor"))
    print("|--------------|----------|--------|-------------|-----------|------------|----------|")
    for r in rows:
        row("transformers", *r)


if __name__ == "__main__":
    main()
