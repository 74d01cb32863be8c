"""Where the studio keeps its things: the studio home ($STUDIO_HOME, else ~/.cache/qlora-studio), the demo model's
folder in it, and the runs root ($STUDIO_RUNS_DIR, else <home>/runs)."""
from __future__ import annotations

import os
from pathlib import Path

DEMO_NAME = "SmolLM2-135M-Instruct"


def studio_home() -> Path:
    return Path(os.environ.get("STUDIO_HOME") or Path.home() / ".cache" / "qlora-studio")


def demo_dir() -> Path:
    return studio_home() / "models" / DEMO_NAME


def runs_root(root: str | Path | None = None) -> Path:
    """The folder run folders live in (made if missing): `root`, else $STUDIO_RUNS_DIR, else <home>/runs."""
    p = Path(root or os.environ.get("STUDIO_RUNS_DIR") or studio_home() / "runs").expanduser()
    p.mkdir(parents=True, exist_ok=True)
    return p
