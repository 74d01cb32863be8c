"""The Train tab's list of earlier runs and their comparison: the runs table, several runs' losses on one chart,
and the settings that differ between runs next to their results."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from studio import runs
from studio.config import field_meta
from studio.config.fields import sci
from studio.runs.events import loss_series

from .. import charts
from .curves import PALETTE, empty_frame, loss_frame, readable

RUN_COLUMNS = ["name", "state", "step", "train loss", "eval loss", "best", "adapter", "id"]


def runs_frame(root: str | Path | None) -> pd.DataFrame:
    from studio.runs.queue import queued
    waiting = {d.name: i for i, d in enumerate(queued(root), 1)}  # "queued #2": its place in the queue
    rows = []
    for r in runs.list_runs(root):
        state = f"queued #{waiting[r['id']]}" if r["id"] in waiting else r["state"]
        rows.append({"name": r["name"], "state": state,
                     "step": f"{r['step'] or 0}/{r['max_steps'] or '?'}",
                     "train loss": round(r["loss"], 4) if isinstance(r["loss"], (int, float)) else None,
                     "eval loss": round(r["eval_loss"], 4) if isinstance(r["eval_loss"], (int, float)) else None,
                     "best": _best_label(r["best"]), "adapter": "yes" if r["adapter"] else "", "id": r["id"]})
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


def _best_label(best: runs.Best | None) -> str:
    if best is None:
        return ""
    return f"★ {'final' if best.name == runs.FINAL else best.name} ({best.eval_loss:.4f})"


def overlay_frame(run_ids: list[str] | None, root: str | Path | None) -> pd.DataFrame:
    """Train and eval loss of several runs: columns step, loss, run, series."""
    frames = []
    base = runs.runs_root(root)
    for rid in run_ids or []:
        lf = loss_frame(base / rid).dropna()
        if not lf.empty:
            frames.append(pd.DataFrame({"step": lf["step"], "loss": lf["loss"], "run": rid, "series": lf["series"]}))
    return (pd.concat(frames, ignore_index=True) if frames
            else empty_frame(step=float, loss=float, run=str, series=str))


def overlay_chart(run_ids: list[str] | None, root: str | Path | None):
    """Several runs on one chart: each run's train loss as a line, its eval losses as dots in the same colour."""
    series = []
    base = runs.runs_root(root)
    for i, rid in enumerate(run_ids or []):
        losses, color, name = loss_series(base / rid), PALETTE[i % len(PALETTE)], runs.run_name(base / rid)
        series += [charts.Series(f"{name} train", losses.train, color),
                   charts.Series(f"{name} eval", losses.eval, color, dots=True)]
    return readable(charts.figure(charts.Chart(series, y_title="loss", empty="Pick runs to compare.")))


# The result rows and which way is better: "min" marks the lowest value ★, "max" the highest; state is not ranked.
RESULTS = {"final eval loss": "min", "best eval loss": "min", "best at": None, "tokens/s": "max", "wall s": "min",
           "peak memory GB": "min", "state": None}


def compare_frame(run_ids: list[str] | None, root: str | Path | None) -> pd.DataFrame:
    """One column per run; rows: the settings that differ between them, then their results, the best value of each
    result marked ★ (its row says whether lowest or highest wins)."""
    if not run_ids or len(run_ids) < 2:
        return pd.DataFrame(columns=["", *(run_ids or [])])
    base = runs.runs_root(root)
    keys, rows = runs.compare([base / r for r in run_ids])
    names = [f"{i + 1}. {r['name']}" for i, r in enumerate(rows)]
    table = [[_setting_label(k), *(fmt_value(k, r[k]) for r in rows)] for k in keys]
    for k, way in RESULTS.items():
        cells = [fmt_value(k, r[k]) for r in rows]
        best = _winners([r[k] for r in rows], way)
        table.append([f"{k} (★ {'lowest' if way == 'min' else 'highest'})" if best else k,
                      *(c + " ★" if i in best else c for i, c in enumerate(cells))])
    if any(r.get("error") for r in rows):  # a run whose config does not read: said in its column, the others shown
        table.append(["problem", *(r.get("error") or "" for r in rows)])
    if not keys:
        table.insert(0, ["(settings)", *(["the same"] * len(rows))])
    return pd.DataFrame(table, columns=["", *names])


def _winners(values: list, way: str | None) -> set[int]:
    """The indexes of the best value (ties all marked); none when fewer than two runs have a value or all are equal:
    a ★ on every cell would say nothing."""
    nums = [(i, v) for i, v in enumerate(values) if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if way is None or len(nums) < 2 or len({v for _, v in nums}) == 1:
        return set()
    target = (min if way == "min" else max)(v for _, v in nums)
    return {i for i, v in nums if v == target}


def fmt_value(key: str, v) -> str:
    """One notation for the numbers of the runs table and the Compare table: losses to 4 decimals (as the run list,
    the log and the ★ best labels), learning rates as 2e-4 (as the form's help and the papers write them), other
    numbers to 4 significant digits."""
    if v is None:
        return ""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if key.endswith("learning_rate"):
        return sci(v)
    if "loss" in key:
        return f"{v:.4f}"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _setting_label(key: str) -> str:
    """"train.learning_rate" -> "Learning rate (train.learning_rate)": the form's label and the config's name."""
    parts = key.split(".")
    try:
        label = field_meta(parts[0], parts[1])["label"] if len(parts) == 2 else None
    except KeyError:
        label = None
    return f"{label} ({key})" if label else key
