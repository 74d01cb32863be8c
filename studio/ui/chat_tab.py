"""Chat tab: one prompt, two panes with the same settings — by default Base (adapter off) on the left and
Tuned (the chosen run's adapter on) on the right; the left pane can instead hold another adapter of the same
base model (another checkpoint, or another run), to compare two adapters with each other.

studio.chat keeps ONE base model in memory; Base is that model inside `disable_adapter()`, so the panes
differ only by the LoRA update; a second adapter is only a second set of LoRA weights on the same base.
The browser's engine handles live in gr.State. While a run is training, generation uses one thread so the
trainer keeps its pace.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from studio import chat, runs
from studio.config import GenSettings

from .common import box, field_input, run_label, scratch_dir

COMPARE_COLUMNS = ["prompt", "reference", "base", "tuned", "base EM", "base F1", "tuned EM", "tuned F1", "closer"]

# The value of the "Left pane" dropdown (ChatTab.against): BASE for the base model (the chosen run's adapter
# switched off), otherwise "RUN_DIR::ADAPTER" — the run folder as run_choices gives it, "::", and the adapter's
# name as runs.adapter_choices gives it ("adapter" for the final one, "checkpoint-N"). "" and None mean BASE too.
BASE = "base"
SEP = "::"
BASE_LABEL = "Base model (adapter off)"


# --- plain handlers -------------------------------------------------------------------------------

def run_choices(root: str | Path | None) -> list[tuple[str, str]]:
    """Runs with something to chat with: a final adapter or at least one checkpoint."""
    return [(run_label(r), r["path"]) for r in runs.list_runs(root) if r["adapter"] or r["n_checkpoints"]]


def _adapter_label(name: str, best: runs.Best | None) -> str:
    label = "Final adapter" if name == runs.FINAL else f"Checkpoint at step {name.split('-')[-1]}"
    if best is not None and best.name == name:
        label += f" ★ best (eval loss {best.eval_loss:.4f})"
    return label


def checkpoint_options(run_dir: str | None) -> tuple[list[tuple[str, str]], str | None]:
    """(label, value) pairs of the run's adapters, newest first, the one with the lowest eval loss marked
    "★ best", and the default value: that best one when it is not the newest, else the newest."""
    values, default = runs.adapter_options(Path(run_dir)) if run_dir else ([], None)
    best = runs.best_adapter(Path(run_dir)) if values else None
    return [(_adapter_label(v, best), v) for _, v in values], default


def checkpoint_choices(run_dir: str | None) -> list[tuple[str, str]]:
    return checkpoint_options(run_dir)[0]


def against_value(run_dir: str | Path, adapter: str | None) -> str:
    """The "Left pane" value for a run's adapter ("adapter" when None)."""
    return f"{run_dir}{SEP}{adapter or runs.FINAL}"


def parse_against(value: str | None) -> tuple[str, str] | None:
    """(run folder, adapter name) for a "Left pane" value, None for the base model."""
    if value in (None, "", BASE):
        return None
    run_dir, sep, adapter = str(value).rpartition(SEP)
    if not sep or not run_dir or not adapter:
        raise ValueError(f"'{value}' is not a left-pane choice: pick the base model or an adapter from the list.")
    return run_dir, adapter


def _same_base(run_dir: str, target: str) -> bool:
    try:
        return chat.base_path(run_dir) == target
    except (ValueError, OSError):  # a broken or half-written run: not offered
        return False


def against_choices(run_dir: str | None, root: str | Path | None) -> list[tuple[str, str]]:
    """What the left pane can hold next to `run_dir`'s adapter: the base model first, then every adapter
    (final + checkpoints, best marked) of the runs trained on the same base model, this run's included."""
    out = [(BASE_LABEL, BASE)]
    if not run_dir:
        return out
    try:
        target = chat.base_path(run_dir)
    except (ValueError, OSError):
        return out
    for r in runs.list_runs(root):
        if not (r["adapter"] or r["n_checkpoints"]):
            continue
        if r["path"] != str(run_dir) and not _same_base(r["path"], target):
            continue
        names, _ = runs.adapter_options(Path(r["path"]))
        for _, name in names:
            out.append((f"{r['name']} ({r['id']}) · {_adapter_label(name, r['best'])}", against_value(r["path"], name)))
    return out


def pane_labels(run_dir: str | None, checkpoint: str | None, against: str | None) -> tuple[str, str]:
    """The two panes' titles: "Base (adapter off)" / "Tuned (adapter on)", or the two adapters' names."""
    other = parse_against(against)
    if other is None or not run_dir:
        return "Base (adapter off)", "Tuned (adapter on)"
    return chat.pair_labels((Path(other[0]), other[1]), (Path(run_dir), checkpoint or runs.FINAL))


def open_pair(run_a: str, run_b: str, root: str | Path | None) -> list:
    """Gradio updates for [ChatTab.run, ChatTab.checkpoint, ChatTab.against] that put run_a's default adapter
    (its best one when that is not its newest, else its newest) on the right pane and run_b's default adapter on
    the left. ValueError (a sentence to show) when either run has no adapter yet or the two were trained on
    different base models. Choices come with the values, so they hold whether or not the run changes."""
    for r in (run_a, run_b):
        if not r or not runs.is_run(Path(r)):
            raise ValueError(f"'{r}' is not a run folder: pick two runs from the list.")
    ck_a, default_a = checkpoint_options(run_a)
    _, default_b = checkpoint_options(run_b)
    for r, default in ((run_a, default_a), (run_b, default_b)):
        if default is None:
            raise ValueError(f"Run {Path(r).name} has no saved adapter or checkpoint yet, so it cannot be chatted "
                             f"with: wait for its first checkpoint.")
    if chat.base_path(run_b) != chat.base_path(run_a):
        raise ValueError(f"Runs {Path(run_a).name} and {Path(run_b).name} were trained on different base models; "
                         f"the Chat tab keeps one base model in memory, so it compares adapters of the same base "
                         f"only. Compare each with its base instead.")
    value = against_value(run_b, default_b)
    against = against_choices(run_a, root)
    if value not in [v for _, v in against]:  # run_b is outside root: offer it anyway
        against.append((f"{Path(run_b).name} · {_adapter_label(default_b, runs.best_adapter(Path(run_b)))}", value))
    choices = run_choices(root)
    if run_a not in [v for _, v in choices]:
        choices.append((Path(run_a).name, run_a))
    return [gr.Dropdown(choices=choices, value=run_a), gr.Dropdown(choices=ck_a, value=default_a),
            gr.Dropdown(choices=against, value=value)]


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
        handle = held
    else:
        engine = chat.ChatEngine.load(run_dir, checkpoint or None, threads=threads)
        handle = {"key": want, "engine": engine}
    engine.threads = threads  # re-checked each time: a run may have started since the engine was made
    return engine, handle


def against_for(held: dict, against: str | None) -> tuple[Any, dict]:
    """(the left pane's side, handle): "base", or an engine for the `against` adapter put on the base that the
    handle's engine holds (ValueError when that adapter belongs to another base model). Call after engine_for."""
    other = parse_against(against)
    if other is None:
        return "base", held
    run_dir, adapter = other
    if not runs.is_run(Path(run_dir)):
        raise ValueError(f"The left pane's run {Path(run_dir).name} no longer exists: pick another one.")
    engine = held["engine"]
    kept = held.get("against")
    if kept and kept[0] == str(against) and kept[1].key == engine.key:
        side = kept[1]
    else:
        side = chat.ChatEngine.load(run_dir, adapter, threads=engine.threads, like=engine)
    side.threads = engine.threads
    return side, {**held, "against": (str(against), side)}


def _plain(history: list | None) -> list[dict]:
    out = []
    for m in history or []:
        if isinstance(m, dict) and m.get("role") in ("user", "assistant"):
            out.append({"role": m["role"], "content": chat._text(m.get("content"))})
    return out


def respond(prompt: str, base_hist: list | None, tuned_hist: list | None, held: Any, run_dir: str,
            checkpoint: str | None, settings: GenSettings, root: str | Path | None, against: str | None = BASE
            ) -> Iterator[tuple[list, list, Any, str]]:
    """Streams (left history, right history, engine handle, status) — left first, then right. The left pane is
    the base model, or the adapter `against` names (see BASE); the right pane is the run's chosen adapter.

    The two answers are generated one after the other: the shared model's adapter switch is global, so
    interleaving them would mix the two."""
    prompt = (prompt or "").strip()
    base_hist, tuned_hist = _plain(base_hist), _plain(tuned_hist)
    if not prompt:
        yield base_hist, tuned_hist, held, "Type a message first."
        return
    yield base_hist, tuned_hist, held, "Loading the model…"
    engine, held = engine_for(held, run_dir, checkpoint, root)
    other, held = against_for(held, against)
    if other == "base":
        sides = ((engine, False, "Base", base_hist), (engine, True, "Tuned", tuned_hist))
    else:
        left, right = chat.pair_labels(other.spec, engine.spec)
        sides = ((other, True, left, base_hist), (engine, True, right, tuned_hist))
    note = " (1 thread while a run trains)" if engine.threads == 1 else ""
    turn = {"role": "user", "content": prompt}
    for side, tuned, name, hist in sides:
        messages = hist + [turn]
        hist.append(turn)
        hist.append({"role": "assistant", "content": ""})
        for text in side.stream(messages, tuned=tuned, settings=settings):
            hist[-1] = {"role": "assistant", "content": text}
            yield base_hist, tuned_hist, held, f"{name} is answering…{note}"
    yield base_hist, tuned_hist, held, f"Done{note}."


def _score(x: Any, fmt: str) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def stats_markdown(stats: dict) -> str:
    """The comparison's numbers as a few readable lines: losses, closeness, mean EM/F1 over short references."""
    a, b = stats["left"], stats["right"]
    md = (f"On **{stats['n']}** held-out rows ({stats.get('tokens', '?')} answer tokens): eval loss {a} "
          f"**{stats['left_loss']:.4f}** → {b} **{stats['right_loss']:.4f}**; perplexity {a} "
          f"**{stats['left_ppl']:.2f}** → {b} **{stats['right_ppl']:.2f}**.\n\n**{stats['summary']}**")
    if stats["short"]:
        md += (f"\n\nOver the {stats['short']} short references: exact match {a} **{stats['left_em']:.0%}** → {b} "
               f"**{stats['right_em']:.0%}**; token F1 {a} **{stats['left_f1']:.2f}** → {b} "
               f"**{stats['right_f1']:.2f}**.")
    return md


def compare(held: Any, run_dir: str, checkpoint: str | None, n: int, settings: GenSettings,
            root: str | Path | None, progress=None, against: str | None = BASE) -> tuple[pd.DataFrame, str, Path, Any]:
    """(table, stats markdown, CSV path, engine handle) for "Compare on held-out prompts": the left pane's side
    (`against`) against the right pane's adapter. The CSV has the scores as numbers; the table shows them
    rounded, blank for references too long to score."""
    engine, held = engine_for(held, run_dir, checkpoint, root)
    other, held = against_for(held, against)
    df, stats = chat.compare_heldout(engine, run_dir, n=int(n), settings=settings, progress=progress,
                                     against=other)
    name = runs.slug(Path(run_dir).name)
    if other != "base":
        name += f"-vs-{runs.slug(Path(other.run_dir or other.adapter_dir).name)}"
    csv = chat.save_csv(df, scratch_dir("compare") / f"{name}-heldout-compare.csv")
    shown = df.copy()
    for col in df.columns[4:8]:
        shown[col] = [_score(x, ".0f" if col.endswith(" EM") else ".2f") for x in df[col]]
    return shown, stats_markdown(stats), csv, held


# --- the tab --------------------------------------------------------------------------------------

@dataclass
class ChatTab:
    run: gr.Dropdown
    checkpoint: gr.Dropdown
    against: gr.Dropdown  # the left pane: BASE or "RUN_DIR::ADAPTER" (see BASE above)
    refresh: gr.Button
    status: gr.Markdown
    system_prompt: gr.Textbox
    temperature: gr.Slider
    top_p: gr.Slider
    max_new_tokens: gr.Slider
    seed: gr.Number
    base: gr.Chatbot  # the left pane
    tuned: gr.Chatbot  # the right pane
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
                "**Tuned** has your run's adapter on. Same prompt, same settings, same random seed. To compare two "
                "adapters instead, put another checkpoint or run in the left pane.",
                elem_classes="studio-lead")
    with gr.Row():
        run = gr.Dropdown(choices=[], label="Run", info="Runs with a saved adapter or checkpoint.",
                          elem_id="chat-run", scale=3)
        checkpoint = gr.Dropdown(choices=[], label="Adapter", elem_id="chat-checkpoint", scale=2,
                                 info="The right pane: the final adapter or an earlier checkpoint (★ = lowest eval "
                                      "loss, chosen first when it is an earlier checkpoint).")
        against = gr.Dropdown(choices=[(BASE_LABEL, BASE)], value=BASE, label="Left pane", elem_id="chat-against",
                              scale=3, info="The base model, or an adapter of any run on the same base model.")
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
                          placeholder="The left pane's answers appear here.", feedback_options=None)
        tuned = gr.Chatbot(label="Tuned (adapter on)", height=380, elem_id="chat-tuned",
                           placeholder="The fine-tuned answers appear here.", feedback_options=None)
    with gr.Row():
        prompt = gr.Textbox(placeholder="Ask something, e.g. “Why is the sky blue?” — Enter sends", show_label=False,
                            scale=6, elem_id="chat-prompt", lines=1, max_lines=6)
        send = gr.Button("Send", variant="primary", scale=1, elem_id="chat-send")
        clear = gr.Button("Clear", scale=0, min_width=80)
    status = gr.Markdown(elem_id="chat-status")
    with gr.Accordion("Compare on held-out prompts", open=False, elem_id="chat-compare"):
        gr.Markdown("Runs the run's held-out rows (never trained on) through both panes' models and measures the "
                    "loss of the reference answers under each. Where the reference answer is short (at most "
                    f"{chat.SHORT_REFERENCE_WORDS} words), each generated answer is also scored against it, as SQuAD "
                    "does after lower-casing and dropping punctuation, articles and extra spaces: **EM** (exact "
                    "match, 1 or 0) and **F1** (word overlap, 0–1); **closer** names the side with the higher F1. "
                    "Longer references are not scored word for word.")
        with gr.Row():
            n = gr.Slider(1, 32, value=8, step=1, label="Rows to compare", scale=3)
            compare_btn = gr.Button("Compare", variant="secondary", scale=1)
        stats = gr.Markdown()
        table = gr.Dataframe(pd.DataFrame(columns=COMPARE_COLUMNS), interactive=False, wrap=True, max_height=480,
                             column_widths=["16%", "18%", "19%", "19%", "5%", "5%", "5%", "5%", "8%"],
                             elem_id="chat-compare-table")
        csv = gr.File(label="Download as CSV", interactive=False, visible=False)
    engine = gr.State(None)
    return ChatTab(run, checkpoint, against, refresh, status, system_prompt, temperature, top_p, max_new_tokens,
                   seed, base, tuned, prompt, send, clear, n, compare_btn, stats, table, csv, engine)


def _against_update(run_dir: str | None, current: str | None, root: str | Path | None):
    """The "Left pane" dropdown for run_dir: `current` kept when it is still offered, else the base model."""
    choices = against_choices(run_dir, root)
    value = current if current in [v for _, v in choices] else BASE
    return gr.Dropdown(choices=choices, value=value), value


def wire(t: ChatTab, root: str, tab: gr.Tab, demo: gr.Blocks) -> None:
    def refresh(current, against):
        choices = run_choices(root)
        paths = [p for _, p in choices]
        value = current if current in paths else (paths[0] if paths else None)
        return gr.Dropdown(choices=choices, value=value), _against_update(value, against, root)[0]

    def labels(run_dir, ckpt, against):
        try:
            left, right = pane_labels(run_dir, ckpt, against)
        except ValueError:
            left, right = pane_labels(None, None, None)
        return gr.Chatbot(label=left), gr.Chatbot(label=right)

    def on_run(run_dir, against):
        # `against` is kept when the new run offers it: open_pair sets run and against together, and this
        # handler, fired by the run's change, must not undo the pair it chose
        ck, default = checkpoint_options(run_dir)
        sp = ""
        if run_dir:
            try:
                _, cfg, _ = runs.resolve_adapter(run_dir, default)
                sp = cfg.data.system_prompt if cfg is not None else ""
            except ValueError:
                pass
        against_dd, value = _against_update(run_dir, against, root)
        return (gr.Dropdown(choices=ck, value=default), sp, against_dd, *labels(run_dir, default, value))

    for ev in (tab.select, t.refresh.click, demo.load):
        ev(refresh, [t.run, t.against], [t.run, t.against])
    t.run.change(on_run, [t.run, t.against], [t.checkpoint, t.system_prompt, t.against, t.base, t.tuned])
    for comp in (t.checkpoint, t.against):
        comp.change(labels, [t.run, t.checkpoint, t.against], [t.base, t.tuned])

    gen = [t.system_prompt, t.temperature, t.top_p, t.max_new_tokens, t.seed]

    def on_send(prompt, base_hist, tuned_hist, held, run_dir, ckpt, against, *g):
        try:
            settings = settings_from(*g)
            for b, tu, h, msg in respond(prompt, base_hist, tuned_hist, held, run_dir, ckpt, settings, root,
                                         against=against):
                yield b, tu, h, msg, ""
        except Exception as e:  # noqa: BLE001 — the UI boundary: whatever went wrong is said on the page
            gr.Warning(str(e))
            yield gr.skip(), gr.skip(), gr.skip(), box(str(e), "error"), gr.skip()

    ins = [t.prompt, t.base, t.tuned, t.engine, t.run, t.checkpoint, t.against, *gen]
    outs = [t.base, t.tuned, t.engine, t.status, t.prompt]
    t.send.click(on_send, ins, outs)
    t.prompt.submit(on_send, ins, outs)
    t.clear.click(lambda: ([], [], ""), [], [t.base, t.tuned, t.status])

    def on_compare(held, run_dir, ckpt, against, n, *g, progress=gr.Progress()):  # noqa: B008 — gradio's idiom
        try:
            df, md, csv, held = compare(held, run_dir, ckpt, n, settings_from(*g), root,
                                        progress=lambda f, msg: progress(f, desc=msg), against=against)
        except Exception as e:  # noqa: BLE001 — the UI boundary: whatever went wrong is said on the page
            gr.Warning(str(e))
            return gr.skip(), box(str(e), "error"), gr.skip(), gr.skip()
        return df, md, gr.File(str(csv), visible=True), held

    t.compare.click(on_compare, [t.engine, t.run, t.checkpoint, t.against, t.n, *gen],
                    [t.table, t.stats, t.csv, t.engine])
