"""THE owner of the run folder. The UI and the CLI work through these functions; the only thing they share with the
trainer is the folder itself.

- layout: its file names, checkpoints, which adapter a reference means;
- events: metrics.jsonl and status.json (the trainer -> UI protocol);
- lock: one trainer per machine;
- create: a new run folder with its own copy of the data;
- process: start, stop, resume, the status, one run at a time;
- group: several processes for one run (accelerate / torchrun);
- results: the best adapter, comparing runs, listing, deleting;
- judgements: the Chat tab's votes and ratings of a run's answers;
- followups: DPO / KTO runs on those judgements;
- queue: runs that train later, one after another (a worker that outlives the UI server);
- sweep / tune: a grid of settings queued as runs and its ranked table; an Optuna search over ranges.
"""
from ..env.paths import runs_root
from .create import create_run, slug
from .followups import MIN_PAIRS, dpo_config, kto_config, launch_dpo, launch_kto
from .layout import *  # noqa: F403 — the run folder's names and path helpers are part of this package's API
from .layout import __all__ as _layout_names
from .lock import RunError, lock_holder, trainer_lock
from .process import (ENDING_WAIT_S, active_run, check_idle, check_output, launch, resume, start, status, stop,
                      train_command)
from .results import (Best, adapter_options, best_adapter, compare, delete_run, final_loss, find_run, list_runs,
                      rename_run)

__all__ = [*_layout_names, "runs_root", "slug", "create_run", "MIN_PAIRS", "dpo_config", "kto_config", "launch_dpo",
           "launch_kto", "RunError", "lock_holder", "trainer_lock", "ENDING_WAIT_S", "active_run", "check_idle",
           "check_output", "launch", "resume", "start", "status", "stop", "train_command", "Best", "adapter_options",
           "best_adapter", "compare", "delete_run", "final_loss", "find_run", "list_runs", "rename_run"]
