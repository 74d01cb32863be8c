"""Sweeps: a grid of settings queued as runs, and the table that finds the best of them by morning.

A sweep is up to two fields of the typed config with 2-5 values each, at most 12 runs. Every grid point is built as
a RunConfig (so validated) before anything is queued; each run is an ordinary run folder, named after its values
("my-run lr=2e-4 r=16") and grouped by {"sweep": {"id", "values"}} in its run.json. The runs train one after
another through the queue (studio.runs.queue). The table ranks them by best eval loss (or, where the runs
evaluated their checks after training, by the mean check score of the tuned model); "train the best longer"
queues the winner's config again with more steps. A search over ranges (`trials`) is studio.runs.tune (Optuna).
"""
from __future__ import annotations

import itertools
import json
import math
import time
from dataclasses import fields
from pathlib import Path

from ..config import RunConfig
from ..config.fields import TYPES, is_num, sci
from ..config.run import _SECTIONS, field_meta
from ..env.io import write_text
from ..env.paths import runs_root
from . import events
from .layout import CONFIG, RUN_INFO, is_run, run_info

MAX_RUNS = 12
MAX_FIELDS = 2
VALUES = (2, 5)  # values per field: fewer is no sweep, more is a search (`--trials`)
# fields a sweep may vary: numeric or a choice, in the sections that decide what is learnt; not the plumbing
# (how often to log, save or evaluate, how many GPUs or threads), whose values change no result worth ranking
_SECTION_NAMES = ("lora", "train", "data", "model")
_PLUMBING = {"logging_steps", "eval_steps", "save_steps", "save_total_limit", "threads", "devices", "overfit_evals",
             "checks_eval_rows", "report_to", "distributed", "early_stopping_patience", "early_stopping_min_delta",
             "stage", "format", "trust_remote_code", "eval_fraction"}
SHORT = {"learning_rate": "lr", "r": "r", "alpha": "alpha", "dropout": "dropout", "epochs": "ep", "max_steps": "steps",
         "batch_size": "bs", "grad_accum": "ga", "max_length": "len", "warmup_ratio": "warmup", "dpo_beta": "beta",
         "weight_decay": "wd", "lr_scheduler": "sched", "neftune_noise_alpha": "neftune", "grpo_beta": "kl",
         "grpo_temperature": "temp", "grpo_generations": "gens", "max_grad_norm": "clip"}


def sweep_fields() -> list[tuple[str, str]]:
    """(dotted key, label) of every field a sweep may vary, in the config's order."""
    out = []
    for sect in _SECTION_NAMES:
        for f in fields(_SECTIONS[sect]):
            meta = f.metadata
            kind = TYPES.get(f.type)
            if "label" not in meta or f.name in _PLUMBING or kind is list:
                continue
            if kind in (int, float) or (kind is str and meta.get("choices")) or kind is bool:
                out.append((f"{sect}.{f.name}", meta["label"]))
    return out


def fmt(v) -> str:
    """A value as run names and tables show it: 2e-4, not 0.0002; 16, not 16.0."""
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e6:
        return str(int(v))
    if isinstance(v, float) and v != 0 and abs(v) < 1e-2:
        return sci(v, 7)  # all of a typed value's digits: two grid points never share a name
    return f"{v:g}" if isinstance(v, float) else str(v)


def parse_value(key: str, text) -> object:
    """One value of a sweep field as its type (the config then checks its range); ValueError naming the field."""
    sect, name = key.split(".", 1)
    meta = field_meta(sect, name)
    kind = TYPES[next(f.type for f in fields(_SECTIONS[sect]) if f.name == name)]
    s = str(text).strip()
    try:
        if kind is bool:
            if s.lower() not in ("true", "false", "on", "off", "yes", "no", "1", "0"):
                raise ValueError
            return s.lower() in ("true", "on", "yes", "1")
        if kind is int:
            f = float(s)
            if not f.is_integer():
                raise ValueError
            return int(f)
        if kind is float:
            f = float(s)
            if not math.isfinite(f):
                raise ValueError
            return f
    except ValueError:
        raise ValueError(f"{meta['label']} ({key}): '{s[:40]}' is not {'a whole number' if kind is int else 'a number'}"
                         f"{'' if kind is not bool else ' (true or false)'}.") from None
    return s


def sweepable(key: str, done: str = "swept") -> None:
    """ValueError unless `key` is a setting a sweep or search may vary (sweep_fields)."""
    if key not in dict(sweep_fields()):
        raise ValueError(f"{key} cannot be {done}: pick a numeric or choice setting such as train.learning_rate, "
                         f"lora.r, train.epochs, lora.dropout, train.max_length or train.dpo_beta.")


def parse_axes(specs: dict) -> dict[str, list]:
    """{dotted key: [values]} from {key: [texts]} (the UI) or {key: "v1,v2"} (the CLI's --set), checked: at most
    two fields, each a sweep field with 2-5 distinct values, at most 12 runs in all."""
    allowed = dict(sweep_fields())
    axes: dict[str, list] = {}
    for key, vals in specs.items():
        sweepable(key)
        texts = [t for t in (vals.split(",") if isinstance(vals, str) else vals) if str(t).strip() != ""]
        values = list(dict.fromkeys(parse_value(key, t) for t in texts))
        lo, hi = VALUES
        if not lo <= len(values) <= hi:
            raise ValueError(f"{allowed[key]} ({key}) has {len(values)} distinct value(s): a sweep tries {lo} to {hi} "
                             f"values of a field.")
        axes[key] = values
    if not axes:
        raise ValueError("Pick a setting to sweep and 2 to 5 values of it.")
    if len(axes) > MAX_FIELDS:
        raise ValueError(f"A sweep varies at most {MAX_FIELDS} settings at a time ({len(axes)} given): fix the others "
                         f"to the values you trust, then sweep.")
    n = math.prod(len(v) for v in axes.values())
    if n > MAX_RUNS:
        raise ValueError(f"That grid is {n} runs; a sweep queues at most {MAX_RUNS}: give fewer values.")
    return axes


def grid(cfg: RunConfig, axes: dict[str, list]) -> list[tuple[dict, RunConfig]]:
    """Every grid point as (its values, its RunConfig named after them); ValueError naming the point that the
    config refuses, before anything is made."""
    out = []
    keys = list(axes)
    for combo in itertools.product(*(axes[k] for k in keys)):
        values = dict(zip(keys, combo))
        label = point_label(values)
        try:
            run_cfg = point(cfg, values)
            run_cfg.ready_to_train()
        except ValueError as e:
            raise ValueError(f"Sweep point {label}: {e} Nothing was queued.") from None
        out.append((values, run_cfg))
    return out


def point_label(values: dict) -> str:
    """"lr=2e-4 r=16": what a run of a sweep is named after."""
    return " ".join(f"{SHORT.get(k.split('.', 1)[1], k.split('.', 1)[1])}={fmt(v)}" for k, v in values.items())


def point(cfg: RunConfig, values: dict, prefix: str = "") -> RunConfig:
    """cfg with the dotted settings of `values` changed, named "<cfg.name> <prefix><label>" (validated)."""
    changes: dict[str, dict] = {}
    for k, v in values.items():
        sect, name = k.split(".", 1)
        changes.setdefault(sect, {})[name] = v
    return cfg.replace(name=f"{cfg.name} {prefix}{point_label(values)}", **changes)


def queue_sweep(cfg: RunConfig, axes: dict[str, list], root=None) -> tuple[str, list[Path]]:
    """Validate every grid point, then create and queue its runs in grid order, grouped by one sweep id; a worker
    trains them. (sweep id, run folders)."""
    from .create import create_run
    from .queue import enqueue, ensure_worker, fingerprint
    points = grid(cfg, axes)
    sid = new_id()
    made = []
    seen = (cfg.data.path, fingerprint(cfg.data.path))  # every point reads the same file: hashed once
    for values, point in points:
        run_dir = create_run(point, root)
        tag(run_dir, sid, values, cfg.name)
        enqueue(run_dir, root, seen)
        made.append(run_dir)
    ensure_worker(root)
    return sid, made


def new_id() -> str:
    import secrets
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def tag(run_dir: Path, sid: str, values: dict, base: str) -> None:
    """Mark a run as a member of sweep `sid` with its values (run.json's "sweep")."""
    info = run_info(run_dir)
    write_text(Path(run_dir) / RUN_INFO, json.dumps({**info, "sweep": {"id": sid, "base": base, "values": values}},
                                                    indent=1))


def sweeps(root=None) -> list[dict]:
    """[{"id", "base", "keys", "runs": [run folders in grid order]}], newest first."""
    found: dict[str, dict] = {}
    for d in sorted(runs_root(root).iterdir()):
        sw = run_info(d).get("sweep") if is_run(d) else None
        if isinstance(sw, dict) and isinstance(sw.get("id"), str):
            s = found.setdefault(sw["id"], {"id": sw["id"], "base": sw.get("base", ""), "keys": [], "runs": []})
            s["runs"].append(d)
            for k in sw.get("values") or {}:
                if k not in s["keys"]:
                    s["keys"].append(k)
    return sorted(found.values(), key=lambda s: s["id"], reverse=True)


def find_sweep(sid: str, root=None) -> dict:
    for s in sweeps(root):
        if s["id"] == sid or s["id"].startswith(sid):
            return s
    raise ValueError(f"No sweep '{sid}' under {runs_root(root)}: `studio sweep --list` names them.")


def check_score(run_dir: Path) -> float | None:
    """The mean check score of the tuned model in the run's newest evaluation (its checks after training), or None."""
    from ..evals.evaluate import latest_eval
    ev = latest_eval(run_dir)
    if not ev:
        return None
    sides = list(ev["sides"].values())
    means = [s.get("mean") for s in sides[-1].values()] if sides else []  # the tuned side is the right one
    means = [m for m in means if is_num(m) and math.isfinite(m)]
    return sum(means) / len(means) if means else None


def table(sweep: dict) -> list[dict]:
    """One row per run of the sweep, best first: id, name, its values, state, best eval loss, check score,
    tokens/s, wall s and "winner" (the best finished or stopped run). Ranked by check score where every run that
    has a result has one, else by best eval loss; runs without a result last, in grid order."""
    from .results import compare
    _, rows = compare(sweep["runs"])
    out = []
    for d, row in zip(sweep["runs"], rows):
        values = (run_info(d).get("sweep") or {}).get("values") or {}
        out.append({"id": d.name, "name": row["name"], **{k: values.get(k) for k in sweep["keys"]},
                    # the lowest eval loss logged, whether or not a checkpoint kept it
                    "state": row["state"], "best eval loss": row["lowest eval loss"], "check score": check_score(d),
                    "tokens/s": row["tokens/s"], "wall s": row["wall s"], "winner": False})
    scored = [r for r in out if r["check score"] is not None]
    by_checks = bool(scored) and all(r["check score"] is not None for r in out if r["best eval loss"] is not None)

    def key(r):
        if by_checks:
            return (r["check score"] is None, -(r["check score"] or 0.0))
        return (r["best eval loss"] is None, r["best eval loss"] or 0.0)
    out.sort(key=key)
    done = [r for r in out if r["state"] in ("finished", "stopped") and
            (r["check score"] if by_checks else r["best eval loss"]) is not None]
    if done:
        done[0]["winner"] = True
    return out


def winner(sweep: dict) -> Path | None:
    rows = [r for r in table(sweep) if r["winner"]]
    return runs_root_of(sweep) / rows[0]["id"] if rows else None


def runs_root_of(sweep: dict) -> Path:
    return Path(sweep["runs"][0]).parent


def train_longer(sweep: dict, steps: int, root=None) -> tuple[Path, int]:
    """Queue the sweep winner's config again with `steps` optimiser steps (a new run, named "<winner> longer");
    (run folder, queue position). RunError/ValueError when there is no winner yet or steps is not a whole number
    above 0."""
    from .lock import RunError
    from .queue import queue_run
    best = winner(sweep)
    if best is None:
        raise RunError("No run of this sweep has finished with an eval loss yet: wait for one, then train the best "
                       "longer.")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"Steps must be a whole number above 0 (got {steps!r}).")
    cfg = RunConfig.load(best / CONFIG)
    longer = cfg.replace(name=f"{cfg.name} longer", train={"max_steps": steps})
    return queue_run(longer, root)


def active(sweep: dict) -> bool:
    """Whether any run of the sweep still waits or trains."""
    from .process import status
    return any(status(d).get("state") in events.ACTIVE_STATES for d in sweep["runs"])
