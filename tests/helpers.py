"""What the tests share that is not a fixture (the fixtures are in conftest.py): the repository's paths, the studio
CLI in a child process, the tiny-run configs, the data-refusal check, the Chat tab's wired handlers, and headless
Chromium, the word problems of the checks' tests. Test modules import from here, never from one another.

Nothing here imports the studio, torch or gradio at import time: conftest.py imports this module before it sets
up the test environment."""
from __future__ import annotations

import contextlib
import http.client
import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "assets" / "datasets"
SAMPLE_JSONL = SAMPLES / "pirate_qa.jsonl"
SAMPLE_CSV = SAMPLES / "pirate_qa.csv"
ARTIFACTS = ROOT / "test-artifacts"


# --- the CLI --------------------------------------------------------------------------------------

def studio_cli(*args, timeout: float | None = None, cwd: Path | str | None = ROOT, env: dict[str, str] | None = None,
               check: bool = False) -> subprocess.CompletedProcess:
    """`python -m studio ARGS` in a child process, as a user runs it (each arg through str()), stdout and stderr
    captured as text. `env`: variables set on top of this process's environment (the child inherits the rest).
    No time limit unless `timeout` is given."""
    return subprocess.run([sys.executable, "-m", "studio", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env={**os.environ, **env} if env else None, check=check)


# --- tiny runs and data ---------------------------------------------------------------------------

def sample_head(n: int, path: Path) -> Path:
    """The first `n` rows of the sample data (SAMPLE_JSONL), written to `path`."""
    path.write_text("".join(SAMPLE_JSONL.read_text(encoding="utf-8").splitlines(keepends=True)[:n]), encoding="utf-8")
    return path


def tiny_run_config(tiny_model_dir, dataset):
    """A quick QLoRA run config on the tiny model (conftest's `tiny_model_dir`): 4-bit NF4 base (bitsandbytes CPU
    backend), LoRA r=16, lr 1e-2 (the config's maximum) so a few steps move the loss well past noise; 8 steps."""
    from studio.config import preset
    return preset("quick", model={"source": str(tiny_model_dir)},
                  data={"path": str(dataset)},
                  lora={"r": 16, "alpha": 64},
                  train={"max_steps": 8, "learning_rate": 1e-2, "batch_size": 4, "max_length": 128,
                         "save_steps": 4, "eval_steps": 4, "eval_fraction": 0.1, "threads": 1})


def overfit_config(tiny_model_dir, tmp_path, **train):
    """12 rows (9 trained, 3 held out), a constant learning rate of 1e-2, an evaluation every 2 steps: the tiny
    model learns its 9 rows by heart and the held-out loss turns up after ~20 steps."""
    return tiny_run_config(tiny_model_dir, sample_head(12, tmp_path / "tiny12.jsonl")).replace(
        name="overfit", train={"max_steps": 60, "eval_steps": 2, "save_steps": 100, "eval_fraction": 0.25,
                               "lr_scheduler": "constant", "warmup_ratio": 0.0, "overfit_evals": 2, **train})


WORD_PROBLEMS = [("Ann has 12 kites and buys 7 more. How many kites does she have?", 19, "kites"),
                 ("A box holds 6 eggs. How many eggs are in 4 boxes?", 24, "eggs"),
                 ("Tom read 30 pages on Monday and 15 on Tuesday. How many pages did he read?", 45, "pages"),
                 ("There are 9 birds on a wire and 4 fly away. How many are left?", 5, "birds"),
                 ("A class has 3 rows of 8 desks. How many desks are there?", 24, "desks")]


def word_problems_csv(path: Path, n: int = len(WORD_PROBLEMS), extra: str | None = None) -> Path:
    """A CSV of the first n WORD_PROBLEMS (question, answer) whose answers are JSON like {"answer": 19, "unit":
    "kites"}, for the checks; `extra`: one more column, "unit" (the unit) or "expected" (the number)."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["question", "answer", *([extra] if extra else [])])
        for q, number, unit in WORD_PROBLEMS[:n]:
            cell = {"unit": unit, "expected": number}.get(extra or "")
            w.writerow([q, json.dumps({"answer": number, "unit": unit}), *([cell] if extra else [])])
    return path


def data_refused(path: Path, *needles: str) -> str:
    """read_examples(path) raises DataError naming the file and holding every needle (case-insensitive)."""
    from studio.data import DataError, read_examples
    with pytest.raises(DataError) as e:
        read_examples(path)
    msg = str(e.value)
    assert path.name in msg, msg
    for n in needles:
        assert n.lower() in msg.lower(), f"{n!r} not in: {msg}"
    return msg


# --- the Chat tab's handlers, without a browser ---------------------------------------------------

def wired(root):
    """The Chat tab built and wired in a gr.Blocks on the runs root `root`, as the app does: (demo, the tab)."""
    import gradio as gr

    from studio.ui.chat import layout, wiring
    with gr.Blocks() as demo:
        with gr.Tab("Chat") as tab:
            t = layout.build()
        wiring.wire(t, str(root), tab, demo)
    return demo, t


def handler(demo, component, event: str):
    """What gradio runs when `event` fires on `component`: the block function (its .fn, .outputs)."""
    return next(f for f in demo.fns.values() if (component._id, event) in f.targets)


# --- the app in a child process, and headless Chromium --------------------------------------------

CHROMIUM = os.environ.get("STUDIO_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    """Until `url` answers 200; the test fails (with the app's log) if the app exits or is silent for `timeout` s."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the app exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"the app did not answer on {url} within {timeout} s:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def chromium_page(url: str, last_shot: Path | None = None, **page_args):
    """A headless Chromium page opened at `url`, and the list its page errors are collected into. On the way out,
    however the test went, the page is saved to `last_shot` (when given) and the browser is closed."""
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000}, **page_args)
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        try:
            page.goto(url)
            yield page, errors
        finally:
            if last_shot is not None:
                page.screenshot(path=str(last_shot), full_page=True)
            browser.close()


def tab(page, name: str) -> None:
    """Open the app's tab `name` (e.g. "2 · Train")."""
    page.get_by_role("tab", name=name).click()


# --- the app over raw HTTP (tests/test_server*.py) --------------------------------------------------

PASSWORD = "s3cret-horse"  # the password the server tests launch the app with


def http_request(port: int, method: str, path: str, headers: dict[str, str] | None = None, body: bytes | None = None,
             source: str | None = None) -> tuple[int, dict[str, str], str]:
    """(status, headers lower-cased, body) of one raw HTTP request to the app on 127.0.0.1:`port`; Host is
    127.0.0.1:port unless `headers` set another, so a test says exactly which Host and Origin are sent."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10,
                                      source_address=(source, 0) if source else None)
    try:
        conn.request(method, path, body=body, headers={"Host": f"127.0.0.1:{port}", **(headers or {})})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read().decode("utf-8", "replace")
    finally:
        conn.close()


def http_login(port: int, user: str, password: str, source: str | None = None) -> tuple[int, dict[str, str], str]:
    """POST the login form (gradio's /login) from the address `source` (a 127.x address) when given."""
    body = urllib.parse.urlencode({"username": user, "password": password}).encode()
    return http_request(port, "POST", "/login", {"Content-Type": "application/x-www-form-urlencoded"}, body, source)


def stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 20 s."""
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


def launch_app(tmp: Path, args: list[str], env_extra: dict[str, str] | None = None,
               program: list[str] | None = None) -> tuple[int, subprocess.Popen, Path]:
    """`python launch.py ARGS` (or `python PROGRAM ARGS`) in a child process on a free port, with no password, host
    or proxy setting inherited from this environment, its runs under `tmp`; waits up to 120 s for it to answer.
    (port, process, its console log). Stop it with stop_process."""
    port = free_port()
    log = tmp / "app.log"
    env = {k: v for k, v in os.environ.items()
           if k not in ("STUDIO_AUTH", "STUDIO_ALLOWED_HOSTS", "FORWARDED_ALLOW_IPS")}
    env.update({"HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1",
                **(env_extra or {})})
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, *(program or [str(ROOT / "launch.py")]), "--port", str(port),
                                 "--runs-dir", str(tmp / "runs"), *args], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while True:
        if proc.poll() is not None:
            pytest.fail(f"the app exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if http_request(port, "GET", "/")[0] == 200:
                return port, proc, log
        except OSError:
            pass
        if time.time() > deadline:
            proc.kill()
            pytest.fail(f"the app did not answer within 120 s:\n{log.read_text()[-3000:]}")
        time.sleep(0.3)
