"""The adapter as a zip: weights, tokenizer, config.yaml, metrics.jsonl, the loss curve and a model card."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

from ..config import DEMO_MODEL, RunConfig
from ..env.io import atomic_write
from ..runs.layout import CONFIG, EXPORTS, METRICS
from .card import LOSS_PNG, loss_curve_png, model_card
from .choice import adapter_dir, portable_base, which, zip_name

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "chat_template.json", "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json")


def export_adapter_zip(run_dir: str | Path, out: str | Path | None = None, checkpoint: str | None = None) -> Path:
    """Zip one of the run's adapters (`checkpoint`: "adapter" = the final one, the default; "checkpoint-N";
    "best") with tokenizer, config.yaml, metrics.jsonl, loss_curve.png and a README.md model card.
    `out`: a .zip path or a folder; default run_dir/exports/<run>-adapter[-stepN]-<date>.zip."""
    run_dir = Path(run_dir)
    checkpoint = which(run_dir, checkpoint)
    adapter = adapter_dir(run_dir, checkpoint)
    name = zip_name(run_dir, checkpoint)
    if out is None:
        dest = run_dir / EXPORTS / name
    else:
        out = Path(out).expanduser()
        dest = out if out.suffix.lower() == ".zip" and not out.is_dir() else out / name
        if out.exists() and not out.is_dir() and dest != out:
            raise ValueError(f"{out} is a file, not a folder or a .zip path: give a folder to put the zip in, or a "
                             f"path ending in .zip.")
    cfg = RunConfig.load(run_dir / CONFIG)
    png = loss_curve_png(run_dir)

    adapter_config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    # The trainer records the base as a folder on this machine; elsewhere the hub id is what loads.
    if cfg.model.source == DEMO_MODEL or not Path(cfg.model.source).expanduser().exists():
        adapter_config["base_model_name_or_path"] = portable_base(cfg)

    card = model_card(run_dir, has_png=png is not None, checkpoint=checkpoint)
    with atomic_write(dest, binary=True) as f, zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.write(adapter / "adapter_model.safetensors", "adapter_model.safetensors")
        zf.writestr("adapter_config.json", json.dumps(adapter_config, indent=2))
        for name in TOKENIZER_FILES:
            if (adapter / name).is_file():
                zf.write(adapter / name, name)
        zf.write(run_dir / CONFIG, CONFIG)
        if (run_dir / METRICS).is_file():
            zf.write(run_dir / METRICS, "metrics.jsonl")
        if png is not None:
            zf.write(png, LOSS_PNG)
        zf.writestr("README.md", card)
    return dest
