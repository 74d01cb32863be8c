"""The memory estimate (studio/memory.py) for one GPU against published peaks: Llama-3.1-8B QLoRA r32 batch 1 at
the longest context HF transformers + FlashAttention-2 fitted on cards of 12-80 GB (Unsloth's Llama 3.1 context
table, as quoted in issue 24), and the same lengths on Llama-2-7B (32k vocabulary). Prints a table; no GPU needed
(a capability-8.0 card is injected). Figures, not a test.

    python bench/estimate_published.py [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LLAMA31_8B = {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
              "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": False, "torch_dtype": "bfloat16"}
LLAMA2_7B = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
             "num_key_value_heads": 32, "vocab_size": 32000, "tie_word_embeddings": False, "torch_dtype": "float16"}
# (tokens, GB of the card HF+FA2 fitted them on): the published maximum context per card size
PUBLISHED_8B = [(932, 12), (2551, 16), (5789, 24), (12264, 40), (28454, 80)]
# the studio's estimate for the same cases before issue 24 (as the issue quotes it): 0.94x down to 0.45x
BEFORE_8B = {932: 11.3, 2551: 12.8, 5789: 15.6, 12264: 21.4, 28454: 35.8}


def estimate_row(shape: dict, tokens: int, checkpointing: bool, levers: list[str]) -> dict:
    from studio.config import RunConfig
    from studio.memory import estimate
    cfg = RunConfig().replace(model={"quantization": "nf4"}, lora={"r": 32, "alpha": 64},
                              train={"batch_size": 1, "grad_accum": 1, "max_length": tokens, "packing": False,
                                     "gradient_checkpointing": checkpointing, "levers": levers})
    e = estimate(cfg, "cuda", model_config=shape, row_tokens=tokens)
    return {"total_gb": e.total_gb, "breakdown": e.breakdown}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    from studio.env import devices
    devices.cuda_capability = lambda index=0: (8, 0)  # an A100-class card; nothing is measured here
    devices.gpu_memory = lambda index=0: None
    rows = []
    print(f"{'model':<13}{'tokens':>7}{'published':>10}{'before':>8}{'estimate':>10}{'ratio':>7}{' lmhead on':>11}"
          f"{'  no ckpt':>10}   activations incl. LM head (GB)")
    for name, shape in (("Llama-3.1-8B", LLAMA31_8B), ("Llama-2-7B", LLAMA2_7B)):
        for tokens, published in PUBLISHED_8B:
            ours = estimate_row(shape, tokens, True, ["none"])
            lever = estimate_row(shape, tokens, True, ["lmhead"])
            nock = estimate_row(shape, tokens, False, ["none"])
            pub = published if name == "Llama-3.1-8B" else None
            ratio = f"{ours['total_gb'] / pub:.2f}x" if pub else "-"
            before = f"{BEFORE_8B[tokens]:.1f}GB" if pub else "-"
            print(f"{name:<13}{tokens:>7}{(str(pub) + ' GB') if pub else '-':>10}{before:>8}{ours['total_gb']:>8.1f}GB"
                  f"{ratio:>7}{lever['total_gb']:>9.1f}GB{nock['total_gb']:>8.1f}GB   "
                  f"{ours['breakdown']['activations']:.1f}")
            rows.append({"model": name, "tokens": tokens, "published_gb": pub, "estimate": ours,
                         "estimate_lmhead": lever, "estimate_no_checkpointing": nock})
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(rows, indent=1))
        print(a.json)


if __name__ == "__main__":
    main()
