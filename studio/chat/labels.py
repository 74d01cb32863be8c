"""Which base an adapter sits on and what it is called: the names the panes, the comparison and the votes show,
and the key that tells whether two adapters share one base in memory. Nothing is loaded or downloaded here."""
from __future__ import annotations

import json
import re
from pathlib import Path

from ..config import RunConfig
from ..runs.layout import ADAPTER, CHECKPOINTS, FINAL, resolve_adapter, run_name


def source_name(adapter: Path, cfg: RunConfig | None) -> str:
    """The base model as the run names it: its config's model source, else the adapter's base_model_name_or_path."""
    if cfg is not None:
        return cfg.model.source
    src = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not src:
        raise ValueError(f"{adapter}: no studio config and no base_model_name_or_path in adapter_config.json, "
                         f"so the base model is unknown.")
    return src


def base_source(adapter: Path, cfg: RunConfig | None) -> Path:
    from ..models import resolve_source
    return resolve_source(source_name(adapter, cfg))


def _local_source(source: str) -> Path | str:
    """Where resolve_source would find `source`, without downloading anything: the demo's folder, a local
    folder, a hub id's cached snapshot, else the hub id itself (not fetched yet)."""
    from ..config import DEMO_MODEL
    from ..env.paths import demo_dir
    source = (source or "").strip()
    if source == DEMO_MODEL:
        return demo_dir()
    p = Path(source).expanduser()
    if p.exists():
        return p
    try:
        from huggingface_hub import snapshot_download
        return Path(snapshot_download(source, local_files_only=True))
    except Exception:  # not cached (or not a hub id): the name is all there is to compare
        return source


def base_path(run_dir_or_adapter_dir: str | Path, checkpoint: str | None = None) -> str:
    """The base model's resolved path, as the first element of ChatEngine.load's key, read from the run's
    config without loading or downloading anything: two adapters with the same base_path share one base."""
    adapter, cfg, _ = resolve_adapter(run_dir_or_adapter_dir, checkpoint)
    return local_key(source_name(adapter, cfg))


def local_key(source: str) -> str:
    src = _local_source(source)
    return str(src.resolve()) if isinstance(src, Path) else src


def threads_for_chat(runs_root: str | Path | None = None) -> int:
    """1 while a run is training, else 0 (= torch's default, one thread per core).

    On a 2-core CPU a reply at the default competes with the trainer for both cores; at one thread the
    trainer keeps a core to itself, and the reply is slower, which is the better trade while a run goes."""
    from ..runs.process import active_run
    return 1 if active_run(runs_root) is not None else 0


# --- naming an adapter -----------------------------------------------------------------------------

def spec(run_dir: Path | None, adapter_dir: Path) -> tuple[Path | None, str]:
    adapter_dir = Path(adapter_dir)
    if run_dir is not None:
        if adapter_dir.name == ADAPTER and adapter_dir.parent == Path(run_dir):
            return Path(run_dir), FINAL
        if adapter_dir.parent.name == CHECKPOINTS:
            return Path(run_dir), adapter_dir.name
    return None, str(adapter_dir)


def adapter_label(run_dir: str | Path | None, adapter: str, with_id: bool = False) -> str:
    """A run's adapter as the panes and the comparison name it: "<run name> (final)" or "<run name>
    (checkpoint-N)"; with_id adds the run folder's name, for two runs with the same name; an adapter outside a
    run is named by its folder."""
    if run_dir is None:
        return Path(adapter).name or str(adapter)
    run_id = f" [{Path(run_dir).name}]" if with_id else ""
    return f"{run_name(run_dir)}{run_id} ({'final' if adapter in (FINAL, '', None) else adapter})"


def pair_labels(left: tuple, right: tuple) -> tuple[str, str]:
    """Two different names for two (run folder, adapter) sides: run names, then run ids when the names are the
    same, then "(left)"/"(right)" when both sides are the very same adapter."""
    a, b = adapter_label(*left), adapter_label(*right)
    if a == b and left[0] is not None and right[0] is not None and Path(left[0]) != Path(right[0]):
        a, b = adapter_label(*left, with_id=True), adapter_label(*right, with_id=True)
    if a == b:
        a, b = f"{a} (left)", f"{b} (right)"
    return a, b


# --- an answer cut by the token limit ---------------------------------------------------------------

_CUT = re.compile(r" … \[stopped at \d+ tokens\]$")


def mark_cut(text: str, max_new_tokens: int) -> str:
    """An answer that hit Max new tokens, marked so it is not read as the model's whole answer (it stopped
    mid-sentence): "… [stopped at 256 tokens]" after the text."""
    return f"{text} … [stopped at {int(max_new_tokens)} tokens]"


def unmark(text: str) -> str:
    """The answer without mark_cut's mark: what is scored, voted on and sent back to the model."""
    return _CUT.sub("", text or "")
