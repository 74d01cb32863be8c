"""Human judgements of a run's answers, kept in its run folder as training data for a later preference run
(studio.runs.followups). The Chat tab writes them through here; the run folder's owner keeps their format.

Two files, both append-only JSON lines (one flushed write per judgement, never rewritten):
- `preferences.jsonl`: blind A/B votes, TRL's conversational preference format (prompt / chosen / rejected) plus
  what was compared: {"prompt": [{"role", "content"}, ...], "chosen": [{"role": "assistant", "content"}] | null,
  "rejected": [...] | null, "vote": "a" | "b" | "tie" | "both_bad", "models": [label shown as A, label shown as
  B], "chosen_model", "rejected_model" (labels or null), "edited": bool, "settings": {GenSettings fields},
  "seed": int, "time": unix seconds, "source": "chat" | "heldout"}. A tie or "both bad" is kept for the win
  rates but has no chosen/rejected: a DPO run reads only the lines that have both.
- `feedback.jsonl`: a thumbs up/down on one answer, KTO's unpaired format: {"prompt": [...], "completion":
  [{"role": "assistant", "content"}], "label": bool, "model", "settings", "seed", "time"}.

Win rates come with a Wilson score interval: with 10 decided votes, 7 wins is 40–89 % at 95 %, so a handful of
votes says little, and the interval says so. No gradio, no torch here.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..config import GenSettings
from ..env.io import read_json_lines
from .layout import FEEDBACK, PREFERENCES, is_run

VOTES = ("a", "b", "tie", "both_bad")
SOURCES = ("chat", "heldout")
ROLES = ("system", "user", "assistant")
Z95 = 1.959963984540054  # the standard normal's 97.5 % quantile: a two-sided 95 % interval


# --- checking what is written ------------------------------------------------------------------------

def _run_dir(run_dir: str | Path) -> Path:
    p = Path(run_dir)
    if not p.is_dir() or not is_run(p):
        raise ValueError(f"{p} is not a run folder (no config.yaml there): votes are saved with the run whose adapter "
                         f"was judged; pick a run first.")
    return p


def _prompt(messages: Any) -> list[dict]:
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError("The prompt must be a non-empty list of {'role', 'content'} messages.")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ValueError(f"Prompt message {i + 1} must be {{'role': one of {', '.join(ROLES)}, 'content': text}}, "
                             f"not {m!r}.")
        out.append({"role": m["role"], "content": m["content"]})
    if out[-1]["role"] != "user":
        raise ValueError(f"The prompt must end with the user's turn (the answers reply to it), not with a "
                         f"'{out[-1]['role']}' message.")
    return out


def _answer(text: Any, what: str) -> str:
    if not isinstance(text, str):
        raise ValueError(f"{what} must be text, not {type(text).__name__}.")
    return text


def _label(name: Any, what: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{what} needs a name (the label its pane showed after the vote).")
    return name.strip()


def _settings(settings: Any) -> dict:
    """GenSettings fields as a dict: from a GenSettings, a dict of its fields (checked by GenSettings itself), or
    None for the defaults."""
    if settings is None:
        settings = GenSettings()
    elif isinstance(settings, dict):
        unknown = sorted(set(settings) - {f.name for f in dataclasses.fields(GenSettings)})
        if unknown:
            raise ValueError(f"Unknown generation setting(s): {', '.join(unknown)}.")
        settings = GenSettings(**settings)
    elif not isinstance(settings, GenSettings):
        raise ValueError(f"settings must be GenSettings or a dict of its fields, not {type(settings).__name__}.")
    return dataclasses.asdict(settings)


def _seed(seed: Any) -> int:
    # inf and nan first: int() of them raises OverflowError / ValueError of its own, not this sentence
    if isinstance(seed, bool) or not isinstance(seed, (int, float)) or not math.isfinite(seed) \
            or seed != int(seed) or seed < 0:
        raise ValueError(f"The seed must be a whole number of 0 or more, not {seed!r}.")
    return int(seed)


def _turn(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def _append(path: Path, record: dict) -> None:
    """One line, one write, flushed to disk. A line torn by an earlier crash is closed with a newline first, so
    this one stays whole; an exclusive flock (where fcntl exists) keeps two browsers' votes from interleaving."""
    data = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
    with open(path, "a+b") as f:
        try:
            import fcntl
            fcntl.flock(f, fcntl.LOCK_EX)
        except ImportError:
            pass
        if f.seek(0, os.SEEK_END) > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                data = b"\n" + data
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


# --- votes ----------------------------------------------------------------------------------------

def append_vote(run_dir: str | Path, prompt_messages: list[dict], answer_a: str, answer_b: str, model_a: str,
                model_b: str, vote: str, edited_answer: str | None = None, settings: GenSettings | dict | None = None,
                seed: int = 0, source: str = "chat") -> dict:
    """Append one blind A/B vote to `run_dir`/preferences.jsonl and return the line written (a dict).

    vote: "a" or "b" (that answer is chosen, the other rejected), "tie" or "both_bad" (no pair: chosen and rejected
    are null). edited_answer: the user's improved version of the better answer, for an "a"/"b" vote only; it
    becomes the chosen text and "edited" is true (blank or the very same text: not an edit). model_a/model_b: the
    labels the panes revealed. ValueError, before anything is written, for any input that does not fit."""
    folder = _run_dir(run_dir)
    prompt = _prompt(prompt_messages)
    answer_a, answer_b = _answer(answer_a, "Answer A"), _answer(answer_b, "Answer B")
    model_a, model_b = _label(model_a, "Model A"), _label(model_b, "Model B")
    if model_a == model_b:
        raise ValueError(f"The two sides must be different models (both are '{model_a}').")
    if vote not in VOTES:
        raise ValueError(f"A vote is one of {', '.join(VOTES)}, not {vote!r}.")
    if source not in SOURCES:
        raise ValueError(f"The source of a vote is one of {', '.join(SOURCES)}, not {source!r}.")
    if edited_answer is not None and not isinstance(edited_answer, str):
        raise ValueError(f"The improved answer must be text, not {type(edited_answer).__name__}.")
    edited_text = (edited_answer or "").strip()
    if edited_text and vote not in ("a", "b"):
        raise ValueError("An improved answer replaces the better of the two: vote 'A is better' or 'B is better' "
                         "with it, or clear it to vote a tie or both bad.")
    chosen = rejected = chosen_model = rejected_model = None
    edited = False
    if vote in ("a", "b"):
        (chosen, chosen_model), (rejected, rejected_model) = (
            ((answer_a, model_a), (answer_b, model_b)) if vote == "a" else ((answer_b, model_b), (answer_a, model_a)))
        if edited_text and edited_text != chosen.strip():
            chosen, edited = edited_text, True
    record = {"prompt": prompt, "chosen": _turn(chosen) if chosen is not None else None,
              "rejected": _turn(rejected) if rejected is not None else None, "vote": vote,
              "models": [model_a, model_b], "chosen_model": chosen_model, "rejected_model": rejected_model,
              "edited": edited, "settings": _settings(settings), "seed": _seed(seed), "time": time.time(),
              "source": source}
    _append(folder / PREFERENCES, record)
    return record


def read_votes(run_dir: str | Path) -> list[dict]:
    """The run's votes in the order cast ([] when none); a torn last line is skipped."""
    return [v for v in read_json_lines(Path(run_dir) / PREFERENCES) if v.get("vote") in VOTES]


def preference_pairs(votes: Iterable[dict]) -> list[dict]:
    """The votes a DPO run can learn from: those with a chosen and a rejected answer (ties and both-bad left out)."""
    return [v for v in votes if v.get("chosen") and v.get("rejected")]


# --- win rates ------------------------------------------------------------------------------------

def wilson(wins: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson score interval for a proportion wins/n (None when n is 0): unlike p ± z·sqrt(p(1-p)/n) it stays
    inside [0, 1] and is not zero-width at 0 or n wins, which matters for the few votes a person casts."""
    if n <= 0:
        return None
    p = wins / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def win_rates(votes: Iterable[dict], first: str | Iterable[str] | None = None) -> list[dict]:
    """One summary per unordered pair of models that were compared, in the order the pairs first appear:
    {"model", "other", "wins" (of model), "losses" (= wins of other), "ties", "both_bad", "decided" (wins +
    losses), "n" (all votes on the pair), "win_rate" (wins / decided, None when nothing was decided), "ci"
    ((low, high) Wilson 95 % interval of win_rate, or None)}.

    Which side is "model": a label in `first` (e.g. the adapter being judged) when the pair has one, else the side
    with more wins (the alphabetically first on a draw)."""
    firsts = {first} if isinstance(first, str) else set(first or ())
    pairs: dict[frozenset, dict] = {}
    for v in votes:
        models = v.get("models")
        if not (isinstance(models, (list, tuple)) and len(models) == 2 and models[0] != models[1]):
            continue
        c = pairs.setdefault(frozenset(models), {"wins": {m: 0 for m in sorted(models)}, "ties": 0, "both_bad": 0})
        kind = v.get("vote")
        if kind in ("a", "b"):
            c["wins"][models[0] if kind == "a" else models[1]] += 1
        elif kind == "tie":
            c["ties"] += 1
        elif kind == "both_bad":
            c["both_bad"] += 1
    out = []
    for c in pairs.values():
        (x, wx), (y, wy) = c["wins"].items()  # alphabetical
        if (y in firsts and x not in firsts) or (not (x in firsts) ^ (y in firsts) and wy > wx):
            (x, wx), (y, wy) = (y, wy), (x, wx)
        decided = wx + wy
        out.append({"model": x, "other": y, "wins": wx, "losses": wy, "ties": c["ties"], "both_bad": c["both_bad"],
                    "decided": decided, "n": decided + c["ties"] + c["both_bad"],
                    "win_rate": wx / decided if decided else None, "ci": wilson(wx, decided)})
    return out


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def win_rate_line(r: dict) -> str:
    """E.g. "adapter vs base: adapter wins 7 of 10 decided votes (70%, 95% CI 40–89%); 2 ties, 1 both bad"."""
    head = f"{r['model']} vs {r['other']}: "
    if r["decided"]:
        lo, hi = r["ci"]
        head += (f"{r['model']} wins {r['wins']} of {_count(r['decided'], 'decided vote', 'decided votes')} "
                 f"({r['win_rate']:.0%}, 95% CI {lo * 100:.0f}–{hi:.0%})")
    else:
        head += "no decided votes yet"
    rest = [s for n, s in ((r["ties"], _count(r["ties"], "tie", "ties")), (r["both_bad"], f"{r['both_bad']} both bad"))
            if n]
    return head + (f"; {', '.join(rest)}" if rest else "")


def win_rate_text(votes: Iterable[dict], first: str | Iterable[str] | None = None) -> str:
    """One line per pair of models compared (win_rate_line), or "No votes yet."."""
    lines = [win_rate_line(r) for r in win_rates(votes, first)]
    return "\n".join(lines) if lines else "No votes yet."


# --- single answers -------------------------------------------------------------------------------

def append_feedback(run_dir: str | Path, prompt_messages: list[dict], answer: str, model: str, liked: bool,
                    settings: GenSettings | dict | None = None, seed: int = 0) -> dict:
    """Append a thumbs up (liked=True) or down on one answer to `run_dir`/feedback.jsonl, in KTO's unpaired format
    ({"prompt", "completion", "label"} plus model, settings, seed and time); returns the line written."""
    folder = _run_dir(run_dir)
    if not isinstance(liked, bool):
        raise ValueError(f"liked must be True or False, not {liked!r}.")
    record = {"prompt": _prompt(prompt_messages), "completion": _turn(_answer(answer, "The answer")), "label": liked,
              "model": _label(model, "The answer's model"), "settings": _settings(settings), "seed": _seed(seed),
              "time": time.time()}
    _append(folder / FEEDBACK, record)
    return record


def read_ratings(run_dir: str | Path) -> list[dict]:
    """The run's thumbs up/down lines in order ([] when none); a torn last line is skipped."""
    return [f for f in read_json_lines(Path(run_dir) / FEEDBACK) if isinstance(f.get("label"), bool)]


__all__ = ["VOTES", "SOURCES", "append_vote", "read_votes", "preference_pairs", "wilson",
           "win_rates", "win_rate_line", "win_rate_text", "append_feedback", "read_ratings"]
