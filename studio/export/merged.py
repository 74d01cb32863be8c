"""The adapter folded into its base (merge_and_unload), saved as a full model."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from ..config import RunConfig
from ..runs.layout import CONFIG, EXPORTS, STUDIO_CONFIG
from .choice import adapter_dir
from .safety import check_dest, claim, mark, release, stop_on_sigterm, sweep

MERGED = "merged"


def merged_model(run_dir: str | Path, checkpoint: str | None = None):
    """(model, tokenizer, cfg): the base with one of the run's adapters folded in (merge_and_unload). The base is
    loaded unquantised: float32 on CPU, the compute dtype on GPU, since merging into 4-bit weights would round
    the update away."""
    import dataclasses

    from peft import PeftModel

    from ..env.devices import pick_device
    from ..models import load_model, load_tokenizer, resolve_source
    run_dir = Path(run_dir)
    adapter = adapter_dir(run_dir, checkpoint)
    cfg = RunConfig.load(run_dir / CONFIG)
    device = pick_device()
    mcfg = cfg.model if device == "cuda" else dataclasses.replace(cfg.model, compute_dtype="float32")
    path = resolve_source(cfg.model.source)
    model = load_model(path, mcfg, device, quantize=False)
    model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    tokenizer = load_tokenizer(adapter if (adapter / "tokenizer_config.json").is_file() else path,
                               cfg.model.trust_remote_code)
    return model, tokenizer, cfg


def private_dir(parent: Path, prefix: str) -> Path:
    """A fresh hidden folder under `parent` to build an export in, then os.replace it to its final name (so a
    half-written export never carries that name); readable like any folder (mkdtemp makes it owner-only). It records
    this process (safety.claim), so a later export sweeps it should this one be killed."""
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=prefix))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    return claim(tmp)


def export_merged(run_dir: str | Path, out: str | Path | None = None, checkpoint: str | None = None,
                  progress: Callable[[str], None] | None = None) -> Path:
    """The base with one of the run's adapters (as in export_adapter_zip) folded in, saved as safetensors +
    tokenizer in a folder (default run_dir/exports/merged/); see merged_model. `out` must be new, empty or an
    earlier merged export (safety.check_dest): a user's folder is refused before anything loads. `progress` hears
    what the export says besides its result (work folders of killed exports it swept)."""
    run_dir = Path(run_dir)
    dest = Path(out).expanduser() if out is not None else run_dir / EXPORTS / MERGED
    adapter_dir(run_dir, checkpoint)  # a missing or damaged adapter is refused first
    check_dest(dest)
    for line in sweep(dest.parent):
        (progress or (lambda s: None))(line)
    with stop_on_sigterm("The merged export"):
        model, tokenizer, cfg = merged_model(run_dir, checkpoint)
        tmp = private_dir(dest.parent, f".{dest.name}-")
        try:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            cfg.save(tmp / STUDIO_CONFIG)
            mark(tmp, MERGED, run_dir)
            check_dest(dest)  # again: the folder may have been filled while the model was merged
            if dest.exists():
                shutil.rmtree(dest)
            os.replace(tmp, dest)
            release(dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            del model
    return dest
