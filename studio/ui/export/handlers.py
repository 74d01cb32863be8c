"""The Export tab's handlers: the runs with an adapter, the adapter zip (and the merged model), and the GGUF export
with its check in llama-server. Plain functions, tested without a browser; the browser always gets a copy."""
from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path

from studio import export, runs
from studio.env.io import atomic_write
from studio.export import llamacpp

from ..common import pick_run, run_labels, scratch_dir


def _exportable(root: str | Path | None) -> list[dict]:
    return [r for r in runs.list_runs(root) if r["adapter"]]


def run_choices(root: str | Path | None) -> list[tuple[str, str]]:
    """Runs with a saved adapter, newest first, labelled by name: the id only where two runs share a name, the state
    where it is not "finished". "name — finished, loss 8.592 (20261203-093037-name)" was cut at 1280 px before the
    ★ reason its pick is made for could be read."""
    return run_labels(_exportable(root))


def run_picker(root: str | Path | None, current: str | None = None) -> tuple[list[tuple[str, str]], str | None]:
    """The Run picker's choices and value (common.pick_run): the runs are listed once for both."""
    return pick_run(_exportable(root), current)


def zip_listing(path: str | Path) -> str:
    with zipfile.ZipFile(path) as zf:
        rows = [f"| `{i.filename}` | {i.file_size / 1024:,.1f} KB |" for i in zf.infolist()]
    size = Path(path).stat().st_size / 2**20
    return "\n".join([f"**{Path(path).name}** ({size:.1f} MB):", "", "| file | size |", "|---|---|", *rows])


def adapter_picker(run_dir: str | None) -> tuple[list[tuple[str, str]], str | None]:
    """The run's adapters for the picker (the best one marked) and the default: the best when it is not the last."""
    return runs.adapter_options(Path(run_dir)) if run_dir else ([], None)


def export_zip(run_dir: str | None, checkpoint: str | None = None) -> tuple[Path, Path, str]:
    """(zip kept in the run's exports/ folder, a copy to hand to the browser, markdown listing its contents).

    The browser gets a copy in a temp folder so the web server never needs to serve the runs folder."""
    if not run_dir:
        raise ValueError("Pick a run with a saved adapter (finish or stop a run on the Train tab first).")
    path = export.export_adapter_zip(run_dir, checkpoint=checkpoint)
    return path, _handout(path, "export"), zip_listing(path)


def export_merged_zip(run_dir: str | None, checkpoint: str | None = None, say=None) -> tuple[Path, Path]:
    """(merged model folder, a zip of it for download). Stored, not deflated: safetensors barely compress.
    `say` hears what the export did besides (work folders of killed exports it swept)."""
    if not run_dir:
        raise ValueError("Pick a run with a saved adapter first.")
    folder = export.export_merged(run_dir, checkpoint=checkpoint, progress=say)
    name = export.zip_name(Path(run_dir), checkpoint).replace("-adapter", "-merged", 1)
    dest = scratch_dir("merged") / name
    with atomic_write(dest, binary=True) as out, \
            zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                zf.write(f, f.relative_to(folder).as_posix())
    return folder, dest


GGUF_TYPES = [("auto: Q8_0 below 1B parameters, Q4_K_M from 1B", "auto")] + [
    (f"{q.upper()}: {help_}", q) for q, help_ in llamacpp.QUANT_HELP.items()]


def _handout(path: Path, prefix: str) -> Path:
    """A copy of `path` in a scratch folder for the browser (a hard link where the file system allows: GGUF zips
    are large)."""
    dest = scratch_dir(prefix) / path.name  # a fresh folder
    try:
        os.link(path, dest)
    except OSError:
        shutil.copy2(path, dest)
    return dest


def agreement_frame(result):
    import pandas as pd
    return pd.DataFrame([{"prompt": r["prompt"], "PyTorch (merged)": r["pytorch"], "GGUF": r["gguf"],
                          "same answer (tokens agreeing)": f"{'yes' if r['identical'] else 'no'} "
                                                           f"({r['same_tokens']}/{r['tokens']})"}
                         for r in result.agreement])


def gguf_summary(result) -> str:
    from studio.export.gguf.report import files_table, stages_table
    where = f"**{result.zip.name}**" if result.zip else f"the folder `{result.folder}` (too large to zip)"
    return (f"{where}: {result.summary}; {result.adapter_summary}. The GGUF's embedded chat template "
            f"{'matches' if result.template_matches else 'does not match'} the tokenizer's.\n\n"
            f"**{result.verdict}**\n\n"
            f"{files_table(result)}\n\n{stages_table(result)}")


def export_gguf_zip(run_dir: str | None, checkpoint: str | None, quant: str, progress=None):
    """(GGUFExport, a copy of its zip for the browser or None, agreement DataFrame, markdown summary)."""
    from studio.export.gguf import export_gguf
    if not run_dir:
        raise ValueError("Pick a run with a saved adapter first.")
    result = export_gguf(run_dir, quant, checkpoint, progress=progress)
    download = _handout(result.zip, "gguf") if result.zip else None
    return result, download, agreement_frame(result), gguf_summary(result)
