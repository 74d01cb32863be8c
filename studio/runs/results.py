"""What runs have to show: the best adapter by eval loss, the runs compared, the list of runs, and deleting and
finding one. Read from the run folders only."""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from ..config import RunConfig, config_diff
from ..env.paths import runs_root
from . import events
from .layout import (ADAPTER, CONFIG, FINAL, RUN_INFO, STATUS, adapter_choices, checkpoint_step, checkpoints,
                     has_adapter, is_run, run_info)
from .lock import RunError
from .process import status, trainer_pid


def final_loss(run_dir: Path) -> tuple[float | None, float | None]:
    """(last train loss, last eval loss) from events.jsonl."""
    losses = events.loss_series(run_dir)
    return losses.last_train, losses.last_eval


@dataclass(frozen=True)
class Best:
    """The run's adapter with the lowest eval loss: `name` is what the pickers offer ("adapter" or
    "checkpoint-N"); `last` says it is also the run's newest adapter (so there is nothing to choose)."""
    name: str
    step: int
    eval_loss: float
    last: bool


def best_adapter(run_dir: Path, losses: events.Losses | None = None, st: dict | None = None,
                 ckpts: list[Path] | None = None) -> Best | None:
    """Among the adapters on disk measured on the held-out rows (a checkpoint at a step with an eval, the final
    adapter when the run's last step has one), the lowest eval loss; None when none was measured. `losses`,
    `st` (the run's status) and `ckpts` (its checkpoints) when the caller has them already."""
    evals = dict((losses or events.loss_series(run_dir)).eval)
    if not evals:
        return None
    found = {checkpoint_step(c): c.name for c in (checkpoints(run_dir) if ckpts is None else ckpts)}
    st = status(run_dir) if st is None else st
    final_step = st.get("step") if st.get("state") in ("finished", "stopped") and has_adapter(
        Path(run_dir) / ADAPTER) else None
    if isinstance(final_step, int):
        found[final_step] = FINAL  # the same weights as a checkpoint at that step: the final adapter's name wins
    measured = [(evals[s], s, n) for s, n in found.items() if s in evals]
    if not measured:
        return None
    loss, step, name = min(measured)
    return Best(name, step, loss, last=step == max(found))


def best_at(best: Best | None) -> str | None:
    """Where a run's best adapter is, in words: "final (step 8)" or "step 4 (checkpoint)"; None when none."""
    if best is None:
        return None
    return f"final (step {best.step})" if best.name == FINAL else f"step {best.step} (checkpoint)"


def adapter_options(run_dir: Path | None) -> tuple[list[tuple[str, str]], str | None]:
    """(label, value) pairs for a picker of the run's adapters, the best one marked, and the default value:
    the best adapter when it is not the newest, else the newest."""
    if not run_dir:
        return [], None
    names = adapter_choices(run_dir)
    best = best_adapter(Path(run_dir))
    opts = []
    for n in names:
        label = "adapter (final)" if n == FINAL else n
        if best and n == best.name:
            label += f" ★ best {best.eval_loss:.3f}"  # short: read whole in the pickers (★ = lowest eval loss)
        opts.append((label, n))
    default = best.name if best and not best.last and best.name in names else (names[0] if names else None)
    return opts, default


def _summary(run_dir: Path) -> dict:
    """The trainer's last "summary" event (wall time, tokens/s, peak memory), or {} before the run ends."""
    found = [e for e in events.read_metrics_events(run_dir) if e.get("kind") == "summary"]
    return found[-1] if found else {}


_RESULTS = ("step", "final train loss", "final eval loss", "best eval loss", "best at", "lowest eval loss", "tokens/s",
            "wall s", "peak memory GB")


def compare(run_dirs: list[Path]) -> tuple[list[str], list[dict]]:
    """(the settings that differ between the runs, one row per run, in the order given): each row has id, name,
    state, the differing settings' values, final and best eval loss (the best kept adapter's), best step, the lowest
    eval loss logged, tokens/s, wall time, peak memory and "error": None. A run whose config.yaml cannot be read
    does not stop the others: its row has state "unreadable", None for every value and "error" (a sentence naming
    the file); its settings take no part in the differences."""
    cfgs, rows = [], []
    for d in map(Path, run_dirs):
        try:
            cfg = RunConfig.load(d / CONFIG)
            source = run_info(d).get("source_data")
            if isinstance(source, str) and source:  # not the run's own copy of the data: every run has its own
                cfg = cfg.replace(data={"path": source})
        except (ValueError, OSError) as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            first = first.removeprefix(f"{d / CONFIG}: ")  # RunConfig.load names the file; the sentence does
            first = first if len(first) <= 200 else first[:200] + "…"  # a YAML error can quote a long line
            cfgs.append(None)
            rows.append({**dict.fromkeys(_RESULTS), "id": d.name, "name": d.name, "state": "unreadable", "error":
                         f"{d / CONFIG} cannot be read ({first}); fix or replace it to compare this run."})
            continue
        cfgs.append(cfg)
        rows.append(_compare_row(d, cfg))
    keys = config_diff([c for c in cfgs if c is not None])
    for row, cfg in zip(rows, cfgs):
        flat = cfg.flat() if cfg is not None else {}
        row.update({k: flat.get(k) for k in keys})
    return keys, rows


def _compare_row(d: Path, cfg: RunConfig) -> dict:
    losses, st, summ = events.loss_series(d), status(d), _summary(d)
    best = best_adapter(d, losses, st)
    wall = summ.get("wall_s")
    if wall is None and isinstance(st.get("started"), (int, float)):
        wall = round(float(st.get("updated", time.time())) - st["started"], 1)
    return {"id": d.name, "name": cfg.name, "state": st.get("state", "unknown"), "step": st.get("step"),
            "final train loss": losses.last_train, "final eval loss": losses.last_eval,
            "best eval loss": best.eval_loss if best else None, "best at": best_at(best),
            # the lowest eval loss logged, kept by a checkpoint or not (a sweep ranks by it: studio.runs.sweep)
            "lowest eval loss": losses.best_eval[1] if losses.best_eval else None,
            "tokens/s": summ.get("tokens_per_s", st.get("tokens_per_s")), "wall s": wall,
            "peak memory GB": summ.get("peak_memory_gb", st.get("peak_memory_gb")), "error": None}


def run_folders(root: str | Path | None = None) -> list[Path]:
    """The run folders under the runs root, newest first (their names start with their creation time)."""
    return [d for d in sorted(runs_root(root).iterdir(), reverse=True) if is_run(d)]


def list_runs(root: str | Path | None = None) -> list[dict]:
    """Newest first: id, name, state, step, final losses, whether an adapter exists, the best adapter."""
    out = []
    for d in run_folders(root):
        st = status(d)
        info = run_info(d)
        losses, ckpts = events.loss_series(d), checkpoints(d)  # read once for the row and its best adapter
        out.append({"id": d.name, "name": info.get("name", d.name), "state": st.get("state", "unknown"),
                    "step": st.get("step"), "max_steps": st.get("max_steps"), "loss": losses.last_train,
                    "eval_loss": losses.last_eval,
                    "adapter": has_adapter(d / ADAPTER), "n_checkpoints": len(ckpts),
                    "best": best_adapter(d, losses, st, ckpts),
                    "created": info.get("created"), "path": str(d), "error": st.get("error")})
    return out


@dataclass(frozen=True)
class Preferred:
    """The run a picker starts on: its folder (as list_runs gives it) and why, for the picker's label
    ("best eval loss 2.04 of 3 runs": of the 3 runs scored on the same held-out rows; "" when it is the newest)."""
    path: str
    why: str


def _held_out_key(path: str) -> tuple | None:
    """What makes two runs' eval losses comparable: the same stage, base model, data file, held-out fraction and
    seed (the same held-out rows scored by the same kind of loss). None when the config does not read."""
    try:
        cfg = RunConfig.load(Path(path) / CONFIG)
    except (ValueError, OSError):
        return None
    source = run_info(Path(path)).get("source_data") or cfg.data.path
    return (cfg.train.stage, cfg.model.source, source, cfg.train.eval_fraction, cfg.train.seed)


def preferred_run(listed: list[dict]) -> Preferred | None:
    """The run to offer first among `listed` (list_runs rows, newest first): of the finished or stopped runs whose
    eval loss is comparable with the newest run's (_held_out_key), the one with the lowest best eval loss; else the
    newest. A run on other data is never preferred over the newest: its eval loss is on other rows."""
    if not listed:
        return None
    newest = listed[0]
    key = _held_out_key(newest["path"])
    done = [r for r in listed if r["state"] in ("finished", "stopped") and r.get("best") is not None]
    same = [r for r in done if key is not None and _held_out_key(r["path"]) == key]
    if not same:
        return Preferred(newest["path"], "")
    best = min(same, key=lambda r: r["best"].eval_loss)  # min keeps the newest of equal losses: listed newest first
    if len(same) == 1 and best is newest:
        return Preferred(newest["path"], "")  # nothing was compared: "best of 1" says nothing
    loss = f"{best['best'].eval_loss:.3g}"
    if len(same) == 1:  # the newer runs on these rows have no eval yet (one trains, or stopped before its first)
        return Preferred(best["path"], f"eval loss {loss}, the only one measured")
    # short: the pickers are half the page wide; the pickers' help says "of N runs" counts runs on the same rows
    return Preferred(best["path"], f"best eval loss {loss} of {len(same)} runs")


def preferred_choice(choices: list[tuple[str, str]], listed: list[dict]) -> tuple[list[tuple[str, str]], str | None]:
    """A run picker's (label, run folder) choices with the reason added to the preferred run's label (★ best eval
    loss ...), and the folder to select: preferred_run among the runs offered, None when there are none. `listed`:
    the list_runs rows the choices were made from (the picker has them; listing again reads every run twice)."""
    offered = {p for _, p in choices}
    pref = preferred_run([r for r in listed if r["path"] in offered])
    if pref is None:
        return choices, (choices[0][1] if choices else None)
    marked = [(f"{label} ★ {pref.why}" if p == pref.path and pref.why else label, p) for label, p in choices]
    return marked, pref.path


def delete_run(run_dir: Path, root: str | Path | None = None) -> None:
    """Delete a run folder: only one the studio made (config.yaml plus run.json or status.json) directly under
    the runs root, never the current directory or a folder holding it, never a run that trains, never through a
    link (it would delete the run it points to, maybe not the one meant)."""
    if Path(run_dir).is_symlink():
        raise RunError(f"{run_dir} is a link to {Path(run_dir).resolve()}; nothing deleted. Delete that run by its "
                       f"own folder or id, or remove just the link with `rm {run_dir}`.")
    run_dir = Path(run_dir).resolve()
    cwd = Path.cwd().resolve()
    if run_dir == cwd or run_dir in cwd.parents:
        raise RunError(f"{run_dir} is the current directory or holds it; nothing deleted. Change to another "
                       f"directory first.")
    base = runs_root(root).resolve()
    made = is_run(run_dir) and ((run_dir / RUN_INFO).is_file() or (run_dir / STATUS).is_file())
    if run_dir.parent != base or not made:
        raise RunError(f"{run_dir} is not a run folder under {base}; nothing deleted. Only runs that `studio runs "
                       f"list` shows can be deleted.")
    st = status(run_dir)
    if st.get("state") in events.ACTIVE_STATES and trainer_pid(st) is not None:
        raise RunError(f"Run '{run_dir.name}' is training: stop it before deleting it.")
    shutil.rmtree(run_dir)


def rename_run(run_dir: Path, name: str) -> str:
    """Give a run another name (run.json's: what the lists, pickers and exports show; its folder keeps its id).
    ValueError for an empty or over-long name. The name it now has."""
    import json

    from ..env.io import write_text
    name = " ".join(str(name or "").split())
    if not name:
        raise ValueError("Type a new name for the run first.")
    if len(name) > 120:
        raise ValueError(f"A run name is at most 120 characters ({len(name)} given).")
    if not is_run(run_dir):
        raise RunError(f"{run_dir} is not a run folder.")
    write_text(Path(run_dir) / RUN_INFO, json.dumps({**run_info(run_dir), "name": name}, indent=1))
    return name


def find_run(ref: str, root: str | Path | None = None) -> Path:
    """A run by folder path or by id (folder name) under the runs root."""
    p = Path(ref).expanduser()
    if is_run(p):
        return p
    q = runs_root(root) / ref
    if is_run(q):
        return q
    raise RunError(f"No run '{ref}': give a run folder or an id from `studio runs list`.")
