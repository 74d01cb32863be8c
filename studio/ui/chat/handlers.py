"""The Chat tab's side-by-side chat as plain functions: which runs and adapters can be picked, what the two panes
are called, and the two answers to one prompt.

The "Left pane" value (ChatTab.against) is BASE for the base model (the chosen run's adapter switched off),
otherwise "RUN_DIR::ADAPTER": the run folder as run_choices gives it, "::", and the adapter's name as
runs.adapter_choices gives it ("adapter" for the final one, "checkpoint-N"). "" and None mean BASE too.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr

from studio import chat, runs
from studio.chat.labels import unmark
from studio.config import GenSettings

from ..common import pick_run, run_labels, run_names

BASE = "base"
SEP = "::"
BASE_LABEL = "Base model (adapter off)"


def _chattable(root: str | Path | None) -> list[dict]:
    return [r for r in runs.list_runs(root) if r["adapter"] or r["n_checkpoints"]]


def run_choices(root: str | Path | None) -> list[tuple[str, str]]:
    """Runs with something to chat with (a final adapter or at least one checkpoint), labelled by name (run_names)."""
    return run_labels(_chattable(root))


def run_picker(root: str | Path | None, current: str | None = None) -> tuple[list[tuple[str, str]], str | None]:
    """The Run picker's choices and value (common.pick_run): the runs are listed once for both."""
    return pick_run(_chattable(root), current)


def _adapter_label(name: str, best: runs.Best | None) -> str:
    # short enough to be read whole in the pickers at 1400 px ("Checkpoint at step 40 ★ best (eval loss 1.2500)" was
    # cut after "(eval loss 1"); the picker's help says ★ marks the lowest eval loss
    label = "Final adapter" if name == runs.FINAL else f"Checkpoint, step {name.split('-')[-1]}"
    if best is not None and best.name == name:
        label += f" ★ best {best.eval_loss:.3f}"
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
    listed = _chattable(root)
    run_name = run_names(listed, state=False)
    for r in listed:
        if r["path"] != str(run_dir) and not _same_base(r["path"], target):
            continue
        names, _ = runs.adapter_options(Path(r["path"]))
        for _, name in names:
            out.append((f"{run_name[r['path']]} · {_adapter_label(name, r['best'])}", against_value(r["path"], name)))
    return out


def pane_labels(run_dir: str | None, checkpoint: str | None, against: str | None) -> tuple[str, str]:
    """The two panes' titles: "Base (adapter off)" / "Tuned (adapter on)", or the two adapters' names."""
    other = parse_against(against)
    if other is None or not run_dir:
        return "Base (adapter off)", "Tuned (adapter on)"
    return chat.pair_labels((Path(other[0]), other[1]), (Path(run_dir), checkpoint or runs.FINAL))


def default_against(run_dir: str) -> str:
    """The "Left pane" value for a run's default adapter (its best one when that is not its newest, else its newest),
    as open_pair puts it there."""
    return against_value(run_dir, checkpoint_options(run_dir)[1])


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
    value = default_against(run_b)
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
        raise ValueError(f"The Base pane's run {Path(run_dir).name} no longer exists: pick another one.")
    engine = held["engine"]
    kept = held.get("against")
    if kept and kept[0] == str(against) and kept[1].key == engine.key:
        side = kept[1]
    else:
        side = chat.ChatEngine.load(run_dir, adapter, threads=engine.threads, like=engine)
    side.threads = engine.threads
    return side, {**held, "against": (str(against), side)}


def plain_history(history: list | None) -> list[dict]:
    out = []
    for m in history or []:
        if isinstance(m, dict) and m.get("role") in ("user", "assistant"):
            # an answer's "[stopped at N tokens]" mark is for the reader: the model is given its words only
            out.append({"role": m["role"], "content": unmark(chat.content_text(m.get("content")))})
    return out


def with_system(messages: list[dict], settings: GenSettings) -> list[dict]:
    """The conversation as the model is given it: the system prompt first when the settings have one (what
    ChatEngine.encode does), so a saved vote holds the prompt the answers were really made from."""
    sp = settings.system_prompt.strip()
    if sp and not (messages and messages[0]["role"] == "system"):
        return [{"role": "system", "content": sp}, *messages]
    return list(messages)


def respond(prompt: str, base_hist: list | None, tuned_hist: list | None, held: Any, run_dir: str,
            checkpoint: str | None, settings: GenSettings, root: str | Path | None, against: str | None = BASE,
            mark: bool = False) -> Iterator[tuple[list, list, Any, str]]:
    """Streams (left history, right history, engine handle, status) — left first, then right. The left pane is
    the base model, or the adapter `against` names (see BASE); the right pane is the run's chosen adapter.

    The two answers are generated one after the other: the shared model's adapter switch is global, so
    interleaving them would mix the two. mark (the page asks for it): an answer that hit Max new tokens ends in
    "… [stopped at N tokens]" (labels.mark_cut), which plain_history takes off again before the next turn."""
    prompt = (prompt or "").strip()
    base_hist, tuned_hist = plain_history(base_hist), plain_history(tuned_hist)
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
        for text in side.stream(messages, tuned=tuned, settings=settings, mark=mark):
            hist[-1] = {"role": "assistant", "content": text}
            yield base_hist, tuned_hist, held, f"{name} is answering…{note}"
    yield base_hist, tuned_hist, held, f"Done{note}."
