"""What is in a run folder and where: its file names, its checkpoints, and which adapter a reference means.

Pure path logic: no torch, no subprocesses. The file a stage keeps its own copy of its data in is the stage's
(studio.stages: dataset.jsonl, pairs.jsonl, unpaired.jsonl).
"""
from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

from ..config import RunConfig
from ..env.io import read_json_dict
from ..models.weights import safetensors_problem

CONFIG = "config.yaml"          # the run's RunConfig; `studio train` reads it
DATASET = "dataset.jsonl"       # the validated, normalised examples ({"messages": [...]} per line)
EVAL_SET = "eval.jsonl"         # the held-out share of them
METRICS = "metrics.jsonl"       # one JSON event per log/eval/resume (studio.runs.events)
STATUS = "status.json"          # queued | running | stopping | stopped | finished | failed (studio.runs.events)
LOG = "train.log"               # the trainer's readable log
CONSOLE = "console.log"         # stdout/stderr of the trainer process, for crashes before logging starts
STOP_FILE = "STOP"              # a stop request any process can make: touch it, the trainer saves and ends
RUN_INFO = "run.json"           # name, creation time and data summary written when the run is created
TEMPLATE_COPY = "chat_template.jinja"  # the run's copy of a model.chat_template .jinja file
CHECKPOINTS = "checkpoints"     # checkpoints/checkpoint-N/: resumable trainer state + the adapter at step N
ADAPTER = "adapter"             # the final adapter (+ tokenizer + STUDIO_CONFIG)
EXPORTS = "exports"             # what studio.export writes
STUDIO_CONFIG = "studio_config.yaml"  # the run's config saved next to an adapter, so the adapter stands alone
ADAPTER_CONFIG = "adapter_config.json"
TRAINER_STATE = "trainer_state.json"  # transformers writes it last when saving a checkpoint
FINAL = "adapter"               # the name the pickers use for the final adapter
PREFERENCES = "preferences.jsonl"  # blind A/B votes from the Chat tab (studio.chat.judgements): DPO pairs, appended
FEEDBACK = "feedback.jsonl"     # thumbs up/down on single answers (studio.chat.judgements): KTO's unpaired format

# transformers' own PREFIX_CHECKPOINT_DIR pattern (trainer_utils.get_last_checkpoint); not imported from there
# because transformers.trainer_utils pulls in numpy and transformers.utils, and the UI polls this every 2 s.
_CKPT = re.compile(r"^checkpoint-(\d+)$")


def checkpoints(run_dir: str | Path, intact: bool = True) -> list[Path]:
    """Complete checkpoints, oldest first. Complete = trainer_state.json (resumable) and adapter_config.json
    (loadable) both written: a checkpoint cut short by a kill or a full disk is never offered. intact=True
    (the default) also leaves out one whose files are damaged (`is_intact`)."""
    folder = Path(run_dir) / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _CKPT.match(p.name)) and p.is_dir()
             and (p / TRAINER_STATE).is_file() and (p / ADAPTER_CONFIG).is_file()]
    return [p for _, p in sorted(found) if not intact or is_intact(p)]


def is_intact(ckpt: str | Path) -> bool:
    """Whether a checkpoint's files read back: trainer_state.json parses, the adapter's safetensors header
    parses and its data fits the file, and the torch files (optimizer, scheduler, RNG state) are whole zip
    archives. Cheap (headers and directory ends only): the UI calls it on every poll."""
    p = Path(ckpt)
    try:
        state = json.loads((p / TRAINER_STATE).read_text(encoding="utf-8"))
        if not isinstance(state, dict) or "global_step" not in state:
            return False
        weights = p / "adapter_model.safetensors"
        if weights.is_file() and safetensors_problem(weights) is not None:  # the one header check
            return False
        return all(zipfile.is_zipfile(f) for f in p.glob("*.pt*"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def checkpoint_processes(ckpt: str | Path) -> int | None:
    """How many processes wrote a checkpoint: transformers saves one rng_state_<rank>.pth per process of a
    multi-process run and a single rng_state.pth otherwise (Trainer._save_rng_state); None when neither is there."""
    ckpt = Path(ckpt)
    per_rank = len(list(ckpt.glob("rng_state_*.pth")))
    return per_rank or (1 if (ckpt / "rng_state.pth").is_file() else None)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = checkpoints(run_dir)
    return found[-1] if found else None


def checkpoint_step(path: str | Path) -> int:
    return int(_CKPT.match(Path(path).name).group(1))


def run_name(run_dir: str | Path) -> str:
    """The name the run was given: run.json's (what the run lists show), else its config's, else the folder's."""
    name = read_json_dict(Path(run_dir) / RUN_INFO).get("name")
    if isinstance(name, str) and name:
        return name
    try:
        return RunConfig.load(Path(run_dir) / CONFIG).name or Path(run_dir).name
    except (OSError, ValueError):
        return Path(run_dir).name


def run_info(run_dir: str | Path) -> dict:
    """run.json: name, creation time, the user's data file and its summary; {} when missing or unreadable."""
    return read_json_dict(Path(run_dir) / RUN_INFO)


def has_adapter(folder: str | Path) -> bool:
    return (Path(folder) / ADAPTER_CONFIG).is_file()


def is_run(folder: str | Path) -> bool:
    return (Path(folder) / CONFIG).is_file()


def adapter_choices(run_dir: str | Path) -> list[str]:
    """What a run offers to chat with or export: "adapter" (the final one) if saved, then checkpoint-N, newest
    first."""
    run_dir = Path(run_dir)
    final = [FINAL] if has_adapter(run_dir / ADAPTER) else []
    return final + [p.name for p in reversed(checkpoints(run_dir))]


def resolve_adapter(path: str | Path, checkpoint: str | None = None) -> tuple[Path, RunConfig | None, Path | None]:
    """(adapter folder, its RunConfig or None, run folder or None) for a run folder (+ "adapter" or
    "checkpoint-N") or an adapter folder (a run's adapter/, one of its checkpoints, or an extracted export zip).
    ValueError says what is missing."""
    adapter, run_dir = _find_adapter(Path(path).expanduser(), checkpoint)
    for f in (adapter / STUDIO_CONFIG, adapter / CONFIG, *((run_dir / CONFIG,) if run_dir else ())):
        if f.is_file():
            return adapter, RunConfig.load(f), run_dir
    return adapter, None, run_dir


def _find_adapter(path: Path, checkpoint: str | None) -> tuple[Path, Path | None]:
    if has_adapter(path):
        if checkpoint not in (None, "", FINAL):
            raise ValueError(f"{path} is an adapter folder; a checkpoint ('{checkpoint}') is chosen from a run folder.")
        # adapter/ and checkpoints/checkpoint-N/ live inside a run folder; an extracted export zip does not
        return path, next((p for p in (path.parent, path.parent.parent) if is_run(p)), None)
    if not is_run(path):
        raise ValueError(f"{path} is neither a run folder (with {CONFIG}) nor an adapter folder "
                         f"(with {ADAPTER_CONFIG}).")
    name = checkpoint or FINAL
    if name == FINAL:
        adapter = path / ADAPTER
    elif _CKPT.match(name):
        adapter = path / CHECKPOINTS / name
    else:
        raise ValueError(f"Checkpoint '{name}' is not known: use '{FINAL}' (the final one) or checkpoint-N "
                         f"({', '.join(adapter_choices(path)) or 'this run has none yet'}).")
    if not has_adapter(adapter):
        have = adapter_choices(path)
        raise ValueError(f"Run {path.name} has no '{name}' adapter yet"
                         + (f" (available: {', '.join(have)})" if have else "")
                         + ". Wait for the first checkpoint, or finish or stop the run first.")
    return adapter, path


__all__ = ["CONFIG", "DATASET", "EVAL_SET", "METRICS", "STATUS", "LOG", "CONSOLE",
           "STOP_FILE", "RUN_INFO", "CHECKPOINTS", "ADAPTER", "EXPORTS", "STUDIO_CONFIG", "ADAPTER_CONFIG",
           "TRAINER_STATE", "FINAL", "PREFERENCES", "FEEDBACK",
           "checkpoints", "is_intact", "latest_checkpoint", "checkpoint_step", "has_adapter", "is_run",
           "adapter_choices", "resolve_adapter", "run_name", "run_info"]
