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


def merge_dtype(gpus: int) -> str:
    """The dtype the base is merged in, always on the CPU: float32 where there is no GPU (the small models a CPU
    trains; the GGUF export converts from it), bfloat16 where there is one (the models GPUs train: an 8B base is
    16 GB in bf16 against 32 GB in fp32 of RAM). Never on the GPU: the 16-bit base of an 8B model is 16 GB of VRAM
    (out of memory on a T4, borderline on a 4090 with the Chat tab's model loaded, impossible for 70B)."""
    return "bfloat16" if gpus > 0 else "float32"


def merged_model(run_dir: str | Path, checkpoint: str | None = None):
    """(model, tokenizer, cfg): the base with one of the run's adapters folded in (merge_and_unload), on the CPU in
    merge_dtype's dtype. The base is loaded unquantised, since merging into 4-bit weights would round the update
    away."""
    import dataclasses

    from peft import PeftModel

    from ..env.devices import gpus_present
    from ..models import load_model, load_tokenizer, resolve_source
    run_dir = Path(run_dir)
    adapter = adapter_dir(run_dir, checkpoint)
    cfg = RunConfig.load(run_dir / CONFIG)
    mcfg = dataclasses.replace(cfg.model, compute_dtype=merge_dtype(gpus_present()))
    path = resolve_source(cfg.model.source)
    model = load_model(path, mcfg, "cpu", quantize=False)
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
