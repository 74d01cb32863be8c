"""A search over ranges instead of a grid: Optuna (an optional extra, `pip install 'qlora-studio[tune]'`) picks each
trial's settings with its TPE sampler and stops a trial whose eval loss is behind the median of the earlier trials at
the same step (its MedianPruner). Each trial is an ordinary run of a sweep (studio.runs.sweep), queued and trained
through the queue like any other; this process only asks Optuna, watches the run's eval losses and tells it back.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from ..config import RunConfig
from . import events
from .sweep import parse_value, point, point_label, sweepable, tag

MAX_TRIALS = 50
EXTRA = "pip install 'qlora-studio[tune]' (Optuna)"


def optuna_missing() -> str | None:
    """Why a search cannot run here, or None when Optuna imports."""
    try:
        import optuna  # noqa: F401
    except ImportError:
        return f"A search with trials needs Optuna, which is not installed: {EXTRA}. A grid (--set with values, no " \
               f"--trials) needs nothing."
    return None


def parse_ranges(specs: dict[str, str]) -> dict[str, tuple]:
    """{key: ("range", lo, hi, log) | ("choice", [values])} from the CLI's --set: "1e-5:1e-3" is a range (":log"
    appended, or a learning rate, or hi/lo of 100 and more, searches it on a log scale), "8,16,32" a choice."""
    out: dict[str, tuple] = {}
    for key, text in specs.items():
        sweepable(key, "searched")
        parts = text.split(":")
        if len(parts) in (2, 3):
            lo, hi = parse_value(key, parts[0]), parse_value(key, parts[1])
            if isinstance(lo, (bool, str)) or not lo < hi:
                raise ValueError(f"{key}={text}: a range is LOW:HIGH with LOW below HIGH (numbers).")
            log = (parts[2:] == ["log"]) or key.endswith("learning_rate") or (lo > 0 and hi / lo >= 100)
            if log and lo <= 0:
                raise ValueError(f"{key}={text}: a log-scale range starts above 0.")
            out[key] = ("range", lo, hi, log)
        else:
            values = list(dict.fromkeys(parse_value(key, t) for t in text.split(",") if t.strip()))
            if len(values) < 2:
                raise ValueError(f"{key}={text}: give a range LOW:HIGH or two or more values a,b.")
            out[key] = ("choice", values)
    if not out:
        raise ValueError("Give at least one --set KEY=LOW:HIGH (or KEY=a,b,c) to search.")
    return out


def _suggest(trial, key: str, spec: tuple):
    if spec[0] == "choice":
        return trial.suggest_categorical(key, spec[1])
    _, lo, hi, log = spec
    if isinstance(lo, int) and isinstance(hi, int):
        return trial.suggest_int(key, lo, hi, log=log)
    return trial.suggest_float(key, float(lo), float(hi), log=log)


def search(cfg: RunConfig, specs: dict[str, tuple], trials: int, root=None, say: Callable[[str], None] = print,
           poll: float = 1.0) -> tuple[str, list[Path]]:
    """Run `trials` trials one after another through the queue; (sweep id, run folders). Each trial's value is
    its best eval loss (a trial whose run logs no eval loss fails; the config needs eval_fraction and eval_steps)."""
    import optuna
    from optuna.trial import TrialState

    from .create import create_run
    from .queue import enqueue, ensure_worker
    from .sweep import new_id
    if not 1 <= trials <= MAX_TRIALS:
        raise ValueError(f"--trials must be 1 to {MAX_TRIALS} (got {trials}).")
    if cfg.train.eval_fraction <= 0:
        raise ValueError("A search ranks trials by eval loss: set train.eval_fraction above 0 (e.g. 0.1).")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize",
                                sampler=optuna.samplers.TPESampler(seed=cfg.train.seed),
                                # 2 finished trials before any pruning: a median of one trial is that trial
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=2))
    sid, made = new_id(), []
    for i in range(trials):
        trial = study.ask()
        values = {k: _suggest(trial, k, spec) for k, spec in specs.items()}
        label = point_label(values)
        run_dir = create_run(point(cfg, values, f"#{i + 1} "), root)
        tag(run_dir, sid, values, cfg.name)
        enqueue(run_dir, root)
        ensure_worker(root)
        made.append(run_dir)
        say(f"Trial {i + 1}/{trials}: {label} ({run_dir.name})")
        state, value = _follow(run_dir, trial, poll)
        if state == "pruned":
            study.tell(trial, state=TrialState.PRUNED)
            say("  pruned: its eval loss was behind the earlier trials' median at the same step.")
        elif value is None:
            study.tell(trial, state=TrialState.FAIL)
            say(f"  {state}, with no eval loss: {events.read_status(run_dir).get('error') or 'see its train.log'}")
        else:
            study.tell(trial, value)
            say(f"  {state}: best eval loss {value:.4f}")
    return sid, made


def _follow(run_dir: Path, trial, poll: float) -> tuple[str, float | None]:
    """Wait for a trial's run to end, reporting each new eval loss to Optuna and stopping the run when Optuna
    prunes it: ("pruned" | the run's final state, its best eval loss or None)."""
    from .process import status, stop
    from .queue import ensure_worker, position
    reported = 0
    while True:
        ensure_worker(Path(run_dir).parent)  # a worker that died (its machine's restart) is started again
        evals = events.loss_series(run_dir).eval
        for step, loss in evals[reported:]:
            trial.report(loss, step)
            reported += 1
            if trial.should_prune():
                stop(run_dir, wait=120)
                return "pruned", None
        st = status(run_dir).get("state")
        if st not in events.ACTIVE_STATES and position(run_dir, Path(run_dir).parent) is None:
            best = min((v for _, v in evals), default=None)
            return st or "unknown", best
        time.sleep(poll)
