"""The Chat tab's events, one function per feature: the run and pane pickers, the side-by-side chat, the blind
vote, the 👍/👎 ratings, training on votes or ratings, and the held-out comparison; `wire` attaches them all.
"""
from __future__ import annotations

import threading
from pathlib import Path

import gradio as gr

from studio import runs

from ..common import box, files_key
from .handlers import BASE, against_choices, checkpoint_options, pane_labels, respond, run_picker, settings_from
from .heldout import column_widths, compare, heldout_current, heldout_start, heldout_vote, heldout_vote_state
from .layout import ChatTab
from .votes import (PANE_A, PANE_B, VOTES, blind_respond, cast_vote, feedback, rates_markdown, shown_info,
                    train_on_ratings, train_on_votes, train_readiness)


def _against_update(run_dir: str | None, current: str | None, root: str | Path | None):
    """The "Left pane" dropdown for run_dir: `current` kept when it is still offered, else the base model."""
    choices = against_choices(run_dir, root)
    value = current if current in [v for _, v in choices] else BASE
    return gr.Dropdown(choices=choices, value=value), value


def _chosen(run_dir: str | None, against: str | None, pair: dict | None) -> str | None:
    """The left pane to keep for run_dir: the one "Open in Chat" chose for it, else the page's. The pair is read on
    the server: a change event fired by the run's new value can read the page before the left pane's new value has
    landed there (seen in Chromium under load), and must not undo the pair."""
    return pair["against"] if pair and pair.get("run") == run_dir else against


def _buttons(on: bool) -> list:
    return [gr.Button(interactive=on) for _ in VOTES]


def _skips(n: int) -> list:
    return [gr.skip() for _ in range(n)]


def on_rates(run_dir: str | None) -> str:
    try:
        return rates_markdown(run_dir)
    except OSError:
        return ""


def train_buttons(run_dir: str | None) -> list:
    """Updates for [train_votes, train_ratings]: each enabled only once the run has enough votes (ratings), its text
    saying how many of how many ("3 / 4 votes")."""
    try:
        (votes_text, votes_ok), (ratings_text, ratings_ok) = train_readiness(run_dir)
    except OSError:  # a file being written or gone: the next poll reads it again
        return [gr.skip(), gr.skip()]
    return [gr.Button(value=votes_text, interactive=votes_ok), gr.Button(value=ratings_text, interactive=ratings_ok)]


def feedback_view(run_dir: str | None) -> list:
    """Updates for [rates, train_votes, train_ratings]: the run's win rates and train_buttons."""
    return [on_rates(run_dir), *train_buttons(run_dir)]


def feedback_key(run_dir: str | None) -> tuple:
    """Changes whenever the run's votes or ratings may have: the two files' sizes and times."""
    return files_key(run_dir, (runs.PREFERENCES, runs.FEEDBACK))


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


def wire_pickers(t: ChatTab, root: str, tab: gr.Tab, demo: gr.Blocks) -> None:
    """Run, adapter and left pane: the lists, the panes' titles, the run's system prompt and vote counts."""
    def refresh(current, against, pair=None):
        # the run with the best eval loss among those on the newest run's held-out rows first (issue 23, item 8)
        choices, value = run_picker(root, current)
        return gr.Dropdown(choices=choices, value=value), _against_update(value, _chosen(value, against, pair),
                                                                          root)[0]

    def labels(run_dir, ckpt, against):
        try:
            left, right = pane_labels(run_dir, ckpt, against)
        except ValueError:
            left, right = pane_labels(None, None, None)
        return gr.Chatbot(label=left), gr.Chatbot(label=right)

    def on_run(run_dir, against, pair=None):
        # `against` is kept when the new run offers it: open_pair sets run and against together, and this
        # handler, fired by the run's change, must not undo the pair it chose
        against = _chosen(run_dir, against, pair)
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
        ev(refresh, [t.run, t.against, t.pair], [t.run, t.against])
    t.run.change(on_run, [t.run, t.against, t.pair], [t.checkpoint, t.system_prompt, t.against, t.base, t.tuned])
    for comp in (t.run, t.against):  # the user's own pick (input, not change: never fired by an update) ends the pair
        comp.input(lambda: None, [], t.pair)
    for comp in (t.checkpoint, t.against):
        comp.change(labels, [t.run, t.checkpoint, t.against], [t.base, t.tuned])
    feedback_outs = [t.rates, t.train_votes, t.train_ratings]
    t.run.change(feedback_view, [t.run], feedback_outs)
    # votes and ratings come from this page, and from any other browser on the same run
    def on_poll(run_dir, seen):  # two file stats on an idle tick; read and sent only when a file changed
        key = feedback_key(run_dir)
        return [gr.skip()] * (len(feedback_outs) + 1) if key == seen else [*feedback_view(run_dir), key]

    t.poll.tick(on_poll, [t.run, t.feedback_seen], [*feedback_outs, t.feedback_seen], show_progress="hidden")


def _blind_outs(t: ChatTab) -> list:
    return [t.pane_a, t.pane_b, t.pending, *t.vote_buttons, t.reveal, t.edit]


def wire_side_by_side(t: ChatTab, root: str) -> None:
    """Send (open panes, or blind A/B panes when Blind A/B is on) and Clear."""
    blind_outs = _blind_outs(t)

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
                                                           against=against, mark=True):
                    head = ([gr.Chatbot(value=a, label=PANE_A), gr.Chatbot(value=b, label=PANE_B)] if first
                            else [a, b])
                    tail = ([None, *_buttons(False), "", ""] if first else
                            [pending, *_buttons(pending is not None), gr.skip(), gr.skip()])
                    first = False
                    yield gr.skip(), gr.skip(), h, msg, "", *head, *tail, gr.skip()
                return
            info = shown_info(run_dir, ckpt, against, settings) if run_dir else None
            for b, tu, h, msg in respond(prompt, base_hist, tuned_hist, held, run_dir, ckpt, settings, root,
                                         against=against, mark=True):
                yield b, tu, h, msg, "", *_skips(len(blind_outs)), info
        except Exception as e:  # noqa: BLE001 — the UI boundary: whatever went wrong is said on the page
            gr.Warning(str(e))
            yield gr.skip(), gr.skip(), gr.skip(), box(str(e), "error"), *_skips(len(blind_outs) + 2)

    ins = [t.prompt, t.base, t.tuned, t.engine, t.run, t.checkpoint, t.against, t.blind, *t.generation()]
    outs = [t.base, t.tuned, t.engine, t.status, t.prompt, *blind_outs, t.shown]
    t.send.click(on_send, ins, outs)
    t.prompt.submit(on_send, ins, outs)
    t.clear.click(lambda: ([], [], "", gr.Chatbot(value=[], label=PANE_A), gr.Chatbot(value=[], label=PANE_B), None,
                           *_buttons(False), ""),
                  [], [t.base, t.tuned, t.status, t.pane_a, t.pane_b, t.pending, *t.vote_buttons, t.reveal])


def wire_blind_vote(t: ChatTab) -> None:
    """The Blind A/B switch and the four vote buttons under the blind panes."""
    def on_blind(blind, run_dir):
        # each switch starts from empty blind panes: a pair half-seen in one mode is not voted on in the other
        return (gr.Column(visible=not blind), gr.Column(visible=bool(blind)), gr.Column(visible=bool(blind)),
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
                     [t.pending, t.pane_a, t.pane_b, t.reveal, *t.vote_buttons, t.edit, t.rates, t.status]
                     ).then(train_buttons, [t.run], [t.train_votes, t.train_ratings], show_progress="hidden")


def wire_ratings(t: ChatTab) -> None:
    """👍/👎 on any answer, open or blind, to the run's feedback.jsonl."""
    def make_like(pane: int):
        def on_like(info, hist, data: gr.LikeData):
            try:
                return box(feedback(info, pane, data.liked, hist, data.index), "ok")
            except Exception as e:  # noqa: BLE001 — the UI boundary: whatever went wrong is said on the page
                return box(str(e), "error")
        return on_like

    for pane, comp in enumerate((t.base, t.tuned)):
        comp.like(make_like(pane), [t.shown, comp], [t.status]).then(
            train_buttons, [t.run], [t.train_votes, t.train_ratings], show_progress="hidden")
    for pane, comp in enumerate((t.pane_a, t.pane_b)):
        comp.like(make_like(pane), [t.pending, comp], [t.status]).then(
            train_buttons, [t.run], [t.train_votes, t.train_ratings], show_progress="hidden")


def wire_train_on_feedback(t: ChatTab, root: str) -> None:
    """Train on my votes (DPO) and Train on my thumbs up/down (KTO): a new run from the chosen run's adapter."""
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


def wire_heldout(t: ChatTab, root: str) -> None:
    """Compare on held-out prompts, then blind votes stepping through the compared rows."""
    hv_outs = [t.hv_box, t.hv_prompt, t.hv_a, t.hv_b, *t.hv_buttons, t.hv_note, t.stats, t.table]

    def on_compare(held, run_dir, ckpt, against, n, *g, progress=gr.Progress()):  # noqa: B008 — gradio's idiom
        # outputs: table, stats, csv, engine, hv, hv_start, hv_box, stop, cancel, compare
        stop = threading.Event()
        # first the event where Cancel finds it (a yielded State is stored at once), Cancel shown, Compare held
        yield (*_skips(7), stop, gr.Button(visible=True, interactive=True, value="Cancel"),
               gr.Button(interactive=False))
        idle = (None, gr.Button(visible=False), gr.Button(interactive=True))
        try:
            settings = settings_from(*g)
            df, md, csv, held = compare(held, run_dir, ckpt, n, settings, root, against=against, cancel=stop,
                                        progress=lambda f, msg: progress(f, desc=msg), mark=True)
        except Exception as e:  # noqa: BLE001 — the UI boundary: whatever went wrong is said on the page
            if not stop.is_set():
                gr.Warning(str(e))
            yield gr.skip(), box(str(e), "info" if stop.is_set() else "error"), *_skips(5), *idle
            return
        try:
            hv = heldout_vote_state(df, run_dir, ckpt, against, settings)
        except (ValueError, OSError):  # the comparison stands; only the blind votes on it are not offered
            hv = None
        yield (gr.Dataframe(value=df, visible=True, column_widths=column_widths(len(df.columns))),
               gr.Markdown(value=md, visible=True),
               gr.File(str(csv), visible=True), held, hv, gr.Button(interactive=hv is not None),
               gr.Column(visible=False), *idle)

    def on_cancel(stop):
        if stop is not None:
            stop.set()  # compare_heldout ends the answer being written and keeps the rows done
        return gr.Button(interactive=False, value="Cancelling…")

    t.compare.click(on_compare, [t.engine, t.run, t.checkpoint, t.against, t.n, *t.generation()],
                    [t.table, t.stats, t.csv, t.engine, t.hv, t.hv_start, t.hv_box, t.stop, t.cancel, t.compare],
                    show_progress_on=[t.table])
    t.cancel.click(on_cancel, [t.stop], [t.cancel], show_progress="hidden")

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
        button.click(make_hv_vote(kind), [t.hv], [t.hv, *hv_outs, t.rates]).then(
            train_buttons, [t.run], [t.train_votes, t.train_ratings], show_progress="hidden")


def wire(t: ChatTab, root: str, tab: gr.Tab, demo: gr.Blocks) -> None:
    """Every event of the Chat tab; `tab` and `demo` refresh the run list when the tab is shown or the page loads."""
    wire_pickers(t, root, tab, demo)
    wire_side_by_side(t, root)
    wire_blind_vote(t)
    wire_ratings(t)
    wire_train_on_feedback(t, root)
    wire_heldout(t, root)
