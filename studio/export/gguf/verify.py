"""The check before a GGUF export is handed over: prompts from the run's held-out rows, the merged PyTorch model's
greedy answers as token ids, and their agreement with what llama-server answered."""
from __future__ import annotations

from pathlib import Path

from ...config import RunConfig
from ...runs.layout import DATASET, EVAL_SET


def verify_prompts(run_dir: Path, tokenizer, cfg: RunConfig, n: int) -> tuple[list[list[dict]], str]:
    """Up to n conversations to check on, each ending before an assistant turn: the run's held-out rows, else
    (no held-out set) its first training rows. Returns (conversations, "held-out" | "training")."""
    from ...data import read_jsonl

    for name, source in ((EVAL_SET, "held-out"), (DATASET, "training")):
        path = run_dir / name
        if not path.is_file():
            continue
        convs = []
        for msgs in read_jsonl(path):
            turns = [{"role": m["role"], "content": str(m.get("content") or "")} for m in msgs]
            last = max((i for i, t in enumerate(turns) if t["role"] == "assistant"), default=None)
            prompt = turns[:last] if last else turns
            if not any(t["role"] == "user" for t in prompt):
                continue
            sp = (cfg.data.system_prompt or "").strip()
            if sp and prompt[0]["role"] != "system":
                prompt = [{"role": "system", "content": sp}, *prompt]
            convs.append(prompt)
            if len(convs) >= n:
                break
        if convs:
            return convs, source
    raise ValueError(f"{run_dir} has neither held-out nor training rows to check the GGUF on.")


def encode(tokenizer, messages: list[dict]) -> list[int]:
    from ...data import render_chat
    text, _ = render_chat(tokenizer, messages, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def eos_ids(model, tokenizer) -> set[int]:
    eos = model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def greedy(model, prompt_ids: list[int], n: int, eos: set[int]) -> list[int]:
    import torch
    ids = torch.tensor([prompt_ids], device=model.device)
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                             eos_token_id=sorted(eos) or None, pad_token_id=sorted(eos)[0] if eos else None)
    return until_eos(out[0, len(prompt_ids):].tolist(), eos)


def until_eos(ids: list[int], eos: set[int]) -> list[int]:
    for i, t in enumerate(ids):
        if t in eos:
            return ids[:i]
    return ids


def compare(convs: list[list[dict]], ref: list[list[int]], got: list[list[int]], tokenizer, n: int) -> list[dict]:
    rows = []
    for msgs, a, b in zip(convs, ref, got):
        a, b = a[:n], b[:n]
        same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        user = next(m["content"] for m in reversed(msgs) if m["role"] == "user")
        rows.append({"prompt": user, "pytorch": tokenizer.decode(a, skip_special_tokens=True),
                     "gguf": tokenizer.decode(b, skip_special_tokens=True), "same_tokens": same,
                     "tokens": max(len(a), len(b)), "identical": a == b})
    return rows
