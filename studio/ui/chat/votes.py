"""Blind A/B votes and 👍/👎 ratings as plain functions, and the runs that train on them.

Two panes titled only "A" and "B" take the two sides of the side-by-side chat in an order drawn for each prompt;
the order lives in a gr.State on the server, so nothing on the page says which is which until the vote. Votes go to
the right-hand (tuned) run's preferences.jsonl (studio.runs.judgements), the preference data a DPO run starts from;
👍/👎 on any answer goes to its feedback.jsonl, the rated answers a KTO run starts from.
"""
from __future__ import annotations

import dataclasses
import html
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from studio import chat, runs
from studio.chat.engine import free_gpu
from studio.chat.labels import unmark
from studio.config import GenSettings
from studio.runs import judgements

from .handlers import BASE, BASE_LABEL, against_for, engine_for, parse_against, plain_history, with_system

PANE_A, PANE_B = "A", "B"  # the blind panes' only titles until the vote
VOTES = (("a", "A is better"), ("b", "B is better"), ("tie", "Tie"), ("both_bad", "Both bad"))
VOTE_WORDS = dict(VOTES)
# os.urandom underneath: which pane holds the adapter cannot be guessed from earlier draws
RNG = random.SystemRandom()


def vote_labels(run_dir: str | Path, checkpoint: str | None, against: str | None) -> tuple[str, str]:
    """(left side, right side) as votes and feedback name them: BASE_LABEL for the base model, an adapter as
    chat.adapter_label names it ("<run name> (final)", "<run name> (checkpoint-N)"), two adapters as pair_labels
    tells them apart."""
    other = parse_against(against)
    right = (Path(run_dir), checkpoint or runs.FINAL)
    if other is None:
        return BASE_LABEL, chat.adapter_label(*right)
    return chat.pair_labels((Path(other[0]), other[1]), right)


def _md(text: str) -> str:
    """A label as Markdown text: escaped, so a run named "a*b_c" shows as typed."""
    return re.sub(r"([\\`*_\[\]#|~$])", r"\\\1", html.escape(str(text), quote=False))


def blind_respond(prompt: str, held: Any, run_dir: str, checkpoint: str | None, settings: GenSettings,
                  root: str | Path | None, against: str | None = BASE, rng: random.Random | None = None,
                  mark: bool = False) -> Iterator[tuple[list, list, Any, str, dict | None]]:
    """Streams (A history, B history, engine handle, status, pending) for one blind prompt: the left and right
    sides of `respond` answer it with the same settings and seed, in panes A and B in an order drawn from `rng`
    (for each prompt), A first. Nothing yielded for the page names a model; `pending` (None until both have
    answered, for a gr.State) holds the prompt, both answers and which model gave which, for cast_vote.

    One turn per pair: the order is drawn again for the next prompt, so a conversation would mix the models.
    mark (the page asks for it): an answer cut at Max new tokens shows "… [stopped at N tokens]"; `pending` keeps
    the model's words, which is what a vote saves."""
    prompt = (prompt or "").strip()
    if not prompt:
        yield [], [], held, "Type a message first.", None
        return
    yield [], [], held, "Loading the model…", None
    engine, held = engine_for(held, run_dir, checkpoint, root)
    other, held = against_for(held, against)
    left_label, right_label = vote_labels(run_dir, checkpoint, against)
    sides = [((engine, False) if other == "base" else (other, True), left_label), ((engine, True), right_label)]
    if (rng or RNG).random() < 0.5:
        sides.reverse()
    note = " (1 thread while a run trains)" if engine.threads == 1 else ""
    messages = with_system([{"role": "user", "content": prompt}], settings)
    hists: tuple[list, list] = ([], [])
    answers = []
    for pane, ((side, tuned), _), hist in zip((PANE_A, PANE_B), sides, hists):
        hist += [{"role": "user", "content": prompt}, {"role": "assistant", "content": ""}]
        for text in side.stream(messages, tuned=tuned, settings=settings, mark=mark):
            hist[-1] = {"role": "assistant", "content": text}
            yield hists[0], hists[1], held, f"{pane} is answering…{note}", None
        answers.append(unmark(hist[-1]["content"]))
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


def reveal_markdown(models: list[str], vote: str, prefix: str = "") -> str:
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
    reveal = reveal_markdown(pending["models"], vote) + (" Saved with your improved answer as the better one."
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
        hist = plain_history(history)
        i = index[0] if isinstance(index, (list, tuple)) else index
        if not isinstance(i, int) or not 0 <= i < len(hist) or hist[i]["role"] != "assistant":
            raise ValueError("Rate an answer of the model, not a message of yours.")
        prompt = with_system(hist[:i], GenSettings(**info["settings"]))
        answer, model = hist[i]["content"], info["labels"][pane]
        name = model
    judgements.append_feedback(info["run_dir"], prompt, answer, model, bool(liked), settings=info["settings"],
                               seed=info["seed"])
    return f"{'👍' if liked else '👎'} saved for {name}'s answer in feedback.jsonl."


def shown_info(run_dir: str, checkpoint: str | None, against: str | None, settings: GenSettings) -> dict:
    """What the open (not blind) panes are showing, for feedback: the run, the two sides' names, the settings."""
    return {"run_dir": str(run_dir), "labels": list(vote_labels(run_dir, checkpoint, against)),
            "settings": dataclasses.asdict(settings), "seed": int(settings.seed)}


TRAIN_HELP = (f"**Train on my votes** starts a DPO run: from each vote with a winner it learns to prefer the answer "
              f"you picked over the other one (ties and both-bad votes teach it nothing). **Train on my 👍/👎 (KTO)** "
              f"needs no pairs: KTO learns from single answers, making answers like your 👍 ones more likely and "
              f"answers like your 👎 ones less likely. Each starts from this run's final adapter and needs at least "
              f"{runs.MIN_PAIRS} (KTO: some 👍 and some 👎); fewer teach the model only noise.")


def train_readiness(run_dir: str | Path | None) -> tuple[tuple[str, bool], tuple[str, bool]]:
    """((votes button text, enabled), (ratings button text, enabled)) for the run's feedback so far: enabled from
    runs.MIN_PAIRS votes with a winner (DPO), and MIN_PAIRS ratings with both 👍 and 👎 (KTO), the counts
    runs.dpo_config and runs.kto_config check, shown as "3 / 4 votes" on the buttons."""
    pairs = len(judgements.preference_pairs(judgements.read_votes(run_dir))) if run_dir else 0
    rated = judgements.read_ratings(run_dir) if run_dir else []
    good = sum(f["label"] for f in rated)
    need = runs.MIN_PAIRS
    votes = (f"Train on my votes ({pairs} / {need} votes)", pairs >= need)
    if len(rated) >= need and good in (0, len(rated)):  # enough, but one kind only: KTO needs both
        ratings = (f"Train on my 👍/👎 (KTO) ({len(rated)} all {'👍' if good else '👎'}: rate some "
                   f"{'👎' if good else '👍'} too)", False)
    else:
        ratings = (f"Train on my 👍/👎 (KTO) ({len(rated)} / {need} ratings)", len(rated) >= need)
    return votes, ratings


def train_on_votes(run_dir: str | None, root: str | Path | None) -> str:
    """Start a DPO run on `run_dir`'s votes (studio.runs.launch_dpo) and say so; ValueError/RunError say why not."""
    if not run_dir:
        raise ValueError("Pick the run whose votes to train on.")
    launch = getattr(runs, "launch_dpo", None)
    if launch is None:
        raise ValueError("This version of the studio cannot start a run from votes yet (studio.runs.launch_dpo is "
                         "missing).")
    new = launch(run_dir, root)
    freed = free_gpu("the DPO run")
    return f"DPO run started: {Path(new).name}; follow it on the Train tab." + (f" {freed}" if freed else "")


def train_on_ratings(run_dir: str | None, root: str | Path | None) -> str:
    """Start a KTO run on `run_dir`'s 👍/👎 ratings (studio.runs.launch_kto) and say so."""
    if not run_dir:
        raise ValueError("Pick the run whose ratings to train on.")
    new = runs.launch_kto(run_dir, root)
    freed = free_gpu("the KTO run")
    return f"KTO run started: {Path(new).name}; follow it on the Train tab." + (f" {freed}" if freed else "")

