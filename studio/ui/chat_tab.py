"""Chat tab: one prompt, two panes with the same settings — by default Base (adapter off) on the left and
Tuned (the chosen run's adapter on) on the right; the left pane can instead hold another adapter of the same
base model (another checkpoint, or another run), to compare two adapters with each other.

studio.chat keeps ONE base model in memory; Base is that model inside `disable_adapter()`, so the panes
differ only by the LoRA update; a second adapter is only a second set of LoRA weights on the same base.
The browser's engine handles live in gr.State. While a run is training, generation uses one thread so the
trainer keeps its pace.

Blind A/B: two more panes, titled only "A" and "B", take the same two sides in an order drawn for each prompt; the
order lives in a gr.State on the server, so nothing on the page says which is which until the vote. Votes go to
the right-hand (tuned) run's preferences.jsonl (studio.runs.judgements), the preference data a DPO run starts from; the same
blind voting steps through the held-out comparison's rows, and 👍/👎 on any answer goes to feedback.jsonl.
"""
from __future__ import annotations

import dataclasses
import html
import math
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from studio import chat, runs
from studio.runs import judgements
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


# --- blind A/B votes ---------------------------------------------------------------------------------

PANE_A, PANE_B = "A", "B"  # the blind panes' only titles until the vote
VOTES = (("a", "A is better"), ("b", "B is better"), ("tie", "Tie"), ("both_bad", "Both bad"))
VOTE_WORDS = dict(VOTES)
# os.urandom underneath: which pane holds the adapter cannot be guessed from earlier draws
_RNG = random.SystemRandom()


def vote_labels(run_dir: str | Path, checkpoint: str | None, against: str | None) -> tuple[str, str]:
    """(left side, right side) as votes and feedback name them: BASE_LABEL for the base model, an adapter as
    chat.adapter_label names it ("<run name> (final)", "<run name> (checkpoint-N)"), two adapters as pair_labels
    tells them apart."""
    other = parse_against(against)
    right = (Path(run_dir), checkpoint or runs.FINAL)
    if other is None:
        return BASE_LABEL, chat.adapter_label(*right)
    return chat.pair_labels((Path(other[0]), other[1]), right)


def _with_system(messages: list[dict], settings: GenSettings) -> list[dict]:
    """The conversation as the model is given it: the system prompt first when the settings have one (what
    ChatEngine.encode does), so a saved vote holds the prompt the answers were really made from."""
    sp = settings.system_prompt.strip()
    if sp and not (messages and messages[0]["role"] == "system"):
        return [{"role": "system", "content": sp}, *messages]
    return list(messages)


def _md(text: str) -> str:
    """A label as Markdown text: escaped, so a run named "a*b_c" shows as typed."""
    return re.sub(r"([\\`*_\[\]#|~$])", r"\\\1", html.escape(str(text), quote=False))


def blind_respond(prompt: str, held: Any, run_dir: str, checkpoint: str | None, settings: GenSettings,
                  root: str | Path | None, against: str | None = BASE, rng: random.Random | None = None
                  ) -> Iterator[tuple[list, list, Any, str, dict | None]]:
    """Streams (A history, B history, engine handle, status, pending) for one blind prompt: the left and right
    sides of `respond` answer it with the same settings and seed, in panes A and B in an order drawn from `rng`
    (for each prompt), A first. Nothing yielded for the page names a model; `pending` (None until both have
    answered, for a gr.State) holds the prompt, both answers and which model gave which, for cast_vote.

    One turn per pair: the order is drawn again for the next prompt, so a conversation would mix the models."""
    prompt = (prompt or "").strip()
    if not prompt:
        yield [], [], held, "Type a message first.", None
        return
    yield [], [], held, "Loading the model…", None
    engine, held = engine_for(held, run_dir, checkpoint, root)
    other, held = against_for(held, against)
    left_label, right_label = vote_labels(run_dir, checkpoint, against)
    sides = [((engine, False) if other == "base" else (other, True), left_label), ((engine, True), right_label)]
    if (rng or _RNG).random() < 0.5:
        sides.reverse()
    note = " (1 thread while a run trains)" if engine.threads == 1 else ""
    messages = _with_system([{"role": "user", "content": prompt}], settings)
    hists: tuple[list, list] = ([], [])
    answers = []
    for pane, ((side, tuned), _), hist in zip((PANE_A, PANE_B), sides, hists):
        hist += [{"role": "user", "content": prompt}, {"role": "assistant", "content": ""}]
        for text in side.stream(messages, tuned=tuned, settings=settings):
            hist[-1] = {"role": "assistant", "content": text}
            yield hists[0], hists[1], held, f"{pane} is answering…{note}", None
        answers.append(hist[-1]["content"])
    pending = {"run_dir": str(run_dir), "prompt": messages, "answers": answers,
               "models": [sides[0][1], sides[1][1]], "right": right_label, "settings": dataclasses.asdict(settings),
               "seed": int(settings.seed), "voted": None}
    yield hists[0], hists[1], held, f"Done{note}. Which answer is better? Vote below.", pending


def rates_markdown(run_dir: str | Path | None, first: str | None = None) -> str:
    """The run's votes so far as Markdown: how many, how many a DPO run can use, and one win-rate line per pair
    of models judged ("" when the run has none)."""
    if not run_dir:
        return ""
    votes = judgements.read_votes(run_dir)
    if not votes:
        return ""
    pairs = len(judgements.preference_pairs(votes))
    lines = judgements.win_rate_text(votes, first).splitlines()
    return (f"**Votes on this run:** {len(votes)} ({pairs} with a better answer, which a DPO run learns from)\n\n"
            + "\n".join(f"- {_md(line)}" for line in lines))


def _reveal(models: list[str], vote: str, prefix: str = "") -> str:
    return (f"{prefix}**A** was **{_md(models[0])}**, **B** was **{_md(models[1])}**; your vote: "
            f"{VOTE_WORDS[vote]}.")


def cast_vote(pending: dict | None, vote: str, edited: str | None = None) -> tuple[dict, str, str, str, str]:
    """Save the vote on the pair on show to its run's preferences.jsonl: (pending marked as voted, pane A's title,
    pane B's title, the reveal as Markdown, the run's win rates as Markdown). The titles and the reveal name the
    models. ValueError when there is no pair yet, it has a vote already, or judgements.append_vote refuses."""
    if not pending:
        raise ValueError("There is no pair of answers to vote on yet: send a prompt with Blind A/B on, and wait for "
                         "both answers.")
    if pending.get("voted"):
        raise ValueError("These two answers have your vote already: send the next prompt.")
    rec = judgements.append_vote(pending["run_dir"], pending["prompt"], *pending["answers"], *pending["models"], vote,
                            edited_answer=(edited or "").strip() or None, settings=pending["settings"],
                            seed=pending["seed"], source="chat")
    a, b = pending["models"]
    reveal = _reveal(pending["models"], vote) + (" Saved with your improved answer as the better one."
                                                 if rec["edited"] else "")
    return ({**pending, "voted": vote}, f"{PANE_A} · {a}", f"{PANE_B} · {b}", reveal,
            rates_markdown(pending["run_dir"], pending["right"]))


def feedback(info: dict | None, pane: int, liked: Any, history: list | None = None, index: Any = None) -> str:
    """Save a 👍/👎 on one answer to the run's feedback.jsonl; returns what to say. `info`: a blind pair (from
    blind_respond, pane 0 = A, 1 = B) or what the open panes show (from shown_info, pane 0 = left, 1 = right;
    history and index (gradio's LikeData.index) find the answer and the turns before it). liked is True, False,
    or "" when a thumb is taken back, which the append-only file cannot undo."""
    if liked == "" or liked is None:
        return "Feedback taken back on the page; the line saved before stays in feedback.jsonl."
    if not info:
        raise ValueError("Wait for both answers before rating one.")
    if "answers" in info:  # a blind pair: one answer per pane
        prompt, answer, model = info["prompt"], info["answers"][pane], info["models"][pane]
        name = (PANE_A, PANE_B)[pane]
    else:
        hist = _plain(history)
        i = index[0] if isinstance(index, (list, tuple)) else index
        if not isinstance(i, int) or not 0 <= i < len(hist) or hist[i]["role"] != "assistant":
            raise ValueError("Rate an answer of the model, not a message of yours.")
        prompt = _with_system(hist[:i], GenSettings(**info["settings"]))
        answer, model = hist[i]["content"], info["labels"][pane]
        name = model
    judgements.append_feedback(info["run_dir"], prompt, answer, model, bool(liked), settings=info["settings"],
                          seed=info["seed"])
    return f"{'👍' if liked else '👎'} saved for {name}'s answer in feedback.jsonl."


def shown_info(run_dir: str, checkpoint: str | None, against: str | None, settings: GenSettings) -> dict:
    """What the open (not blind) panes are showing, for feedback: the run, the two sides' names, the settings."""
    return {"run_dir": str(run_dir), "labels": list(vote_labels(run_dir, checkpoint, against)),
            "settings": dataclasses.asdict(settings), "seed": int(settings.seed)}


def train_on_votes(run_dir: str | None, root: str | Path | None) -> str:
    """Start a DPO run on `run_dir`'s votes (studio.runs.launch_dpo) and say so; ValueError/RunError say why not."""
    if not run_dir:
        raise ValueError("Pick the run whose votes to train on.")
    launch = getattr(runs, "launch_dpo", None)
    if launch is None:
        raise ValueError("This version of the studio cannot start a run from votes yet (studio.runs.launch_dpo is "
                         "missing).")
    new = launch(run_dir, root)
    return f"DPO run started: {Path(new).name}; follow it on the Train tab."


def train_on_ratings(run_dir: str | None, root: str | Path | None) -> str:
    """Start a KTO run on `run_dir`'s 👍/👎 ratings (studio.runs.launch_kto) and say so."""
    if not run_dir:
        raise ValueError("Pick the run whose ratings to train on.")
    new = runs.launch_kto(run_dir, root)
    return f"KTO run started: {Path(new).name}; follow it on the Train tab."


# --- blind votes on the held-out comparison's rows ---------------------------------------------------

def _prompt_text(messages: list[dict]) -> str:
    return "\n\n".join(t["content"] for t in messages if t["role"] == "user")


def heldout_prompts(run_dir: str | Path, n: int) -> list[list[dict]]:
    """The turns before the last answer of the run's first n held-out rows with an answer: the prompts
    chat.compare_heldout answers, in its order."""
    from studio.data import read_jsonl
    rows = [m for m in read_jsonl(Path(run_dir) / runs.EVAL_SET) if any(t["role"] == "assistant" for t in m)]
    out = []
    for msgs in rows[:int(n)]:
        last = max(j for j, t in enumerate(msgs) if t["role"] == "assistant")
        out.append(msgs[:last])
    return out


def heldout_vote_state(df: pd.DataFrame, run_dir: str, checkpoint: str | None, against: str | None,
                       settings: GenSettings) -> dict:
    """The held-out comparison's rows ready for blind voting (for a gr.State): each row's prompt (as the models
    were given it) and its (left, right) answers from `df` (compare's table: prompt, reference, left, right, ...),
    the two sides' names and the settings. ValueError when the run's held-out rows no longer match the table."""
    prompts = heldout_prompts(run_dir, len(df))
    if len(prompts) != len(df) or any(_prompt_text(p) != t for p, t in zip(prompts, df["prompt"])):
        raise ValueError("The run's held-out rows changed since this comparison: press Compare again.")
    rows = [{"prompt": _with_system(p, settings), "answers": [str(a), str(b)]}
            for p, a, b in zip(prompts, df.iloc[:, 2], df.iloc[:, 3])]
    left, right = vote_labels(run_dir, checkpoint, against)
    return {"run_dir": str(run_dir), "rows": rows, "labels": [left, right], "order": [], "i": 0,
            "settings": dataclasses.asdict(settings), "seed": int(settings.seed)}


def heldout_start(hv: dict | None, rng: random.Random | None = None) -> dict:
    """Start (again) at the first row, with a fresh A/B order drawn for every row."""
    if not hv or not hv.get("rows"):
        raise ValueError("Compare on held-out prompts first: the votes are on its rows.")
    rng = rng or _RNG
    return {**hv, "order": [rng.random() < 0.5 for _ in hv["rows"]], "i": 0}


def heldout_current(hv: dict | None) -> tuple[str, str, str] | None:
    """(prompt text, answer A, answer B) of the row to judge now, None when every row has a vote."""
    if not hv or not hv.get("order") or hv["i"] >= len(hv["rows"]):
        return None
    row = hv["rows"][hv["i"]]
    a, b = row["answers"][::-1] if hv["order"][hv["i"]] else row["answers"]
    turns = [t for t in row["prompt"] if t["role"] != "system"]
    text = turns[0]["content"] if len(turns) == 1 else "\n\n".join(f"{t['role']}: {t['content']}" for t in turns)
    return text, a, b


def heldout_vote(hv: dict, vote: str) -> tuple[dict, str]:
    """Save the vote on the current row (source "heldout") and move to the next: (state, the reveal of the row
    just judged as Markdown)."""
    if heldout_current(hv) is None:
        raise ValueError("Every row has a vote: press 'Vote on these rows blind' to judge them again.")
    i = hv["i"]
    row = hv["rows"][i]
    swapped = hv["order"][i]
    answers = row["answers"][::-1] if swapped else row["answers"]
    models = hv["labels"][::-1] if swapped else hv["labels"]
    judgements.append_vote(hv["run_dir"], row["prompt"], *answers, *models, vote, settings=hv["settings"], seed=hv["seed"],
                      source="heldout")
    return {**hv, "i": i + 1}, _reveal(models, vote, prefix=f"Row {i + 1}: ")


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
    # blind A/B
    blind: gr.Checkbox
    open_panes: gr.Row  # base + tuned, hidden in blind mode
    blind_panes: gr.Row  # pane_a + pane_b, shown in blind mode
    pane_a: gr.Chatbot
    pane_b: gr.Chatbot
    vote_box: gr.Column
    vote_buttons: list  # [A is better, B is better, Tie, Both bad] (gr.Button), in VOTES order
    edit: gr.Textbox
    reveal: gr.Markdown
    rates: gr.Markdown
    train_votes: gr.Button
    train_ratings: gr.Button
    train_votes_status: gr.Markdown
    pending: gr.State  # the blind pair on show: prompt, answers, which model is A (never sent to the page)
    shown: gr.State  # what the open panes show (shown_info), for 👍/👎
    # blind votes on the held-out rows
    hv_start: gr.Button
    hv_box: gr.Column
    hv_prompt: gr.Textbox
    hv_a: gr.Textbox
    hv_b: gr.Textbox
    hv_buttons: list  # in VOTES order
    hv_note: gr.Markdown
    hv: gr.State  # the compared rows, their A/B order and the row on show (never sent to the page)


def _vote_row(prefix: str, interactive: bool = False) -> list[gr.Button]:
    with gr.Row():
        return [gr.Button(text, size="sm", interactive=interactive, elem_id=f"{prefix}-{kind.replace('_', '-')}",
                          variant="secondary") for kind, text in VOTES]


def build() -> ChatTab:
    gr.Markdown("Ask once, get two answers: **Base** is the model before training (the adapter switched off), "
                "**Tuned** has your run's adapter on. Same prompt, same settings, same random seed. To compare two "
                "adapters instead, put another checkpoint or run in the left pane. With **Blind A/B** on, the two "
                "answers come as A and B in a random order; your votes are saved with the run and can train it "
                "further (DPO).",
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
    blind = gr.Checkbox(False, label="Blind A/B", elem_id="chat-blind",
                        info="Hide which model answers where: the two sides answer as A and B, in a random order "
                             "for each prompt. Vote for the better answer; then you see which was which.")
    # every label, range, step and help text comes from studio.config.GenSettings
    with gr.Accordion("Generation settings (used by both panes)", open=False), gr.Row():
        system_prompt = field_input("gen", "system_prompt", lines=2, scale=3)
        with gr.Column(scale=2):
            temperature = field_input("gen", "temperature")
            top_p = field_input("gen", "top_p")
        with gr.Column(scale=2):
            max_new_tokens = field_input("gen", "max_new_tokens")
            seed = field_input("gen", "seed")
    with gr.Row(equal_height=True) as open_panes:
        base = gr.Chatbot(label="Base (adapter off)", height=380, elem_id="chat-base",
                          placeholder="The left pane's answers appear here.", feedback_options=("Like", "Dislike"))
        tuned = gr.Chatbot(label="Tuned (adapter on)", height=380, elem_id="chat-tuned",
                           placeholder="The fine-tuned answers appear here.", feedback_options=("Like", "Dislike"))
    # neutral ids, titles and placeholders: nothing here may say which side is the adapter before the vote
    with gr.Row(equal_height=True, visible=False) as blind_panes:
        pane_a = gr.Chatbot(label=PANE_A, height=380, elem_id="chat-pane-a", placeholder="Answer A appears here.",
                            feedback_options=("Like", "Dislike"))
        pane_b = gr.Chatbot(label=PANE_B, height=380, elem_id="chat-pane-b", placeholder="Answer B appears here.",
                            feedback_options=("Like", "Dislike"))
    with gr.Row():
        prompt = gr.Textbox(placeholder="Ask something, e.g. “Why is the sky blue?” — Enter sends", show_label=False,
                            scale=6, elem_id="chat-prompt", lines=1, max_lines=6)
        send = gr.Button("Send", variant="primary", scale=1, elem_id="chat-send")
        clear = gr.Button("Clear", scale=0, min_width=80)
    with gr.Column(visible=False, elem_id="chat-vote") as vote_box:
        vote_buttons = _vote_row("chat-vote")
        edit = gr.Textbox(label="Improve the better answer before saving (optional)", lines=2, elem_id="chat-vote-edit",
                          info="Type the answer as it should have been: it is saved as the better answer of the pair.")
        reveal = gr.Markdown(elem_id="chat-vote-reveal")
    status = gr.Markdown(elem_id="chat-status")
    with gr.Accordion("Compare on held-out prompts", open=False, elem_id="chat-compare"):
        gr.Markdown("Runs the run's held-out rows (never trained on) through both panes' models and measures the "
                    "loss of the reference answers under each. Where the reference answer is short (at most "
                    f"{chat.SHORT_REFERENCE_WORDS} words), each generated answer is also scored against it, as SQuAD "
                    "does after lower-casing and dropping punctuation, articles and extra spaces: **EM** (exact "
                    "match, 1 or 0) and **F1** (word overlap, 0–1); **closer** names the side with the higher F1. "
                    "Longer references are not scored word for word.")
        with gr.Row():
            n = gr.Slider(1, 32, value=8, step=1, label="Rows to compare", scale=3, elem_id="chat-compare-n")
            compare_btn = gr.Button("Compare", variant="secondary", scale=1, elem_id="chat-compare-button")
            hv_start = gr.Button("Vote on these rows blind", interactive=False, scale=1, elem_id="chat-hv-start")
        with gr.Column(visible=False, elem_id="chat-hv") as hv_box:
            gr.Markdown("Each row's two answers as A and B, in a random order for each row; the table comes back "
                        "after the last row.")
            hv_prompt = gr.Textbox(label="Prompt", interactive=False, lines=2, max_lines=8, elem_id="chat-hv-prompt")
            with gr.Row(equal_height=True):
                hv_a = gr.Textbox(label=PANE_A, interactive=False, lines=4, max_lines=14, elem_id="chat-hv-a")
                hv_b = gr.Textbox(label=PANE_B, interactive=False, lines=4, max_lines=14, elem_id="chat-hv-b")
            hv_buttons = _vote_row("chat-hv-vote")
        hv_note = gr.Markdown(elem_id="chat-hv-note")
        stats = gr.Markdown()
        table = gr.Dataframe(pd.DataFrame(columns=COMPARE_COLUMNS), interactive=False, wrap=True, max_height=480,
                             column_widths=["16%", "18%", "19%", "19%", "5%", "5%", "5%", "5%", "8%"],
                             elem_id="chat-compare-table")
        csv = gr.File(label="Download as CSV", interactive=False, visible=False)
    with gr.Row(equal_height=True):
        rates = gr.Markdown(elem_id="chat-vote-rates")
        with gr.Column(scale=0, min_width=220):
            train_votes = gr.Button("Train on my votes", size="sm", elem_id="chat-train-votes")
            train_ratings = gr.Button("Train on my 👍/👎 (KTO)", size="sm", elem_id="chat-train-ratings")
            train_votes_status = gr.Markdown(elem_id="chat-train-votes-status")
    engine = gr.State(None)
    return ChatTab(run, checkpoint, against, refresh, status, system_prompt, temperature, top_p, max_new_tokens,
                   seed, base, tuned, prompt, send, clear, n, compare_btn, stats, table, csv, engine,
                   blind=blind, open_panes=open_panes, blind_panes=blind_panes, pane_a=pane_a, pane_b=pane_b,
                   vote_box=vote_box, vote_buttons=vote_buttons, edit=edit, reveal=reveal, rates=rates,
                   train_votes=train_votes, train_ratings=train_ratings, train_votes_status=train_votes_status,
                   pending=gr.State(None),
                   shown=gr.State(None), hv_start=hv_start, hv_box=hv_box, hv_prompt=hv_prompt, hv_a=hv_a, hv_b=hv_b,
                   hv_buttons=hv_buttons, hv_note=hv_note, hv=gr.State(None))


def _against_update(run_dir: str | None, current: str | None, root: str | Path | None):
    """The "Left pane" dropdown for run_dir: `current` kept when it is still offered, else the base model."""
    choices = against_choices(run_dir, root)
    value = current if current in [v for _, v in choices] else BASE
    return gr.Dropdown(choices=choices, value=value), value


def _buttons(on: bool) -> list:
    return [gr.Button(interactive=on) for _ in VOTES]


def _skips(n: int) -> list:
    return [gr.skip() for _ in range(n)]


def hv_view(hv: dict | None, note: str = "") -> list:
    """Updates for [hv_box, hv_prompt, hv_a, hv_b, *hv_buttons, hv_note, stats, table]: the row to judge (the
    comparison's table and numbers hidden meanwhile, as they name the sides), or, once every row has a vote, the
    table back."""
    cur = heldout_current(hv)
    if cur is None:
        return [gr.Column(visible=False), gr.skip(), gr.skip(), gr.skip(), *_buttons(False), note,
                gr.Markdown(visible=True), gr.Dataframe(visible=True)]
    text, a, b = cur
    where = f"Row {hv['i'] + 1} of {len(hv['rows'])}: which answer is better?"
    return [gr.Column(visible=True), gr.Textbox(value=text, label=f"Prompt (row {hv['i'] + 1} of {len(hv['rows'])})"),
            a, b, *_buttons(True), (note + "\n\n" if note else "") + where, gr.Markdown(visible=False),
            gr.Dataframe(visible=False)]


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

    def on_rates(run_dir):
        try:
            return rates_markdown(run_dir)
        except OSError:
            return ""

    t.run.change(on_rates, [t.run], [t.rates])

    gen = [t.system_prompt, t.temperature, t.top_p, t.max_new_tokens, t.seed]
    blind_outs = [t.pane_a, t.pane_b, t.pending, *t.vote_buttons, t.reveal, t.edit]

    def on_send(prompt, base_hist, tuned_hist, held, run_dir, ckpt, against, blind, *g):
        try:
            settings = settings_from(*g)
            if blind and not (prompt or "").strip():  # the pair on show stays, still open to a vote
                yield *_skips(3), "Type a message first.", *_skips(len(blind_outs) + 2)
                return
            if blind:
                # fresh neutral titles and no reveal before the first answer; votes wait for both answers
                first = True
                for a, b, h, msg, pending in blind_respond(prompt, held, run_dir, ckpt, settings, root,
                                                           against=against):
                    head = ([gr.Chatbot(value=a, label=PANE_A), gr.Chatbot(value=b, label=PANE_B)] if first
                            else [a, b])
                    tail = ([None, *_buttons(False), "", ""] if first else
                            [pending, *_buttons(pending is not None), gr.skip(), gr.skip()])
                    first = False
                    yield gr.skip(), gr.skip(), h, msg, "", *head, *tail, gr.skip()
                return
            info = shown_info(run_dir, ckpt, against, settings) if run_dir else None
            for b, tu, h, msg in respond(prompt, base_hist, tuned_hist, held, run_dir, ckpt, settings, root,
                                         against=against):
                yield b, tu, h, msg, "", *_skips(len(blind_outs)), info
        except Exception as e:  # noqa: BLE001 — the UI boundary: whatever went wrong is said on the page
            gr.Warning(str(e))
            yield gr.skip(), gr.skip(), gr.skip(), box(str(e), "error"), *_skips(len(blind_outs) + 2)

    ins = [t.prompt, t.base, t.tuned, t.engine, t.run, t.checkpoint, t.against, t.blind, *gen]
    outs = [t.base, t.tuned, t.engine, t.status, t.prompt, *blind_outs, t.shown]
    t.send.click(on_send, ins, outs)
    t.prompt.submit(on_send, ins, outs)
    t.clear.click(lambda: ([], [], "", gr.Chatbot(value=[], label=PANE_A), gr.Chatbot(value=[], label=PANE_B), None,
                           *_buttons(False), ""),
                  [], [t.base, t.tuned, t.status, t.pane_a, t.pane_b, t.pending, *t.vote_buttons, t.reveal])

    def on_blind(blind, run_dir):
        # each switch starts from empty blind panes: a pair half-seen in one mode is not voted on in the other
        return (gr.Row(visible=not blind), gr.Row(visible=bool(blind)), gr.Column(visible=bool(blind)),
                gr.Chatbot(value=[], label=PANE_A), gr.Chatbot(value=[], label=PANE_B), None, *_buttons(False), "",
                on_rates(run_dir), "")

    t.blind.change(on_blind, [t.blind, t.run],
                   [t.open_panes, t.blind_panes, t.vote_box, t.pane_a, t.pane_b, t.pending, *t.vote_buttons,
                    t.reveal, t.rates, t.status])

    def make_vote(kind):
        def on_vote(pending, edited):
            try:
                pending, title_a, title_b, reveal, rates = cast_vote(pending, kind, edited)
            except Exception as e:  # noqa: BLE001 — the UI boundary: whatever went wrong is said on the page
                gr.Warning(str(e))
                return gr.skip(), gr.skip(), gr.skip(), box(str(e), "error"), *_skips(len(VOTES) + 3)
            saved = f"Vote saved with run {Path(pending['run_dir']).name} ({runs.PREFERENCES}). Send the next prompt."
            return (pending, gr.Chatbot(label=title_a), gr.Chatbot(label=title_b), reveal, *_buttons(False), "",
                    rates, saved)
        return on_vote

    for (kind, _), button in zip(VOTES, t.vote_buttons):
        button.click(make_vote(kind), [t.pending, t.edit],
                     [t.pending, t.pane_a, t.pane_b, t.reveal, *t.vote_buttons, t.edit, t.rates, t.status])

    def make_like(pane: int):
        def on_like(info, hist, data: gr.LikeData):
            try:
                return box(feedback(info, pane, data.liked, hist, data.index), "ok")
            except Exception as e:  # noqa: BLE001 — the UI boundary: whatever went wrong is said on the page
                return box(str(e), "error")
        return on_like

    for pane, comp in enumerate((t.base, t.tuned)):
        comp.like(make_like(pane), [t.shown, comp], [t.status])
    for pane, comp in enumerate((t.pane_a, t.pane_b)):
        comp.like(make_like(pane), [t.pending, comp], [t.status])

    def trainer_of(start):
        def on_click(run_dir):
            try:
                return box(start(run_dir, root), "ok")
            except Exception as e:  # noqa: BLE001 — the UI boundary: whatever went wrong is said on the page
                gr.Warning(str(e))
                return box(str(e), "error")
        return on_click

    t.train_votes.click(trainer_of(train_on_votes), [t.run], [t.train_votes_status])
    t.train_ratings.click(trainer_of(train_on_ratings), [t.run], [t.train_votes_status])

    hv_outs = [t.hv_box, t.hv_prompt, t.hv_a, t.hv_b, *t.hv_buttons, t.hv_note, t.stats, t.table]

    def on_compare(held, run_dir, ckpt, against, n, *g, progress=gr.Progress()):  # noqa: B008 — gradio's idiom
        try:
            settings = settings_from(*g)
            df, md, csv, held = compare(held, run_dir, ckpt, n, settings, root,
                                        progress=lambda f, msg: progress(f, desc=msg), against=against)
        except Exception as e:  # noqa: BLE001 — the UI boundary: whatever went wrong is said on the page
            gr.Warning(str(e))
            return gr.skip(), box(str(e), "error"), *_skips(4), gr.skip()
        try:
            hv = heldout_vote_state(df, run_dir, ckpt, against, settings)
        except (ValueError, OSError):  # the comparison stands; only the blind votes on it are not offered
            hv = None
        return (gr.Dataframe(value=df, visible=True), gr.Markdown(value=md, visible=True),
                gr.File(str(csv), visible=True), held, hv, gr.Button(interactive=hv is not None),
                gr.Column(visible=False))

    t.compare.click(on_compare, [t.engine, t.run, t.checkpoint, t.against, t.n, *gen],
                    [t.table, t.stats, t.csv, t.engine, t.hv, t.hv_start, t.hv_box])

    def on_hv_start(hv):
        try:
            hv = heldout_start(hv)
        except ValueError as e:
            gr.Warning(str(e))
            return gr.skip(), *_skips(len(hv_outs) - 3), box(str(e), "error"), gr.skip(), gr.skip()
        return hv, *hv_view(hv)

    t.hv_start.click(on_hv_start, [t.hv], [t.hv, *hv_outs])

    def make_hv_vote(kind):
        def on_hv_vote(hv):
            try:
                hv, reveal = heldout_vote(hv, kind)
            except Exception as e:  # noqa: BLE001 — the UI boundary: whatever went wrong is said on the page
                gr.Warning(str(e))
                return gr.skip(), *_skips(len(hv_outs) - 3), box(str(e), "error"), gr.skip(), gr.skip(), gr.skip()
            done = heldout_current(hv) is None
            note = reveal + (f"\n\nAll {len(hv['rows'])} rows judged." if done else "")
            return hv, *hv_view(hv, note), rates_markdown(hv["run_dir"], hv["labels"][1])
        return on_hv_vote

    for (kind, _), button in zip(VOTES, t.hv_buttons):
        button.click(make_hv_vote(kind), [t.hv], [t.hv, *hv_outs, t.rates])
