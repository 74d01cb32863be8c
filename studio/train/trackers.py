"""Experiment trackers: `train.report_to` handed to TrainingArguments' own `report_to`, so transformers' callbacks
(TensorBoard, MLflow, W&B, Trackio) log what the Trainer logs; the studio adds no logger of its own, and the run
folder (metrics.jsonl, status.json) stays its record either way.

Offline by default: every tracker writes under the run folder unless the user's environment says otherwise
(WANDB_MODE=offline, MLflow's file store, Trackio's SQLite). The variables are set in the trainer process only
(`prepare`, from the recipe), never in the UI's, which only checks that the package is installed."""
from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

log = logging.getLogger("studio.train")

TRACKERS = ("none", "tensorboard", "mlflow", "wandb", "trackio")
# the package each needs (transformers' TensorBoard callback takes tensorboardX as well)
PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "mlflow": ("mlflow",), "wandb": ("wandb",),
            "trackio": ("trackio",)}
TENSORBOARD_DIR = "tensorboard"  # RUN/tensorboard/events.out.tfevents.*
MLFLOW_DIR = "mlruns"            # RUN/mlruns/<experiment>/<run>/
TRACKIO_DIR = "trackio"          # RUN/trackio/*.db


def missing(name: str) -> str | None:
    """The sentence saying how to install tracker `name` when its package is not importable here; None when it is
    (or for none)."""
    pkgs = PACKAGES.get(name)
    if not pkgs or any(importlib.util.find_spec(p) is not None for p in pkgs):
        return None
    return (f"Experiment tracker (train.report_to) is {name}, but the {pkgs[0]} package is not installed: run "
            f"`pip install {pkgs[0]}` (every tracker: `pip install -e '.[trackers]'` in the studio's folder), or set "
            f"Experiment tracker to none.")


def require_installed(name: str) -> None:
    """ValueError with `missing`'s sentence: called before a run starts, so a tracker that is not there is refused
    in words instead of failing the run at its first step."""
    problem = missing(name)
    if problem:
        raise ValueError(problem)


def environment(name: str, run_dir: Path, environ=None) -> dict[str, str]:
    """The variables tracker `name` needs so that it writes under run_dir and sends nothing anywhere; a variable the
    user set already is kept (WANDB_MODE=online, a MLflow tracking server, TRACKIO_DIR)."""
    environ = os.environ if environ is None else environ
    run_dir = Path(run_dir).resolve()
    wanted = {
        # transformers 5 has no TrainingArguments.logging_dir: its TensorBoard callback reads this, else it writes
        # into output_dir (RUN/checkpoints/runs/...), among the checkpoints. Always the run's own folder.
        "tensorboard": {"TENSORBOARD_LOGGING_DIR": str(run_dir / TENSORBOARD_DIR)},
        "wandb": {"WANDB_MODE": "offline", "WANDB_DIR": str(run_dir)},  # RUN/wandb/offline-run-*; `wandb sync` it
        # MLflow 3.18 refuses a file store unless allowed ("maintenance mode"; its sqlite backend needs sqlalchemy):
        # the flag goes only with the file URI the studio chose
        "mlflow": {"MLFLOW_TRACKING_URI": (run_dir / MLFLOW_DIR).as_uri(), "MLFLOW_ALLOW_FILE_STORE": "true"},
        "trackio": {"TRACKIO_DIR": str(run_dir / TRACKIO_DIR)},
    }.get(name, {})
    if name == "mlflow" and environ.get("MLFLOW_TRACKING_URI"):
        return {}  # the user's server (or store), with the user's own settings
    keep_user = {"WANDB_MODE", "WANDB_DIR", "TRACKIO_DIR"}
    return {k: v for k, v in wanted.items() if not (k in keep_user and environ.get(k))}


def arguments(name: str, run_dir: Path) -> dict:
    """The TrainingArguments fields of the tracker: report_to, and the run folder's name as the run's name in the
    tracker (W&B, MLflow and Trackio show it)."""
    if name == "none":
        return {"report_to": []}
    extra = {"project": "qlora-studio"} if name == "trackio" else {}  # Trackio's project; the others have their own
    return {"report_to": [name], "run_name": Path(run_dir).name, **extra}


def prepare(name: str, run_dir: Path) -> dict[str, str]:
    """In the trainer process, before the Trainer is built (the TensorBoard callback reads its folder when it is
    made, Trackio its folder when first imported): refuse a tracker that is not installed, set the variables,
    and say in train.log where the tracker writes. Returns what was set."""
    if name == "none":
        return {}
    require_installed(name)
    env = environment(name, run_dir)
    os.environ.update(env)
    log.info("Experiment tracker %s: %s.", name, where(name, run_dir))
    return env


def where(name: str, run_dir: Path) -> str:
    """Where tracker `name` writes and how to look at it, in words (for train.log)."""
    run_dir = Path(run_dir).resolve()
    if name == "tensorboard":
        return f"`tensorboard --logdir {os.environ.get('TENSORBOARD_LOGGING_DIR') or run_dir / TENSORBOARD_DIR}`"
    if name == "wandb":
        mode = os.environ.get("WANDB_MODE") or "offline"
        folder = Path(os.environ.get("WANDB_DIR") or run_dir) / "wandb"
        return f"{mode} mode, files in {folder}" + (" (`wandb sync` uploads them)" if mode == "offline" else "")
    if name == "mlflow":
        uri = os.environ.get("MLFLOW_TRACKING_URI") or (run_dir / MLFLOW_DIR).as_uri()
        return f"tracking URI {uri} (`mlflow ui --backend-store-uri {uri}`)"
    if name == "trackio":
        folder = os.environ.get("TRACKIO_DIR") or run_dir / TRACKIO_DIR
        return f"runs in {folder} (`TRACKIO_DIR={folder} trackio show`)"
    return name
