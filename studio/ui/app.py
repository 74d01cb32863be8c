"""The web app: tabs and the wiring between them (`build_app`), and the launcher (`main`).

Run it with `python launch.py` or `studio ui`. It binds 127.0.0.1 unless told otherwise, and refuses any
other address without a password (`--auth-file`, `STUDIO_AUTH` or `--auth`): the page starts processes and reads
files on this machine. `RequestGuard` answers only to known host names (a DNS-rebinding page sends its own name),
refuses foreign Origins, and throttles failed logins (studio.ui.guard).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no phoning home

import gradio as gr

from studio import runs, stages
from studio.data import PAIRS
from studio.data import limits as data_limits
from studio.env.paths import DEMO_NAME, demo_dir
from studio.models import ModelError, fetch_demo

from . import settings as settings_mod
from .chat import handlers as chat_handlers
from .chat import layout as chat_layout
from .chat import wiring as chat_wiring
from .common import CSS_PATH
from .data import handlers as data_handlers
from .data import layout as data_layout
from .data import wiring as data_wiring
from .export import layout as export_layout
from .export import wiring as export_wiring
from .guard import is_loopback, request_guard, resolve_auth, shown_names
from .train import handlers as train_handlers
from .train import layout as train_layout
from .train import wiring as train_wiring

TITLE = "QLoRA Studio"


def demo_ready() -> bool:
    d = demo_dir()
    return (d / "model.safetensors").is_file() and (d / "tokenizer.json").is_file()


def demo_line() -> str:
    if demo_ready():
        return f"Demo model **{DEMO_NAME}** is ready."
    return (f"Demo model **{DEMO_NAME}** is not downloaded yet: press *Fetch demo model* (93 MB), or type a local "
            f"model folder in the model box on the Train tab.")


def build_app(runs_dir: str | Path | None = None) -> gr.Blocks:
    root = str(runs.runs_root(runs_dir))
    with gr.Blocks(title=TITLE) as demo:
        with gr.Row(elem_id="studio-header"):
            gr.Markdown(f"# {TITLE}\nFine-tune a small language model on your own examples: "
                        f"**1 Data** → **2 Train** → **3 Chat** (before vs after) → **4 Export**.")
            with gr.Column(scale=0, min_width=320):
                demo_status = gr.Markdown(demo_line(), elem_id="demo-status")
                fetch = gr.Button("Fetch demo model", size="sm", visible=not demo_ready())
        with gr.Tabs(elem_id="studio-tabs") as tabs:
            with gr.Tab("1 · Data", id="data", elem_id="tab-data"):
                data = data_layout.build()
            with gr.Tab("2 · Train", id="train", elem_id="tab-train"):
                train = train_layout.build(root)
            with gr.Tab("3 · Chat", id="chat", elem_id="tab-chat") as chat_t:
                chat = chat_layout.build()
            with gr.Tab("4 · Export", id="export", elem_id="tab-export") as export_t:
                export = export_layout.build()
        gr.Markdown(f"Runs are kept in `{root}`. Training runs in its own process: closing this page does not "
                    f"stop it, and reopening the page shows it again.", elem_classes="studio-foot")

        # --- each tab's own events, then the wiring between the tabs --------------------------------
        s = train.settings
        data_wiring.wire(data, model=s.model, max_length=s.max_length, template=s.chat_template)
        train_wiring.wire(train, data.state, root, demo, checks=data.checks.checks)
        chat_wiring.wire(chat, root, chat_t, demo)
        export_wiring.wire(export, root, export_t, demo)
        wire_open_chat(train, chat, tabs, root)
        wire_data_to_form(data, s, demo)
        # a reload shows the data of the run the Train tab attaches to, not the sample (issue 23 item 1)
        data_wiring.wire_restore(data, demo, lambda: train_handlers.attach(root))
        data.next_train.click(lambda: gr.Tabs(selected="train"), None, tabs)
        wire_fetch(fetch, demo_status)
    return demo


def wire_open_chat(train: train_layout.TrainTab, chat: chat_layout.ChatTab, tabs: gr.Tabs, root: str) -> None:
    """Train tab's Compare runs -> the Chat tab, the first two runs against each other."""
    def on_open_chat(ids):
        base = runs.runs_root(root)
        try:
            if not ids or len(ids) < 2:
                raise ValueError("Pick two runs under Compare runs first.")
            ups = chat_handlers.open_pair(str(base / ids[0]), str(base / ids[1]), root)
        except ValueError as e:
            gr.Warning(str(e))
            return [gr.skip()] * 5
        # the pair, kept on the server: the run's change event must not undo it (studio.ui.chat.wiring._chosen)
        pair = {"run": str(base / ids[0]), "against": chat_handlers.default_against(str(base / ids[1]))}
        return [*ups, pair, gr.Tabs(selected="chat")]

    train.open_chat.click(on_open_chat, train.overlay, [chat.run, chat.checkpoint, chat.against, chat.pair, tabs])


def wire_data_to_form(data: data_layout.DataTab, s: settings_mod.Settings, demo: gr.Blocks) -> None:
    """The page opens with the bundled sample checked; the Data tab's file sets the form's Training stage; a loaded
    config fills the form, picks its data file on the Data tab and sets the Checks panel's checks."""
    def on_data_kind(pref):  # the stage studio.stages names for the file's rows: pairs train dpo, instructions sft
        stage = (pref or {}).get("stage")
        if stage not in stages.NAMES:
            return gr.skip()
        if stages.get(stage).data == PAIRS:
            gr.Info(f"This file holds preference pairs: Training stage is set to {stage}. Pick the SFT run to "
                    f"improve in Start from, next to it.")
        return stage

    data.preference.change(on_data_kind, data.preference, s.by_key("train", "stage"))
    # on load: the attached run's data, else the sample, checked at once (build_app: data_wiring.wire_restore)

    def on_load_config(path, chosen):
        try:
            values, data_cfg = settings_mod.load_config(path)
            checks = settings_mod.load_checks(path)
        except ValueError as e:
            gr.Warning(str(e))
            return [gr.skip()] * (len(s.inputs) + 3)
        gr.Info("Config loaded." + ("" if data_cfg else " Its data file is not on this machine: pick the data "
                                                        "on the Data tab."))
        if not data_cfg:
            return [*values, gr.skip(), gr.skip(), checks]
        # the user chose this config, so the data file it names may be read (data handlers' `allowed`)
        return [*values, data_cfg["path"], data_handlers.choose(chosen, data_cfg["path"]), checks]

    s.load.upload(on_load_config, [s.load, data.chosen], [*s.inputs, data.path, data.chosen, data.checks.checks])


def wire_fetch(fetch: gr.Button, demo_status: gr.Markdown) -> None:
    """Fetch demo model: download it, then say so in the header."""
    def on_fetch(progress=gr.Progress()):  # noqa: B008 — gradio's idiom
        try:
            fetch_demo(progress=lambda f, text: progress(f, desc=text))
        except ModelError as e:
            gr.Warning(str(e))
        return demo_line(), gr.Button(visible=not demo_ready())

    fetch.click(on_fetch, [], [demo_status, fetch])


# --- launching ------------------------------------------------------------------------------------

def trust_proxies(trusted_proxy: str | None) -> str:
    """The addresses whose X-Forwarded-For / X-Forwarded-Proto the server believes: `trusted_proxy`, else uvicorn's
    own $FORWARDED_ALLOW_IPS when set, else none. uvicorn (started by gradio, which passes no proxy settings)
    believes 127.0.0.1 and ::1 by default, so any local program could name a new client address per login guess
    and slip past the per-client login throttle. Sets $FORWARDED_ALLOW_IPS, which uvicorn reads at launch."""
    proxies = trusted_proxy if trusted_proxy is not None else os.environ.get("FORWARDED_ALLOW_IPS", "")
    os.environ["FORWARDED_ALLOW_IPS"] = proxies
    return proxies


def main(host: str = "127.0.0.1", port: int = 7860, auth: str | None = None, runs_dir: str | None = None,
         auth_file: str | None = None, allowed_hosts: str | None = None, trusted_proxy: str | None = None) -> int:
    """Start the app; returns a process exit code (2 when refused).

    The password comes from `auth` (user:password, visible in the process list), else `auth_file`, else
    $STUDIO_AUTH; `allowed_hosts` (else $STUDIO_ALLOWED_HOSTS) adds Host names the server answers to and origins
    allowed on its API; `trusted_proxy` (else $FORWARDED_ALLOW_IPS, else none) is the reverse proxy whose
    X-Forwarded-For names the client (`trust_proxies`).
    """
    try:
        creds, source = resolve_auth(auth, auth_file)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not is_loopback(host) and creds is None:
        print(f"error: refusing to listen on {host} without a password. The studio starts training processes and "
              f"reads files on this machine, so anyone who can reach {host}:{port} could too. Put user:password in "
              f"a file only you can read and pass --auth-file FILE (or set STUDIO_AUTH=user:password), or leave "
              f"--host at 127.0.0.1 (only this computer).", file=sys.stderr)
        return 2
    if creds:
        note = " (visible to other users in the process list: prefer --auth-file or STUDIO_AUTH)" \
            if source == "--auth" else ""
        print(f"Login required: user {creds[0]!r}, password from {source}{note}.", file=sys.stderr)
    if allowed_hosts is None:
        allowed_hosts = os.environ.get("STUDIO_ALLOWED_HOSTS")
    try:
        guard = request_guard(host, allowed_hosts, throttle=creds is not None)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if trust_proxies(trusted_proxy):
        print(f"Believing X-Forwarded-For from {os.environ['FORWARDED_ALLOW_IPS']} (the reverse proxy).",
              file=sys.stderr)
    if guard.kwargs["any_host"]:
        print("warning: --allowed-hosts '*' answers to any Host name, which lets a DNS-rebinding web page reach "
              "the studio; name the hosts instead.", file=sys.stderr)
    if not demo_ready():
        print(f"First launch: fetching the demo model {DEMO_NAME} (93 MB, once)...", file=sys.stderr, flush=True)
        try:
            fetch_demo()  # prints its progress on the console
        except ModelError as e:
            print(f"warning: {e}\nThe studio starts anyway; use a local model folder or fetch the demo from the "
                  f"page later.", file=sys.stderr)
    root = runs.runs_root(runs_dir)
    demo = build_app(root)
    # transformers' lazy module is not safe to import from two threads at once: the page's first events (the Data
    # tab's token counts and the model picker's listing) raced, and one of them got "cannot import name
    # 'AutoTokenizer' from 'transformers'". Imported here once (2.7 s), before any event runs.
    from transformers import AutoConfig, AutoTokenizer  # noqa: F401
    print(f"QLoRA Studio on http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}  (runs in {root}; "
          f"answers to Host {shown_names(guard.kwargs['names'])}"
          f"{' or any IP address' if guard.kwargs['any_ip'] else ''})", file=sys.stderr, flush=True)
    demo.queue(default_concurrency_limit=1)
    # no allowed_paths: downloads are copied to a temp folder, so the runs folder is never served as a whole.
    # The guard goes in through app_kwargs (FastAPI's `middleware=`): gradio has no Host allowlist of its own
    # (its strict_cors only covers Host localhost/127.0.0.1), and launch() keeps doing everything else.
    demo.launch(server_name=host, server_port=port, auth=creds, show_error=True, theme=theme(), inbrowser=False,
                css_paths=[CSS_PATH] if CSS_PATH.is_file() else None, footer_links=["api", "settings"],
                run_history=False, app_kwargs={"middleware": [guard]},
                # a bigger upload could not be read anyway (data.limits); gradio answers 413 and deletes the part
                max_file_size=data_limits.MAX_DATA_BYTES)
    return 0


# Field help and lead text: the Soft theme's gray (#9ca3af) is 2.5:1 on white, under WCAG AA's 4.5:1 for 12 px
# text; "every field explained" must be readable. #4b5563 is 7.6:1 (tests/test_ui_handlers.py checks the ratio).
HELP_TEXT = "#4b5563"


def theme() -> gr.themes.Base:
    # the Soft theme's fonts are bundled with gradio: the page needs no internet
    return gr.themes.Soft(primary_hue="indigo", secondary_hue="slate", radius_size="md").set(
        block_info_text_color=HELP_TEXT, body_text_color_subdued=HELP_TEXT)
