#!/usr/bin/env python3
"""Builds the tiny random Llama checkpoints in llm/testdata and their expected outputs.

Default (run from the repository root, CPU, float32):
    python3 llm/testdata/make_tiny_llama.py
writes, for each of tiny_llama/ (untied LM head, GQA, llama3 rope scaling) and
tiny_llama_tied/ (tied embeddings, explicit head_dim != hidden/heads, no rope scaling):
    config.json, model.safetensors (float32), expected_float32.json

References for another device / dtype from the existing checkpoints (weights untouched):
    python3 llm/testdata/make_tiny_llama.py --reference-only --device cuda \
        --dtype bfloat16 --out /tmp/refs    # writes /tmp/refs/<model>/expected_bfloat16.json

expected_*.json holds (all logits are float values of the model's output, cast to float):
    inv_freq:     the rotary inverse frequencies transformers uses (head_dim / 2)
    last_logits:  [{prompt: [ids], logits: [vocab]}]  logits of the last prompt position
    full_logits:  {prompt: [ids], logits: [[vocab] per position]}
    greedy:       [{prompt: [ids], tokens: [64 ids], min_margin: top1-top2 logit gap}]
    model, device, dtype: what produced the file
Greedy runs ignore EOS (manual argmax loop with the KV cache, lowest id on ties as
torch.argmax does). In bfloat16 the logits often tie (min_margin 0), so bf16 greedy
tokens are only comparable where the margins allow.
"""
import argparse
import json
import os

import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

MODELS = {
    "tiny_llama": dict(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        # With head_dim 16 and theta 1e4 the wavelengths span 6 .. 2e4 against 16 .. 64, so the three
        # llama3 regimes (kept, smoothed, divided by factor) all occur.
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        seed=1234,
        embed_std=1.0,
    ),
    "tiny_llama_tied": dict(
        vocab_size=256,
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=3,
        head_dim=16,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        rope_scaling=None,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=[2, 3],
        seed=13,
        # Tied: a token's own embedding dominates its logits unless the layers' output
        # outweighs it in the residual stream.
        embed_std=0.06,
    ),
}

LAST_PROMPT_LENGTHS = [5, 11, 23]
FULL_PROMPT_LENGTH = 12
GREEDY_PROMPT_LENGTHS = [4, 9]
GREEDY_TOKENS = 64


def build_model(spec):
    spec = dict(spec)
    seed = spec.pop("seed")
    embed_std = spec.pop("embed_std")
    torch.manual_seed(seed)
    cfg = LlamaConfig(attn_implementation="eager", **spec)
    cfg._attn_implementation = "eager"
    model = LlamaForCausalLM(cfg).float().eval()
    # Default init (std 0.02) gives nearly uniform logits and degenerate greedy text;
    # larger weights and non-trivial norm gains give varied continuations.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif "embed_tokens" in name:
                p.copy_(torch.randn_like(p) * embed_std)
            elif "lm_head" in name:
                p.copy_(torch.randn_like(p) * (1.0 / p.shape[1] ** 0.5) * 4.0)
            else:
                p.copy_(torch.randn_like(p) * (1.0 / p.shape[1] ** 0.5))
    return model


def prompts(vocab, seed):
    g = torch.Generator().manual_seed(seed)
    # Ids 0..3 are special (bos/eos) in these configs; prompts use 4..vocab-1.
    def one(n):
        return torch.randint(4, vocab, (n,), generator=g).tolist()

    return (
        [one(n) for n in LAST_PROMPT_LENGTHS],
        one(FULL_PROMPT_LENGTH),
        [one(n) for n in GREEDY_PROMPT_LENGTHS],
    )


@torch.no_grad()
def references(model, device, dtype, vocab, seed):
    last_prompts, full_prompt, greedy_prompts = prompts(vocab, seed)
    out = {}
    rot = model.model.rotary_emb
    out["inv_freq"] = [float(x) for x in rot.inv_freq.float().cpu()]

    def logits_of(ids):
        x = torch.tensor([ids], device=device)
        return model(input_ids=x, use_cache=False).logits[0].float().cpu()

    out["last_logits"] = [
        {"prompt": p, "logits": [float(v) for v in logits_of(p)[-1]]} for p in last_prompts
    ]
    full = logits_of(full_prompt)
    out["full_logits"] = {
        "prompt": full_prompt,
        "logits": [[float(v) for v in row] for row in full],
    }
    out["greedy"] = []
    for p in greedy_prompts:
        ids = torch.tensor([p], device=device)
        res = model(input_ids=ids, use_cache=True)
        past = res.past_key_values
        logits = res.logits[0, -1].float()
        tokens, margins = [], []
        for _ in range(GREEDY_TOKENS):
            top2 = torch.topk(logits, 2).values
            margins.append(float(top2[0] - top2[1]))
            nxt = int(torch.argmax(logits))
            tokens.append(nxt)
            res = model(
                input_ids=torch.tensor([[nxt]], device=device),
                past_key_values=past,
                use_cache=True,
            )
            past = res.past_key_values
            logits = res.logits[0, -1].float()
        # In float32 a full recomputation must agree with the cached loop; in 16-bit
        # types the two may legitimately differ (ties, rounding), so it is only reported.
        check = int(torch.argmax(logits_of(p + tokens[:-1])[-1]))
        if check != tokens[-1]:
            assert dtype != torch.float32, "cached and full greedy disagree in float32"
            print("note: %s cached vs full recompute differ at the last token" % str(dtype))
        out["greedy"].append({"prompt": p, "tokens": tokens, "min_margin": min(margins)})
    return out


def write_json(path, obj):
    # float32 values need 9 significant digits to round-trip.
    def fmt(o):
        if isinstance(o, float):
            return float("%.9g" % o)
        if isinstance(o, list):
            return [fmt(x) for x in o]
        if isinstance(o, dict):
            return {k: fmt(v) for k, v in o.items()}
        return o

    with open(path, "w") as f:
        json.dump(fmt(obj), f, separators=(",", ":"))
        f.write("\n")


def config_json(spec):
    cfg = {k: v for k, v in spec.items() if k not in ("seed", "embed_std")}
    cfg.update(
        architectures=["LlamaForCausalLM"],
        model_type="llama",
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        torch_dtype="float32",
    )
    return cfg


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--testdata", default=os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--reference-only", action="store_true",
                    help="load the existing checkpoints instead of making new ones")
    ap.add_argument("--out", default=None,
                    help="folder for <model>/expected_<dtype>.json (default: the model folder)")
    args = ap.parse_args()
    torch.use_deterministic_algorithms(True, warn_only=True)
    dtype = getattr(torch, args.dtype)
    for name, spec in MODELS.items():
        folder = os.path.join(args.testdata, name)
        if args.reference_only:
            model = LlamaForCausalLM.from_pretrained(
                folder, torch_dtype=torch.float32, attn_implementation="eager").eval()
        else:
            os.makedirs(folder, exist_ok=True)
            model = build_model(spec)
            with open(os.path.join(folder, "config.json"), "w") as f:
                json.dump(config_json(spec), f, indent=2)
                f.write("\n")
            state = {k: v.contiguous() for k, v in model.state_dict().items()}
            if spec["tie_word_embeddings"]:
                state.pop("lm_head.weight", None)
            st_path = os.path.join(folder, "model.safetensors")
            save_file(state, st_path, metadata={"format": "pt"})
            os.chmod(st_path, 0o644)
            # Reload to be sure the saved files are what the references come from.
            model = LlamaForCausalLM.from_pretrained(
                folder, torch_dtype=torch.float32, attn_implementation="eager").eval()
        model = model.to(device=args.device, dtype=dtype)
        refs = references(model, args.device, dtype, spec["vocab_size"], spec["seed"] + 1)
        refs.update(model=name, device=args.device, dtype=args.dtype)
        out_dir = folder if args.out is None else os.path.join(args.out, name)
        os.makedirs(out_dir, exist_ok=True)
        path = os.path.join(out_dir, "expected_%s.json" % args.dtype)
        write_json(path, refs)
        print("%s: wrote %s; greedy min margins %s" % (
            name, path, [round(g["min_margin"], 4) for g in refs["greedy"]]))


if __name__ == "__main__":
    main()
