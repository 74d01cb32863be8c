"""Chat tab: one prompt, two panes — Base (adapter off) and Tuned (adapter on) — with the same settings.

studio.chat keeps ONE base model in memory; Base is that model inside `disable_adapter()`, so the panes
differ only by the LoRA update. The browser's engine handle lives in gr.State. While a run is training,
generation uses one thread so the trainer keeps its pace.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from studio import chat, runs
from studio.config import GenSettings

from .common import box, field_input, run_label, scratch_dir

COMPARE_COLUMNS = ["prompt", "reference", "base", "tuned"]


# --- plain handlers -------------------------------------------------------------------------------

def run_choices(root: str | Path | None) -> list[tuple[str, str]]:
    """Runs with something to chat with: a final adapter or at least one checkpoint."""
    return [(run_label(r), r["path"]) for r in runs.list_runs(root) if r["adapter"] or r["n_checkpoints"]]


def checkpoint_choices(run_dir: str | None) -> list[tuple[str, str]]:
    if not run_dir:
        return []
    out = []
    for name in runs.adapter_choices(run_dir):
        out.append(("Final adapter", name) if name == "adapter" else
                   (f"Checkpoint at step {name.split('-')[-1]}", name))
    return out


def settings_from(system_prompt: str, temperature: float, top_p: float, max_new_tokens: float,
                  seed: float) -> GenSettings:
    """GenSettings from the sliders (validated by the config's own ranges; a cleared seed box means 0)."""
    return GenSettings(system_prompt=system_prompt or "", temperature=temperature, top_p=top_p,
                       max_new_tokens=max_new_tokens, seed=seed or 0)


def engine_for(held: Any, run_dir: str, checkpoint: str | None, root: str | Path | None):
    """(engine, handle to keep in gr.State): reuses the browser's engine when run and checkpoint match."""
    if not run_dir:
        raise ValueError("Pick a run to chat with (the Train tab makes one).")
    want = (str(run_dir), checkpoint or "adapter")
    threads = chat.threads_for_chat(root)
    if isinstance(held, dict) and held.get("key") == want:
        engine = held["engine"]
    else:
        engine = chat.ChatEngine.load(run_dir, checkpoint or None, threads=threads)
    engine.threads = threads  # re-checked each time: a run may have started since the engine was made
    return engine, {"key": want, "engine": engine}


def _plain(history: list | None) -> list[dict]:
    out = []
    for m in history or []:
        if isinstance(m, dict) and m.get("role") in ("user", "assistant"):
            out.append({"role": m["role"], "content": chat._text(m.get("content"))})
    return out


def respond(prompt: str, base_hist: list | None, tuned_hist: list | None, held: Any, run_dir: str,
            checkpoint: str | None, settings: GenSettings, root: str | Path | None
            ) -> Iterator[tuple[list, list, Any, str]]:
    """Streams (base history, tuned history, engine handle, status) — Base first, then Tuned.

    The two answers are generated one after the other: the shared model's adapter switch is global, so
    interleaving them would mix the two."""
    prompt = (prompt or "").strip()
    base_hist, tuned_hist = _plain(base_hist), _plain(tuned_hist)
    if not prompt:
        yield base_hist, tuned_hist, held, "Type a message first."
        return
    yield base_hist, tuned_hist, held, "Loading the model…"
    engine, held = engine_for(held, run_dir, checkpoint, root)
    note = " (1 thread while a run trains)" if engine.threads == 1 else ""
    turn = {"role": "user", "content": prompt}
    for tuned, hist in ((False, base_hist), (True, tuned_hist)):
        messages = hist + [turn]
        hist.append(turn)
        hist.append({"role": "assistant", "content": ""})
        for text in engine.stream(messages, tuned=tuned, settings=settings):
            hist[-1] = {"role": "assistant", "content": text}
            yield base_hist, tuned_hist, held, f"{'Tuned' if tuned else 'Base'} is answering…{note}"
    yield base_hist, tuned_hist, held, f"Done{note}."


def compare(held: Any, run_dir: str, checkpoint: str | None, n: int, settings: GenSettings,
            root: str | Path | None, progress=None) -> tuple[pd.DataFrame, str, Path, Any]:
    """(table, stats markdown, CSV path, engine handle) for "Compare on held-out prompts"."""
    engine, held = engine_for(held, run_dir, checkpoint, root)
    df, stats = chat.compare_heldout(engine, run_dir, n=int(n), settings=settings, progress=progress)
    md = (f"On **{stats['n']}** held-out rows ({stats.get('tokens', '?')} answer tokens): eval loss base "
          f"**{stats['base_loss']:.4f}** → tuned **{stats['tuned_loss']:.4f}**; perplexity base "
          f"**{stats['base_ppl']:.2f}** → tuned **{stats['tuned_ppl']:.2f}**.")
    csv = chat.save_csv(df, scratch_dir("compare") / f"{runs.slug(Path(run_dir).name)}-heldout-compare.csv")
    return df, md, csv, held


# --- the tab --------------------------------------------------------------------------------------

@dataclass
class ChatTab:
    run: gr.Dropdown
    checkpoint: gr.Dropdown
    refresh: gr.Button
    status: gr.Markdown
    system_prompt: gr.Textbox
    temperature: gr.Slider
    top_p: gr.Slider
    max_new_tokens: gr.Slider
    seed: gr.Number
    base: gr.Chatbot
    tuned: gr.Chatbot
    prompt: gr.Textbox
    send: gr.Button
    clear: gr.Button
    n: gr.Slider
    compare: gr.Button
    stats: gr.Markdown
    table: gr.Dataframe
    csv: gr.File
    engine: gr.State


def build() -> ChatTab:
    gr.Markdown("Ask once, get two answers: **Base** is the model before training (the adapter switched off), "
                "**Tuned** has your run's adapter on. Same prompt, same settings, same random seed.",
                elem_classes="studio-lead")
    with gr.Row():
        run = gr.Dropdown(choices=[], label="Run", info="Runs with a saved adapter or checkpoint.",
                          elem_id="chat-run", scale=3)
        checkpoint = gr.Dropdown(choices=[], label="Adapter", info="The final adapter, or an earlier checkpoint.",
                                 elem_id="chat-checkpoint", scale=2)
        refresh = gr.Button("Refresh", size="sm", scale=0, min_width=90)
    # every label, range, step and help text comes from studio.config.GenSettings
    with gr.Accordion("Generation settings (used by both panes)", open=False), gr.Row():
        system_prompt = field_input("gen", "system_prompt", lines=2, scale=3)
        with gr.Column(scale=2):
            temperature = field_input("gen", "temperature")
            top_p = field_input("gen", "top_p")
        with gr.Column(scale=2):
            max_new_tokens = field_input("gen", "max_new_tokens")
            seed = field_input("gen", "seed")
    with gr.Row(equal_height=True):
        base = gr.Chatbot(label="Base (adapter off)", height=380, elem_id="chat-base",
                          placeholder="The base model's answers appear here.", feedback_options=None)
        tuned = gr.Chatbot(label="Tuned (adapter on)", height=380, elem_id="chat-tuned",
                           placeholder="The fine-tuned answers appear here.", feedback_options=None)
    with gr.Row():
        prompt = gr.Textbox(placeholder="Ask something, e.g. “Why is the sky blue?” — Enter sends", show_label=False,
                            scale=6, elem_id="chat-prompt", lines=1, max_lines=6)
        send = gr.Button("Send", variant="primary", scale=1, elem_id="chat-send")
        clear = gr.Button("Clear", scale=0, min_width=80)
    status = gr.Markdown(elem_id="chat-status")
    with gr.Accordion("Compare on held-out prompts", open=False, elem_id="chat-compare"):
        gr.Markdown("Runs the run's held-out rows (never trained on) through both and measures the loss of the "
                    "reference answers under each.")
        with gr.Row():
            n = gr.Slider(1, 32, value=8, step=1, label="Rows to compare", scale=3)
            compare_btn = gr.Button("Compare", variant="secondary", scale=1)
        stats = gr.Markdown()
        table = gr.Dataframe(pd.DataFrame(columns=COMPARE_COLUMNS), interactive=False, wrap=True, max_height=480,
                             column_widths=["22%", "26%", "26%", "26%"], elem_id="chat-compare-table")
        csv = gr.File(label="Download as CSV", interactive=False, visible=False)
    engine = gr.State(None)
    return ChatTab(run, checkpoint, refresh, status, system_prompt, temperature, top_p, max_new_tokens, seed, base,
                   tuned, prompt, send, clear, n, compare_btn, stats, table, csv, engine)


def wire(t: ChatTab, root: str, tab: gr.Tab, demo: gr.Blocks) -> None:
    def refresh(current):
        choices = run_choices(root)
        paths = [p for _, p in choices]
        value = current if current in paths else (paths[0] if paths else None)
        return gr.Dropdown(choices=choices, value=value)

    def on_run(run_dir):
        ck = checkpoint_choices(run_dir)
        sp = ""
        if run_dir:
            try:
                _, cfg, _ = runs.resolve_adapter(run_dir, ck[0][1] if ck else None)
                sp = cfg.data.system_prompt if cfg is not None else ""
            except ValueError:
                pass
        return gr.Dropdown(choices=ck, value=ck[0][1] if ck else None), sp

    for ev in (tab.select, t.refresh.click, demo.load):
        ev(refresh, t.run, t.run)
    t.run.change(on_run, t.run, [t.checkpoint, t.system_prompt])

    gen = [t.system_prompt, t.temperature, t.top_p, t.max_new_tokens, t.seed]

    def on_send(prompt, base_hist, tuned_hist, held, run_dir, ckpt, *g):
        try:
            settings = settings_from(*g)
            for b, tu, h, msg in respond(prompt, base_hist, tuned_hist, held, run_dir, ckpt, settings, root):
                yield b, tu, h, msg, ""
        except Exception as e:  # noqa: BLE001 — the UI boundary: whatever went wrong is said on the page
            gr.Warning(str(e))
            yield gr.skip(), gr.skip(), gr.skip(), box(str(e), "error"), gr.skip()

    ins = [t.prompt, t.base, t.tuned, t.engine, t.run, t.checkpoint, *gen]
    outs = [t.base, t.tuned, t.engine, t.status, t.prompt]
    t.send.click(on_send, ins, outs)
    t.prompt.submit(on_send, ins, outs)
    t.clear.click(lambda: ([], [], ""), [], [t.base, t.tuned, t.status])

    def on_compare(held, run_dir, ckpt, n, *g, progress=gr.Progress()):  # noqa: B008 — gradio's idiom
        try:
            df, md, csv, held = compare(held, run_dir, ckpt, n, settings_from(*g), root,
                                        progress=lambda f, msg: progress(f, desc=msg))
        except Exception as e:  # noqa: BLE001 — the UI boundary: whatever went wrong is said on the page
            gr.Warning(str(e))
            return gr.skip(), box(str(e), "error"), gr.skip(), gr.skip()
        return df, md, gr.File(str(csv), visible=True), held

    t.compare.click(on_compare, [t.engine, t.run, t.checkpoint, t.n, *gen], [t.table, t.stats, t.csv, t.engine])

