#!/usr/bin/env python3
"""Builds llm/testdata/tiny_chat: a tiny random Llama whose vocabulary is the
llama3-style test tokenizer's, so that text goes in and text comes out (the generator
and RAG end-to-end tests). Weights are bfloat16 to keep the folder small; the
references are computed by transformers in float32 from those same bf16 values.

    python3 llm/testdata/make_tiny_chat.py    # from the repository root

Writes config.json, model.safetensors, tokenizer.json (a copy of
tokenizer/llama3_style.json) and expected.json:
    greedy: [{text, prompt_ids (with BOS), tokens: [32 ids], min_margin}]  EOS ignored
"""
import json
import os
import shutil

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer
from transformers import LlamaConfig, LlamaForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "tiny_chat")
TOKENIZER = os.path.join(HERE, "tokenizer", "llama3_style.json")
PROMPTS = [
    "Answer the question using the numbered sources.\n[1] lion: large feline of Africa\nQuestion: what is a lion?\nAnswer:",
    "The quick brown fox",
]
GREEDY_TOKENS = 32


def main():
    tok = Tokenizer.from_file(TOKENIZER)
    vocab = tok.get_vocab_size(with_added_tokens=True)
    spec = dict(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=512,
        rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=True,
        bos_token_id=tok.token_to_id("<|begin_of_text|>"),
        eos_token_id=[tok.token_to_id("<|end_of_text|>"), tok.token_to_id("<|eot_id|>")],
    )
    torch.manual_seed(2026)
    model = LlamaForCausalLM(LlamaConfig(attn_implementation="eager", **spec)).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif "embed_tokens" in name:
                p.copy_(torch.randn_like(p) * 0.1)
            else:
                p.copy_(torch.randn_like(p) / p.shape[1] ** 0.5)
    os.makedirs(OUT, exist_ok=True)
    cfg = dict(spec, architectures=["LlamaForCausalLM"], model_type="llama", hidden_act="silu",
               attention_bias=False, mlp_bias=False, torch_dtype="bfloat16")
    with open(os.path.join(OUT, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    state = {k: v.to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()
             if k != "lm_head.weight"}
    save_file(state, os.path.join(OUT, "model.safetensors"), metadata={"format": "pt"})
    shutil.copyfile(TOKENIZER, os.path.join(OUT, "tokenizer.json"))

    model = LlamaForCausalLM.from_pretrained(OUT, torch_dtype=torch.float32,
                                             attn_implementation="eager").eval()
    greedy = []
    with torch.no_grad():
        for text in PROMPTS:
            ids = tok.encode(text, add_special_tokens=True).ids
            x = torch.tensor([ids])
            tokens, margins = [], []
            for _ in range(GREEDY_TOKENS):
                logits = model(input_ids=x, use_cache=False).logits[0, -1]
                top2 = torch.topk(logits, 2).values
                margins.append(float(top2[0] - top2[1]))
                nxt = int(torch.argmax(logits))
                tokens.append(nxt)
                x = torch.cat([x, torch.tensor([[nxt]])], dim=1)
            greedy.append({"text": text, "prompt_ids": ids, "tokens": tokens,
                           "min_margin": min(margins)})
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump({"greedy": greedy}, f)
        f.write("\n")
    print("tiny_chat: vocab %d, greedy min margins %s" % (vocab, [round(g["min_margin"], 4) for g in greedy]))


if __name__ == "__main__":
    main()
