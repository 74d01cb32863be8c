"""Full-page screenshots of the Data, Train (Advanced open), Chat and Export tabs, as a newcomer meets them.

    python tests/screens.py OUT_DIR [--repo PATH] [--keep]

A script, not a test (issue 23 asks for the four tabs before and after). It makes a private STUDIO_HOME (the demo
model linked from ~/.cache/qlora-studio when it is there, read, never written), builds a 2-layer tiny Llama with
the demo tokenizer, trains two tiny runs (8 steps each, learning rates 1e-2 and 2e-3, so Chat and Export have
something to pick and the Compare table two rows), launches the app on a free port and saves data.png, train.png,
chat.png and export.png in Chromium at 1280 px wide. `--repo PATH` runs the app (and the training) from another
checkout of the studio, e.g. a git worktree of an earlier commit, so "before" and "after" come from one script.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from tests.helpers import CHROMIUM, CHROMIUM_ARGS, free_port, http_request, stop_process, tab  # noqa: E402

WIDTH = 1280  # a common laptop width; the walk was at this size

# Runs in a child with the chosen checkout first on sys.path: the runs are made by that checkout's own code.
SETUP = r"""
import os, sys, time
from pathlib import Path
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
from studio.models import fetch_demo
from studio.config import preset
from studio.runs.create import create_run
from studio.config import RunConfig
from studio.train.lifecycle import run

home = Path(os.environ["STUDIO_HOME"])
tiny = home / "models" / "tiny-llama"
if not (tiny / "model.safetensors").is_file():
    tok = AutoTokenizer.from_pretrained(fetch_demo())
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      tie_word_embeddings=True, initializer_range=0.15, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(tiny, safe_serialization=True)
    tok.save_pretrained(tiny)
data = home / "small.jsonl"
data.write_text("".join(Path(sys.argv[1]).read_text(encoding="utf-8").splitlines(keepends=True)[:48]),
                encoding="utf-8")
for name, lr in (("tiny lr1e-2", 1e-2), ("tiny lr2e-3", 2e-3)):
    cfg = preset("quick", model={"source": str(tiny)}, data={"path": str(data)},
                 lora={"r": 16, "alpha": 64},
                 train={"max_steps": 8, "learning_rate": lr, "batch_size": 4, "max_length": 128,
                        "save_steps": 4, "eval_steps": 4, "eval_fraction": 0.1, "threads": 1}).replace(name=name)
    d = create_run(cfg)
    rc = run(RunConfig.load(d / "config.yaml"), d)
    print(d, "rc", rc, flush=True)
    time.sleep(1.1)  # run ids carry the second: the two runs get distinct, ordered ids
"""


def _env(home: Path, repo: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("STUDIO_AUTH", "STUDIO_ALLOWED_HOSTS", "FORWARDED_ALLOW_IPS", "STUDIO_RUNS_DIR")}
    env.update({"STUDIO_HOME": str(home), "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
                "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(repo)})
    return env


def make_home(home: Path, repo: Path) -> None:
    """The private studio home with the demo model linked in and two finished tiny runs under home/runs."""
    real = Path.home() / ".cache" / "qlora-studio" / "models" / "SmolLM2-135M-Instruct"
    (home / "models").mkdir(parents=True, exist_ok=True)
    link = home / "models" / real.name
    if (real / "model.safetensors").is_file() and not link.exists():
        link.symlink_to(real, target_is_directory=True)  # read, never written
    sample = repo / "assets" / "datasets" / "pirate_qa.jsonl"
    res = subprocess.run([sys.executable, "-c", SETUP, str(sample)], cwd=repo, env=_env(home, repo),
                         capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"setting up the runs failed:\n{res.stderr[-3000:]}")
    print(res.stdout.strip())


def launch(home: Path, repo: Path) -> tuple[str, subprocess.Popen]:
    port = free_port()
    log = open(home / "app.log", "wb")
    proc = subprocess.Popen([sys.executable, str(repo / "launch.py"), "--port", str(port), "--runs-dir",
                             str(home / "runs")], cwd=repo, env=_env(home, repo), stdout=log,
                            stderr=subprocess.STDOUT)
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"the app exited:\n{(home / 'app.log').read_text()[-3000:]}")
        try:
            if http_request(port, "GET", "/")[0] == 200:
                return f"http://127.0.0.1:{port}/", proc
        except OSError:
            time.sleep(0.5)
    stop_process(proc)
    sys.exit("the app did not answer within 180 s")


def _settle(page, seconds: float = 2.0) -> None:
    """Let gradio's polls and the plots draw (a timer ticks each second)."""
    page.wait_for_timeout(int(seconds * 1000))


def _shot(page, path: Path) -> None:
    page.screenshot(path=str(path), full_page=True)
    height = page.evaluate("document.documentElement.scrollHeight")
    print(f"{path}  {height} px high")


def shoot(url: str, out: Path) -> None:
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": WIDTH, "height": 900})
        page.goto(url)
        page.locator("#data-summary").filter(has_text="rows").wait_for(timeout=120_000)
        _settle(page, 4)
        _shot(page, out / "data.png")
        tab(page, "2 · Train")
        _settle(page, 3)
        page.locator("#advanced").get_by_text("Advanced", exact=True).first.click()
        for name in ("tiny lr1e-2", "tiny lr2e-3"):  # the Compare table of the two runs
            page.locator("#runs-overlay input").click()
            page.get_by_role("option", name=re.compile(re.escape(name))).first.click()
        page.keyboard.press("Escape")
        page.locator("#runs-compare-table").filter(has_text="best eval loss").wait_for(timeout=30_000)
        _settle(page, 3)
        _shot(page, out / "train.png")
        tab(page, "3 · Chat")
        _settle(page, 4)
        _shot(page, out / "chat.png")
        tab(page, "4 · Export")
        _settle(page, 4)
        _shot(page, out / "export.png")
        browser.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="folder for data.png, train.png, chat.png, export.png")
    ap.add_argument("--repo", type=Path, default=HERE, help="the studio checkout the app runs from")
    ap.add_argument("--keep", action="store_true", help="keep the private studio home (its path is printed)")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    repo = a.repo.resolve()
    home = Path(tempfile.mkdtemp(prefix="studio-screens-"))
    print("studio home:", home, "repo:", repo)
    try:
        make_home(home, repo)
        url, proc = launch(home, repo)
        try:
            shoot(url, a.out.resolve())
        finally:
            stop_process(proc)
    finally:
        if not a.keep:
            import shutil
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
