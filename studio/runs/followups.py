"""Preference runs that follow an SFT run: DPO on the votes cast in its Chat tab (RUN/preferences.jsonl), KTO on its
👍/👎 ratings (RUN/feedback.jsonl), each continuing (and measured against) the SFT run's final adapter."""
from __future__ import annotations

from pathlib import Path

from .. import stages
from ..config import RunConfig
from .judgements import preference_pairs, read_ratings, read_votes
from .layout import ADAPTER, CONFIG, FEEDBACK, PREFERENCES, has_adapter, run_name
from .lock import RunError
from .process import launch


MIN_PAIRS = 4  # fewer decided votes (or ratings) than this teach DPO (KTO) nothing but noise


def _preference_base(run_dir: Path) -> RunConfig:
    """The SFT run a preference run starts from; RunError when it is not one, or has no final adapter."""
    cfg = RunConfig.load(run_dir / CONFIG)
    if stages.get(cfg.train.stage).frozen_reference:
        raise RunError(f"Run '{run_name(run_dir)}' is already a preference run: vote on its answers against the "
                       f"SFT run's instead, or start from this run in a config of your own.")
    if not has_adapter(run_dir / ADAPTER):
        raise RunError(f"Run '{run_name(run_dir)}' has no final adapter yet: finish or stop it first.")
    return cfg


def _preference_run(cfg: RunConfig, run_dir: Path, stage: str, data_file: str, **train) -> RunConfig:
    """The SFT run's config as a `stage` run on its own file `data_file`, continuing its final adapter: 3 epochs at
    batch 2 and the SFT run's learning rate (see dpo_config)."""
    return cfg.replace(name=f"{cfg.name} + {stage.upper()}", data={
        "path": str(run_dir / data_file), "format": "auto", "columns": {}, "skip_invalid": True},
        train={"stage": stage, "start_from": str(run_dir.resolve()), "epochs": 3.0, "max_steps": 0,
               "batch_size": 2, "grad_accum": 1, "packing": False, "eval_steps": 0, "early_stopping_patience": 0,
               **train})


def dpo_config(run_dir: str | Path) -> RunConfig:
    """A preference-tuning run on a run's own votes (RUN/preferences.jsonl, written by the Chat tab): stage dpo,
    starting from (and measured against) the run's final adapter, on the same base model and system prompt.
    The settings are for a few dozen pairs: 3 epochs at batch 2, the SFT run's learning rate, beta 0.1 and the DPO
    loss plus the chosen answers' LM loss (sigmoid+sft; on the demo model 16 such steps at the demo's 1e-3 moved a
    preferred opening from 0/20 to 20/20 held-out answers, tests/test_dpo.py)."""
    run_dir = Path(run_dir)
    cfg = _preference_base(run_dir)
    pairs = preference_pairs(read_votes(run_dir))
    if len(pairs) < MIN_PAIRS:
        raise RunError(f"{len(pairs)} vote(s) with a winner for run '{run_name(run_dir)}'; preference tuning needs at "
                       f"least {MIN_PAIRS} (A or B better; ties and both-bad do not count). Vote on more prompts.")
    return _preference_run(cfg, run_dir, "dpo", PREFERENCES, dpo_loss="sigmoid+sft",
                           eval_fraction=0.1 if len(pairs) >= 20 else 0.0)


def kto_config(run_dir: str | Path) -> RunConfig:
    """As dpo_config, on the run's 👍/👎 ratings (RUN/feedback.jsonl): stage kto, from the run's final adapter."""
    run_dir = Path(run_dir)
    cfg = _preference_base(run_dir)
    rated = read_ratings(run_dir)
    good = sum(f["label"] for f in rated)
    if len(rated) < MIN_PAIRS or good in (0, len(rated)):
        raise RunError(f"{len(rated)} rated answer(s) for run '{run_name(run_dir)}' ({good} 👍, "
                       f"{len(rated) - good} 👎); KTO needs at least {MIN_PAIRS}, with some of each. Rate more "
                       f"answers in the Chat tab.")
    return _preference_run(cfg, run_dir, "kto", FEEDBACK, eval_fraction=0.0)


def launch_kto(run_dir: str | Path, root: str | Path | None = None) -> Path:
    """Start a KTO run on the run's ratings (kto_config); returns the new run folder."""
    return launch(kto_config(run_dir), root if root is not None else Path(run_dir).parent)


def launch_dpo(run_dir: str | Path, root: str | Path | None = None) -> Path:
    """Start a DPO run on the run's votes (dpo_config); returns the new run folder. What "Train on my votes" does."""
    return launch(dpo_config(run_dir), root if root is not None else Path(run_dir).parent)


