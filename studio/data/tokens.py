"""Tokens: examples under the model's chat template, the assistant-only loss mask, and length statistics (of SFT
examples, and of preference pairs' two sides).

Takes a tokenizer object (studio.models.load_tokenizer gives every tokenizer a chat template); never imports
transformers or torch itself.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .issues import Issue

# Examples tokenised for length statistics. Each costs ~0.25 ms (the chat template is rendered once per turn), so
# all 1.9 M rows of a 200 MB file took minutes; 2,000 take ~0.5 s and put the 95th percentile within ~1 point.
# Picked by `Reservoir` (seed 0): a uniform sample of the whole file, the same rows whether it was read whole (the
# Data tab, sample_examples) or streamed (`studio data`, formats.scan_examples).
TOKEN_SAMPLE = 2000

# What closes an assistant turn under the named chat templates (studio.models.templates: ChatML and Phi-4, Llama 3,
# Gemma, Phi-3), besides the tokenizer's own special tokens: a base model given one of them does not have these as
# special tokens, and the mask must still take the closer, or the model never learns to stop.
TURN_ENDS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>")

# --- tokenisation -----------------------------------------------------------------------------

def render_chat(tokenizer: Any, messages: list[dict], add_generation_prompt: bool = False) -> tuple[str, list[dict]]:
    """(text, the messages as rendered) under the tokenizer's chat template. Templates that refuse a system turn
    (Gemma's) get it folded into the first user turn instead: the one place that is done, for training and chat."""
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False,
                                             add_generation_prompt=add_generation_prompt), messages
    except Exception:
        if not (len(messages) >= 2 and messages[0]["role"] == "system"):
            raise
        folded = [{"role": messages[1]["role"], "content": messages[0]["content"] + "\n\n" + messages[1]["content"]},
                  *messages[2:]]
        return tokenizer.apply_chat_template(folded, tokenize=False,
                                             add_generation_prompt=add_generation_prompt), folded


def tokenize_messages(messages: list[dict], tokenizer: Any, max_length: int, issues: list | None = None,
                      row: int | None = None) -> dict:
    """{"input_ids", "assistant_masks"} under the tokenizer's chat template, cut at max_length.

    The mask is 1 on the content of every assistant turn and on the end-of-turn token closing it, so
    the model learns the answers and when to stop, never the prompts. An answer the template rewrites (so
    its text cannot be found to mark) is not trained on, and an Issue saying so is appended to `issues`."""
    ids, mask, unmarked = _tokenize_full(messages, tokenizer)
    if unmarked and issues is not None:
        issues.append(_unmarked_issue(unmarked, row))
    return {"input_ids": ids[:max_length], "assistant_masks": mask[:max_length]}


def _unmarked_issue(turns: list[int], row: int | None) -> Issue:
    which = ", ".join(str(t + 1) for t in turns)
    return Issue(row, None, f"the chat template changes the text of answer turn {which}, so that answer cannot be "
                            f"marked for training and is not learned",
                 "check the model's chat template (it may strip or rewrite answers, e.g. reasoning blocks), or "
                 "choose a model whose template keeps answers as written", "warning", kind="answer not trained on")


def _tokenize_full(messages: list[dict], tokenizer: Any) -> tuple[list[int], list[int], list[int]]:
    """(ids, mask, indices of assistant turns that could not be marked)."""
    eos = tokenizer.eos_token_id
    if len(messages) == 1 and messages[0]["role"] == "assistant":  # "text" format: learn all of it
        ids = list(tokenizer(messages[0]["content"], add_special_tokens=False)["input_ids"])
        ids += [eos] if eos is not None else []
        return ids, [1] * len(ids), []
    full, messages = render_chat(tokenizer, messages)
    enders = sorted(_special_tokens(tokenizer) | set(TURN_ENDS), key=len, reverse=True)
    spans, pos, closed, unmarked = [], 0, True, []
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        before = render_chat(tokenizer, messages[:i], add_generation_prompt=True)[0]
        hint = len(before) if full.startswith(before) else pos
        start = full.find(msg["content"], max(hint, pos))
        if start < 0:
            start = full.find(msg["content"], pos)
        if start < 0:  # the template rewrote the content; nothing safe to mark
            unmarked.append(i)
            continue
        end = start + len(msg["content"])
        gap = len(full[end:]) - len(full[end:].lstrip())
        closer = next((t for t in enders if full.startswith(t, end + gap)), None)
        closed = closer is not None
        if closed:
            end += gap + len(closer)
        spans.append((start, end))
        pos = end
    ids, mask = _mark_spans(full, spans, tokenizer)
    if spans and not closed and eos is not None:  # the final answer is left open: add eos so it learns to stop
        ids.append(eos)
        mask.append(1)
    return ids, mask, unmarked


def _mark_spans(text: str, spans: list[tuple[int, int]], tokenizer: Any) -> tuple[list[int], list[int]]:
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        mask = [int(any(s < e2 and e > s2 for s2, e2 in spans)) for s, e in enc["offset_mapping"]]
        return ids, mask
    # slow tokenizers have no offsets: tokenize the pieces between span edges separately
    ids, mask, cut = [], [], 0
    for s, e in spans + [(len(text), len(text))]:
        for piece, flag in ((text[cut:s], 0), (text[s:e], 1)):
            if piece:
                toks = tokenizer(piece, add_special_tokens=False)["input_ids"]
                ids += toks
                mask += [flag] * len(toks)
        cut = e
    return ids, mask


def _special_tokens(tokenizer: Any) -> set[str]:
    toks = set(getattr(tokenizer, "all_special_tokens", []) or [])
    for t in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
        if getattr(t, "special", False):
            toks.add(str(t.content))
    if tokenizer.eos_token:
        toks.add(tokenizer.eos_token)
    return {t for t in toks if t}


@dataclass
class TokenStats:
    lengths: list[int]        # tokens per example before truncation
    trained_tokens: int       # assistant tokens left after truncation (what the loss sees)
    total_tokens: int         # all tokens after truncation
    max_length: int
    n_over: int               # examples longer than max_length (they get cut)
    pct_over: float
    p50: int
    p95: int
    max: int
    n_no_target: int = 0      # examples whose answer is cut away entirely: they teach nothing
    issues: list = field(default_factory=list)  # answers the chat template rewrote (not trained on)
    n_found: int = 0          # examples whose every answer the assistant mask finds (the template preflight)
    missed_rows: list = field(default_factory=list)  # row numbers of the others

    @property
    def pct_found(self) -> float:
        return 100.0 * self.n_found / max(len(self.lengths), 1)

    def histogram(self, bins: int = 30) -> tuple[list[int], list[float]]:
        counts, edges = np.histogram(self.lengths or [0], bins=bins)
        return counts.tolist(), edges.tolist()


def token_stats(examples: list[list[dict]], tokenizer: Any, max_length: int, rows: list[int] | None = None
                ) -> TokenStats:
    """Lengths and trained tokens of `examples`; `rows` (their row numbers in the file) name rows in the issues."""
    lengths, trained, total, no_target, issues, missed = [], 0, 0, 0, [], []
    for k, msgs in enumerate(examples):
        ids, mask, unmarked = _tokenize_full(msgs, tokenizer)
        if unmarked:
            issues.append(_unmarked_issue(unmarked, rows[k] if rows else k + 1))
        if unmarked or not any(mask):  # a template that drops or rewrites answers (Unsloth #11321): nothing learnt
            missed.append(rows[k] if rows else k + 1)
        lengths.append(len(ids))
        kept = sum(mask[:max_length])
        trained += kept
        total += min(len(ids), max_length)
        no_target += kept == 0
    n_over = sum(n > max_length for n in lengths)
    arr = np.array(lengths or [0])
    return TokenStats(lengths, trained, total, max_length, n_over, 100.0 * n_over / max(len(lengths), 1),
                      int(np.percentile(arr, 50)), int(np.percentile(arr, 95)), int(arr.max()), no_target, issues,
                      len(examples) - len(missed), missed)


def sample_examples(examples: list, rows: list[int], k: int | None = None, seed: int = 0) -> tuple[list, list[int]]:
    """(examples, their row numbers): all of them, or k (default TOKEN_SAMPLE) picked by `Reservoir(k, seed)`,
    the same each time, in file order."""
    k = TOKEN_SAMPLE if k is None else k
    if len(examples) <= k:
        return examples, rows
    res = Reservoir(k, seed)
    while (i := res.next) < len(examples):  # jumps straight to the items it keeps: O(k log(n/k)) steps
        res.put(i, (examples[i], rows[i]))
    picked = res.items()
    return [e for e, _ in picked], [r for _, r in picked]


class Reservoir:
    """A uniform random sample of at most k items from a stream whose length is not known until it ends, the same
    for the same seed (Li's Algorithm L, 1994: reservoir sampling that draws O(k log(n/k)) random numbers instead
    of one per item, so a 1.9 M-row stream costs one integer compare a row).

    Offer item i (0, 1, 2, ... in stream order) only when `i == res.next`: `res.put(i, item)`; skipped items need
    no call. `items()` gives the sample in stream order."""

    def __init__(self, k: int, seed: int = 0):
        self.k = k
        self.next = 0 if k > 0 else math.inf  # index of the next item that goes in
        self._rng = random.Random(seed)  # random.Random(int) does not depend on PYTHONHASHSEED
        self._kept: list[tuple[int, Any]] = []
        self._w = 1.0

    def put(self, i: int, item: Any) -> None:
        assert i == self.next, (i, self.next)
        if len(self._kept) < self.k:
            self._kept.append((i, item))
            if len(self._kept) < self.k:
                self.next = i + 1
                return
        else:
            self._kept[self._rng.randrange(self.k)] = (i, item)
        # W is the largest of k uniform keys held; the gap to the next item whose key beats it is geometric
        self._w *= math.exp(math.log(self._u()) / self.k)
        gap = math.floor(math.log(self._u()) / math.log1p(-self._w)) if self._w < 1.0 else 0
        self.next = i + 1 + gap

    def items(self) -> list:
        return [item for _, item in sorted(self._kept, key=lambda t: t[0])]

    def _u(self) -> float:
        """Uniform in (0, 1): log() of it is finite."""
        while (u := self._rng.random()) == 0.0:
            pass
        return u


# --- preference pairs --------------------------------------------------------------------------

@dataclass
class PreferenceTokenStats:
    """TokenStats of prompt + chosen and of prompt + rejected under the chat template (the two sequences
    DPO scores for each pair; each is cut at max_length)."""
    chosen: TokenStats
    rejected: TokenStats
    max_length: int

    @property
    def n(self) -> int:
        return len(self.chosen.lengths)

    @property
    def n_over(self) -> int:
        """Pairs with either side longer than max_length."""
        return sum(max(a, b) > self.max_length for a, b in zip(self.chosen.lengths, self.rejected.lengths))

    @property
    def pair_lengths(self) -> list[int]:
        """The longer side of each pair."""
        return [max(a, b) for a, b in zip(self.chosen.lengths, self.rejected.lengths)]

    @property
    def issues(self) -> list[Issue]:
        return self.chosen.issues + self.rejected.issues

    @staticmethod
    def side(s: TokenStats) -> dict:
        """count, mean, median, p95, max and how many exceed max_length, of one side."""
        return {"n": len(s.lengths), "mean": float(np.mean(s.lengths)) if s.lengths else 0.0, "p50": s.p50,
                "p95": s.p95, "max": s.max, "n_over": s.n_over}


def preference_token_stats(examples: list[dict], tokenizer: Any, max_length: int, rows: list[int] | None = None
                           ) -> PreferenceTokenStats:
    """Token lengths of prompt + chosen and prompt + rejected, as token_stats measures SFT examples (the
    chat template rendered by render_chat); `rows` name the file's rows in the issues."""
    chosen = token_stats([e["prompt"] + e["chosen"] for e in examples], tokenizer, max_length, rows)
    rejected = token_stats([e["prompt"] + e["rejected"] for e in examples], tokenizer, max_length, rows)
    return PreferenceTokenStats(chosen, rejected, max_length)
