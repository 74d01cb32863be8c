"""The trainer's events into the run folder: metrics.jsonl and status.json (through studio.runs.events), stop
requests, the best checkpoint, the overfitting alert and early stopping."""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

from ..env import ranks
from ..runs import events

log = logging.getLogger("studio.metrics")


@dataclass
class TokenCounter:
    """Tokens the trainer saw (input) and trained on (labelled), counted by the stage's trainer glue."""
    input_tokens: int = 0
    trained_tokens: int = 0


def make_callback(run_dir: Path, stop_requested, token_counter, overfit_evals: int = 0, patience: int = 0,
                  min_delta: float = 0.0, logged: dict | None = None):
    """A transformers TrainerCallback that writes metrics.jsonl / status.json and honours stop requests.

    `stop_requested()` -> bool (signal or STOP file); `token_counter` has .input_tokens and .trained_tokens.
    After each evaluation in training: a new lowest eval loss gets a checkpoint at that step (so the best
    checkpoint always exists, and save_total_limit never prunes it: transformers keeps its
    best_model_checkpoint); an overfitting alert (`Losses.overfitting(overfit_evals)`) becomes an "overfit"
    event; with `patience` > 0, that many evaluations without an improvement of more than `min_delta` end
    training (an "early_stop" event; the callback's `early_stop` holds it for the trainer's last words).
    `logged`: TRL log keys -> metrics.jsonl keys the stage logs beyond the loss (studio.stages).
    """
    from transformers import TrainerCallback

    cls = type("StudioCallback", (RunEvents, TrainerCallback), {})
    return cls(run_dir, stop_requested, token_counter, overfit_evals, patience, min_delta, logged)


class RunEvents:
    """What the trainer's events write to the run folder (made a transformers TrainerCallback by make_callback, so
    this module loads without transformers). See make_callback."""

    def __init__(self, run_dir: Path, stop_requested, token_counter, overfit_evals: int = 0, patience: int = 0,
                 min_delta: float = 0.0, logged: dict | None = None):
        self.run_dir = Path(run_dir)
        self.stop_requested = stop_requested
        self.counter = token_counter
        self.overfit_evals, self.patience, self.min_delta = overfit_evals, patience, min_delta
        self.logged = logged or {}
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
        save, stop = self._after_eval(state) if ranks.is_main() else (False, False)
        # the ranks of a multi-process run save and stop together, as rank 0 (which reads the losses) says
        save, stop = (bool(v) for v in ranks.from_main([save, stop]))
        control.should_save = control.should_save or save
        control.should_training_stop = control.should_training_stop or stop
        return control

    def _after_eval(self, state) -> tuple[bool, bool]:
        """(save a checkpoint now, stop training now) after an evaluation during training; writes the alerts."""
        losses = events.loss_series(self.run_dir)
        if not losses.eval or losses.eval[-1][0] != state.global_step:
            return False, False
        save = stop = False
        step = state.global_step
        best_step, best = losses.best_eval
        if best_step == step:
            save = True  # the best checkpoint exists, whatever Checkpoint every N says
        alert = losses.overfitting(self.overfit_evals)
        if alert and alert["best_step"] != self.alerted_for:
            self.alerted_for = alert["best_step"]
            events.append_metrics(self.run_dir, {"kind": "overfit", **alert, "time": time.time()})
            log.warning("Overfitting: the eval loss has risen %d evaluations in a row (now %.4f at step %d) "
                        "while the train loss still falls. It was lowest at step %d (%.4f); that checkpoint "
                        "is kept.", alert["rises"], alert["eval_loss"], step, best_step, best)
        if self.patience > 0 and losses.evals_without_improvement(self.min_delta) >= self.patience:
            stop = True
            self.early_stop = {"kind": "early_stop", "step": step, "best_step": best_step,
                               "best_eval_loss": best, "patience": self.patience,
                               "min_delta": self.min_delta}
            events.append_metrics(self.run_dir, {**self.early_stop, "time": time.time()})
            log.info("Early stopping at step %d: the eval loss has not improved for %d evaluations "
                     "(best %.4f at step %d).", step, self.patience, best, best_step)
        return save, stop

    def on_train_begin(self, args, state, control, **kw):
        self.training = True
        self.t0 = time.time()
        self.step0 = state.global_step
        self.tokens0 = self.counter.input_tokens
        events.write_status(self.run_dir, "running", step=state.global_step, max_steps=state.max_steps,
                            pid=os.getpid(), started=events.read_status(self.run_dir).get("started") or self.t0)

    def on_step_end(self, args, state, control, **kw):
        if ranks.any_rank(self.stop_requested()) and not self.stopping:
            self.stopping = True
            control.should_training_stop = True
            control.should_save = True  # a checkpoint at this step, so resume continues from here
            events.write_status(self.run_dir, "stopping", step=state.global_step)
        return control

    def on_log(self, args, state, control, logs=None, **kw):
        # every rank logs at the same points: the group's token counts are summed here, on all of them
        tokens, trained = ranks.sum_ranks(self.counter.input_tokens, self.counter.trained_tokens)
        logs = dict(logs or {})
        if not ranks.is_main():  # rank 0 writes; a NaN (the same on every rank) ends each of them
            if "loss" in logs and not math.isfinite(float(logs["loss"])):
                raise events.NonFiniteLoss(state.global_step)
            return
        elapsed = time.time() - (self.t0 or time.time())
        done = state.global_step - self.step0
        if "eval_loss" in logs:
            events.append_metrics(self.run_dir, {"kind": "eval", "step": state.global_step, "epoch": state.epoch,
                                                 "eval_loss": logs["eval_loss"], **self._logged(logs, "eval_"),
                                                 "time": time.time()})
            st = events.read_status(self.run_dir)
            events.write_status(self.run_dir, st.get("state", "running"), eval_loss=logs["eval_loss"])
            return
        if "loss" not in logs:
            return  # the end-of-train summary; the last step was already logged
        loss = float(logs["loss"])
        rate = (tokens - self.tokens0) / elapsed if elapsed > 0 else 0.0
        eta = (state.max_steps - state.global_step) * elapsed / done if done > 0 else None
        ev = {"kind": "train", "step": state.global_step, "epoch": state.epoch, "loss": loss,
              "learning_rate": logs.get("learning_rate"), "grad_norm": logs.get("grad_norm"),
              "tokens_seen": tokens, "trained_tokens": trained, **self._logged(logs),
              "tokens_per_s": round(rate, 2), "elapsed_s": round(elapsed, 2),
              "eta_s": round(eta, 1) if eta is not None else None, "time": time.time()}
        events.append_metrics(self.run_dir, ev)
        state_name = "stopping" if self.stopping else "running"
        events.write_status(self.run_dir, state_name, step=state.global_step, max_steps=state.max_steps,
                            epoch=state.epoch, loss=loss, eta_s=ev["eta_s"], tokens_per_s=ev["tokens_per_s"])
        if not math.isfinite(loss):
            raise events.NonFiniteLoss(state.global_step)

    def _logged(self, logs: dict, prefix: str = "") -> dict:
        """What the stage logs beyond the loss (studio.stages: the DPO/KTO rewards), under metrics.jsonl's names."""
        return {(prefix + ours if prefix else ours): float(logs[prefix + theirs])
                for theirs, ours in self.logged.items() if prefix + theirs in logs}

