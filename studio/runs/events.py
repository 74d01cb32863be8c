"""The trainer -> UI protocol: append-only files in the run folder.

- metrics.jsonl: one flushed JSON object per event: {"kind": "train" | "eval" | "resume" | ..., "step", ...}
- status.json:   {"state": queued | running | stopping | stopped | finished | failed, ...}, replaced atomically
- train.log:     human-readable log lines (written by studio.train)

Only one process writes them: rank 0 of a multi-process run, or the only process (studio.env.ranks.is_main); the
rule lives in the writers here, so no caller can forget it. The trainer side (studio.train.callback) writes through
these functions; readers never need transformers.
"""
from __future__ import annotations

import json
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..env import procs, ranks
from ..env.io import atomic_write, read_json_dict, read_json_lines
from .layout import METRICS, STATUS

STATES = ("queued", "running", "stopping", "stopped", "finished", "failed")
ACTIVE_STATES = ("queued", "running", "stopping")


def append_metrics(run_dir: Path, event: dict) -> None:
    if not ranks.is_main():
        return
    line = json.dumps({k: _clean(v) for k, v in event.items()}, allow_nan=False)
    with open(Path(run_dir) / METRICS, "a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else str(v)
    return v


def read_metrics_events(run_dir: Path) -> list[dict]:
    """Events in order; a half-written last line (the trainer is mid-write) is ignored.

    A "resume" event at step N drops the earlier events above step N: they were logged after the
    checkpoint the run resumed from, and are being recomputed.
    """
    events: list[dict] = []
    for ev in read_json_lines(Path(run_dir) / METRICS):
        if ev.get("kind") == "resume":
            n = ev.get("step", 0)
            events = [e for e in events if e.get("step", 0) <= n]
        events.append(ev)
    return events


def read_metrics(run_dir: Path):
    """metrics.jsonl as a DataFrame with one row per train/eval event (columns: kind, step, loss, ...)."""
    import pandas as pd
    rows = [e for e in read_metrics_events(run_dir) if e.get("kind") in ("train", "eval")]
    cols = ["kind", "step", "epoch", "loss", "eval_loss", "learning_rate", "grad_norm", "tokens_seen",
            "trained_tokens", "tokens_per_s", "elapsed_s", "eta_s"]
    df = pd.DataFrame(rows)
    for c in cols:
        if c not in df.columns:
            df[c] = None
    return df


@dataclass
class Losses:
    """Train and eval loss by step, finite values only (a diverged step is left out, not drawn as inf)."""
    train: list[tuple[int, float]] = field(default_factory=list)
    eval: list[tuple[int, float]] = field(default_factory=list)

    @property
    def last_train(self) -> float | None:
        return self.train[-1][1] if self.train else None

    @property
    def last_eval(self) -> float | None:
        return self.eval[-1][1] if self.eval else None

    @property
    def best_eval(self) -> tuple[int, float] | None:
        """(step, eval loss) where the eval loss was lowest (the earliest such step on a tie)."""
        return min(self.eval, key=lambda p: p[1]) if self.eval else None

    def overfitting(self, rises: int) -> dict | None:
        """The overfitting alert, or None: the eval loss rose at each of the last `rises` evaluations while the
        train loss still fell (its mean over those evaluations' span is below its mean over as many points
        before the span). {"step", "eval_loss", "best_step", "best_eval_loss", "rises"}."""
        if rises < 1 or len(self.eval) < rises + 1:
            return None
        tail = self.eval[-(rises + 1):]
        if not all(b[1] > a[1] for a, b in zip(tail, tail[1:])):
            return None
        start, end = tail[0][0], tail[-1][0]
        during = [v for s, v in self.train if start < s <= end]
        before = [v for s, v in self.train if s <= start][-len(during):] if during else []
        if not before or sum(during) / len(during) >= sum(before) / len(before):
            return None
        best_step, best = self.best_eval
        return {"step": end, "eval_loss": tail[-1][1], "best_step": best_step, "best_eval_loss": best,
                "rises": rises}

    def evals_without_improvement(self, min_delta: float = 0.0) -> int:
        """How many evaluations in a row, up to the last, did not lower the best eval loss by more than
        `min_delta` (early stopping's patience counter)."""
        best, since = math.inf, 0
        for _, v in self.eval:
            if v < best - min_delta:
                best, since = v, 0
            else:
                since += 1
        return since


def loss_series(run_dir: Path, events: list[dict] | None = None) -> Losses:
    """The one reading of the loss curves: the Train tab's chart, the export's loss_curve.png, the run list's
    final losses and the trainer's last log line all come from here. `events`: read_metrics_events' result,
    when the caller has it already."""
    out = Losses()
    where = {"train": ("loss", out.train), "eval": ("eval_loss", out.eval)}
    for e in read_metrics_events(run_dir) if events is None else events:
        key, series = where.get(e.get("kind"), (None, None))
        if key is None:
            continue
        try:
            v = float(e.get(key))
        except (TypeError, ValueError):
            continue
        if math.isfinite(v) and isinstance(e.get("step"), int):
            series.append((e["step"], v))
    return out


_STATUS_LOCK = threading.Lock()  # the UI server runs events on several threads: one read-modify-write at a time


def write_status(run_dir: Path, state: str, **fields) -> dict:
    """Replace status.json with its fields updated. A `pid` is recorded with its process start time
    ("pid_started", None with no pid): a pid alone is not an identity once the process has ended (see
    studio.env.procs), and what stops a run or calls it alive checks both (studio.runs.process.trainer_pid)."""
    assert state in STATES, state
    if "pid" in fields:
        fields["pid_started"] = procs.started(fields["pid"])
    if not ranks.is_main():
        return {**read_status(run_dir), **fields, "state": state}
    with _STATUS_LOCK:
        status = {**read_status(run_dir), **fields, "state": state, "updated": time.time()}
        # a reader sees the old or the new file, never half of one; a removed run folder is not made again
        with atomic_write(Path(run_dir) / STATUS, mkdir=False) as f:
            f.write(json.dumps(status, indent=1))
    return status


def read_status(run_dir: Path) -> dict:
    return read_json_dict(Path(run_dir) / STATUS)


class NonFiniteLoss(RuntimeError):
    def __init__(self, step: int):
        super().__init__(
            f"The loss became NaN/infinite at step {step}. Lower the learning rate (try half), keep gradient "
            f"clipping on (1.0), and on float16 GPUs switch the compute dtype to bfloat16 or float32.")
