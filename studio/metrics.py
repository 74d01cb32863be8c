"""The trainer -> UI protocol: append-only files in the run folder.

- metrics.jsonl: one flushed JSON object per event: {"kind": "train" | "eval" | "resume", "step", ...}
- status.json:   {"state": queued | running | stopping | stopped | finished | failed, ...}, replaced atomically
- train.log:     human-readable log lines (written by studio.train)

Readers never need transformers; `make_callback` imports it lazily for the trainer side.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import distributed
from .layout import LOG, METRICS, STATUS, STOP_FILE  # noqa: F401 — the run folder's names live in one place

STATES = ("queued", "running", "stopping", "stopped", "finished", "failed")
ACTIVE_STATES = ("queued", "running", "stopping")


def _writer() -> bool:
    """Only one process writes the run folder: rank 0 of a multi-process run (RANK is set by the launcher), or
    the only process. The rule lives here so no caller can forget it."""
    return os.environ.get("RANK", "0") in ("", "0")


def append_metrics(run_dir: Path, event: dict) -> None:
    if not _writer():
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
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    events: list[dict] = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            ev = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(ev, dict):
            continue
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
    assert state in STATES, state
    if not _writer():
        return {**read_status(run_dir), **fields, "state": state}
    path = Path(run_dir) / STATUS
    with _STATUS_LOCK:
        status = {**read_status(run_dir), **fields, "state": state, "updated": time.time()}
        # a temp name of its own (not one per pid: threads of one process would share it)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".status-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(json.dumps(status, indent=1))
            os.replace(tmp, path)  # atomic: a reader sees the old or the new file, never half of one
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return status


def read_status(run_dir: Path) -> dict:
    try:
        d = json.loads((Path(run_dir) / STATUS).read_text(encoding="utf-8"))
        return d if isinstance(d, dict) else {}
    except (OSError, json.JSONDecodeError):
        return {}


def make_callback(run_dir: Path, stop_requested, token_counter, overfit_evals: int = 0, patience: int = 0,
                  min_delta: float = 0.0):
    """A transformers TrainerCallback that writes metrics.jsonl / status.json and honours stop requests.

    `stop_requested()` -> bool (signal or STOP file); `token_counter` has .input_tokens and .trained_tokens.
    After each evaluation in training: a new lowest eval loss gets a checkpoint at that step (so the best
    checkpoint always exists, and save_total_limit never prunes it: transformers keeps its
    best_model_checkpoint); an overfitting alert (`Losses.overfitting(overfit_evals)`) becomes an "overfit"
    event; with `patience` > 0, that many evaluations without an improvement of more than `min_delta` end
    training (an "early_stop" event; the callback's `early_stop` holds it for the trainer's last words).
    """
    import logging

    from transformers import TrainerCallback

    run_dir = Path(run_dir)
    log = logging.getLogger("studio.metrics")

    class StudioCallback(TrainerCallback):
        def __init__(self):
            self.t0 = None
            self.step0 = 0
            self.tokens0 = 0
            self.stopping = False
            self.training = False
            self.alerted_for: int | None = None  # the best step the last alert named
            self.early_stop: dict | None = None

        def on_train_end(self, args, state, control, **kw):
            self.training = False

        def on_evaluate(self, args, state, control, metrics=None, **kw):
            if not self.training:
                return control
            save, stop = self._after_eval(state) if distributed.is_main() else (False, False)
            # the ranks of a multi-process run save and stop together, as rank 0 (which reads the losses) says
            save, stop = (bool(v) for v in distributed.from_main([save, stop]))
            control.should_save = control.should_save or save
            control.should_training_stop = control.should_training_stop or stop
            return control

        def _after_eval(self, state) -> tuple[bool, bool]:
            """(save a checkpoint now, stop training now) after an evaluation during training; writes the alerts."""
            losses = loss_series(run_dir)
            if not losses.eval or losses.eval[-1][0] != state.global_step:
                return False, False
            save = stop = False
            step = state.global_step
            best_step, best = losses.best_eval
            if best_step == step:
                save = True  # the best checkpoint exists, whatever Checkpoint every N says
            alert = losses.overfitting(overfit_evals)
            if alert and alert["best_step"] != self.alerted_for:
                self.alerted_for = alert["best_step"]
                append_metrics(run_dir, {"kind": "overfit", **alert, "time": time.time()})
                log.warning("Overfitting: the eval loss has risen %d evaluations in a row (now %.4f at step %d) "
                            "while the train loss still falls. It was lowest at step %d (%.4f); that checkpoint "
                            "is kept.", alert["rises"], alert["eval_loss"], step, best_step, best)
            if patience > 0 and losses.evals_without_improvement(min_delta) >= patience:
                stop = True
                self.early_stop = {"kind": "early_stop", "step": step, "best_step": best_step,
                                   "best_eval_loss": best, "patience": patience, "min_delta": min_delta}
                append_metrics(run_dir, {**self.early_stop, "time": time.time()})
                log.info("Early stopping at step %d: the eval loss has not improved for %d evaluations "
                         "(best %.4f at step %d).", step, patience, best, best_step)
            return save, stop

        def on_train_begin(self, args, state, control, **kw):
            self.training = True
            self.t0 = time.time()
            self.step0 = state.global_step
            self.tokens0 = token_counter.input_tokens
            write_status(run_dir, "running", step=state.global_step, max_steps=state.max_steps,
                         pid=os.getpid(), started=read_status(run_dir).get("started") or self.t0)

        def on_step_end(self, args, state, control, **kw):
            if distributed.any_rank(stop_requested()) and not self.stopping:
                self.stopping = True
                control.should_training_stop = True
                control.should_save = True  # a checkpoint at this step, so resume continues from here
                write_status(run_dir, "stopping", step=state.global_step)
            return control

        def on_log(self, args, state, control, logs=None, **kw):
            # every rank logs at the same points: the group's token counts are summed here, on all of them
            tokens, trained = distributed.sum_ranks(token_counter.input_tokens, token_counter.trained_tokens)
            logs = dict(logs or {})
            if not distributed.is_main():  # rank 0 writes; a NaN (the same on every rank) ends each of them
                if "loss" in logs and not math.isfinite(float(logs["loss"])):
                    raise NonFiniteLoss(state.global_step)
                return
            elapsed = time.time() - (self.t0 or time.time())
            done = state.global_step - self.step0
            if "eval_loss" in logs:
                append_metrics(run_dir, {"kind": "eval", "step": state.global_step, "epoch": state.epoch,
                                         "eval_loss": logs["eval_loss"], **_rewards(logs, "eval_"),
                                         "time": time.time()})
                st = read_status(run_dir)
                write_status(run_dir, st.get("state", "running"), eval_loss=logs["eval_loss"])
                return
            if "loss" not in logs:
                return  # the end-of-train summary; the last step was already logged
            loss = float(logs["loss"])
            rate = (tokens - self.tokens0) / elapsed if elapsed > 0 else 0.0
            eta = (state.max_steps - state.global_step) * elapsed / done if done > 0 else None
            ev = {"kind": "train", "step": state.global_step, "epoch": state.epoch, "loss": loss,
                  "learning_rate": logs.get("learning_rate"), "grad_norm": logs.get("grad_norm"),
                  "tokens_seen": tokens, "trained_tokens": trained, **_rewards(logs),
                  "tokens_per_s": round(rate, 2), "elapsed_s": round(elapsed, 2),
                  "eta_s": round(eta, 1) if eta is not None else None, "time": time.time()}
            append_metrics(run_dir, ev)
            state_name = "stopping" if self.stopping else "running"
            write_status(run_dir, state_name, step=state.global_step, max_steps=state.max_steps,
                         epoch=state.epoch, loss=loss, eta_s=ev["eta_s"], tokens_per_s=ev["tokens_per_s"])
            if not math.isfinite(loss):
                raise NonFiniteLoss(state.global_step)

    return StudioCallback()


# what TRL's DPOTrainer logs (rewards = beta * log-ratio of policy to reference) -> the names in metrics.jsonl
REWARDS = {"rewards/margins": "reward_margin", "rewards/accuracies": "reward_accuracy",
           "rewards/chosen": "reward_chosen", "rewards/rejected": "reward_rejected"}


def _rewards(logs: dict, prefix: str = "") -> dict:
    return {(prefix + ours if prefix else ours): float(logs[prefix + theirs])
            for theirs, ours in REWARDS.items() if prefix + theirs in logs}


class NonFiniteLoss(RuntimeError):
    def __init__(self, step: int):
        super().__init__(
            f"The loss became NaN/infinite at step {step}. Lower the learning rate (try half), keep gradient "
            f"clipping on (1.0), and on float16 GPUs switch the compute dtype to bfloat16 or float32.")
