"""The Chat tab as a newcomer meets it (issue 23, items 5, 6, 10, 11), as plain functions: pickers that name runs,
a held-out comparison whose percentage counts rows done and that Cancel stops with the rows kept, fewer rows on a
CPU, an answer cut at Max new tokens marked (on the page only), and "Train on my votes" waiting for enough votes."""
from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest

from studio import runs
from studio.chat.labels import mark_cut, unmark
from studio.config import GenSettings, RunConfig
from studio.runs import judgements
from tests.helpers import handler, wired

QUESTIONS = ["What is 2+2?", "Name a colour.", "Say hi.", "Count to three."]


def _eval_run(tmp_path: Path, n: int = 3) -> Path:
    """A folder with only a held-out set of n one-turn rows (short references), as compare_heldout reads it."""
    run = tmp_path / "20260101-000001-heldout"
    run.mkdir()
    rows = [[{"role": "user", "content": q}, {"role": "assistant", "content": "four"}] for q in QUESTIONS[:n]]
    (run / runs.EVAL_SET).write_text("".join(json.dumps({"messages": m}) + "\n" for m in rows), encoding="utf-8")
    RunConfig().save(run / runs.CONFIG)  # a run folder, so votes and ratings can be saved in it
    return run


class FakeEngine:
    """What compare_heldout asks of an engine, without a model: answers "four" (the right side's cut at the token
    limit), a loss of 1 per token; `on_answer(k, stop)` runs before the k-th answer (from 0)."""

    def __init__(self, on_answer=None):
        self.cfg, self.key, self.run_dir, self.calls = None, ("fake",), None, 0
        self.on_answer = on_answer

    def answer(self, messages, tuned=True, settings=None, stop=None):
        if self.on_answer:
            self.on_answer(self.calls, stop)
        self.calls += 1
        return "four", tuned

    def default_settings(self):
        return GenSettings()

    def loss(self, examples, tuned, max_length=None):
        return float(len(examples)), len(examples)


def test_progress_counts_rows_done_and_cancel_keeps_them(tmp_path):
    from studio.chat import compare_heldout

    run = _eval_run(tmp_path)
    seen = []
    df, stats = compare_heldout(FakeEngine(), run, n=3, settings=GenSettings(max_new_tokens=8),
                                progress=lambda f, msg: seen.append((round(f, 3), msg)))
    # "row 2 of 3" shows 33.3% (one row of three done), not 25%
    assert seen[:3] == [(0.0, "Answering held-out row 1 of 3"), (0.333, "Answering held-out row 2 of 3"),
                        (0.667, "Answering held-out row 3 of 3")]
    assert seen[3][0] == 1.0 and "measuring the loss" in seen[3][1]
    assert stats["cancelled"] == 0 and stats["cut"] == {"left": [False] * 3, "right": [True] * 3}
    assert df["tuned"].tolist() == ["four"] * 3  # the table's data stays the model's words; the UI marks them

    # Cancel between rows: set as row 3 starts, rows 1 and 2 are kept, scored and measured
    stop = threading.Event()
    df, stats = compare_heldout(FakeEngine(), run, n=3, cancel=stop,
                                progress=lambda f, msg: stop.set() if "row 3" in msg else None)
    assert len(df) == 2 and stats["n"] == 2 and stats["cancelled"] == 3 and stats["right_loss"] == 1.0

    # Cancel inside a row (between tokens): that row's half answers are dropped
    stop = threading.Event()
    engine = FakeEngine(on_answer=lambda k, s: s.set() if k == 3 else None)  # row 2's second answer
    df, stats = compare_heldout(engine, run, n=3, cancel=stop)
    assert len(df) == 1 and stats["cancelled"] == 3 and engine.calls == 4

    stop = threading.Event()
    stop.set()
    with pytest.raises(ValueError, match="Cancelled before the first held-out row"):
        compare_heldout(FakeEngine(), run, n=3, cancel=stop)


def test_compare_handler_shows_cancel_and_keeps_the_rows_done(tmp_path, monkeypatch):
    """The Compare click yields the Cancel event first (Cancel shown, Compare held); Cancel sets it; the rows done
    come back with Cancel hidden again."""
    import pandas as pd

    from studio.ui.chat import wiring

    def fake_compare(held, run_dir, ckpt, n, settings, root, progress=None, against=None, cancel=None, mark=False):
        assert mark, "the page shows answers cut at Max new tokens marked"
        assert cancel.is_set(), "Cancel reached the running comparison"
        df = pd.DataFrame([{"prompt": "q", "reference": "r", "base": "a", "tuned": "b"}])
        (tmp_path / "x.csv").write_text(df.to_csv(index=False), encoding="utf-8")
        return df, "Cancelled: these are the first 1 of the 3 rows asked for.", tmp_path / "x.csv", held

    monkeypatch.setattr(wiring, "compare", fake_compare)
    demo, t = wired(tmp_path)
    run = handler(demo, t.compare, "click").fn(None, str(tmp_path), "adapter", "base", 3, "", 0.0, 0.9, 8, 0)
    first = next(run)
    stop, cancel, compare = first[7], first[8], first[9]
    assert isinstance(stop, threading.Event) and cancel.visible is True and compare.interactive is False
    pressed = handler(demo, t.cancel, "click").fn(stop)
    assert stop.is_set() and pressed.interactive is False
    last = list(run)[-1]
    assert last[0].value["data"] == [["q", "r", "a", "b"]] and "Cancelled" in last[1].value
    assert last[7] is None and last[8].visible is False and last[9].interactive is True


def test_heldout_marks_cut_answers_on_show_and_votes_keep_the_words(tmp_path):
    import pandas as pd

    from studio.ui.chat import handlers, heldout

    run = _eval_run(tmp_path, 2)
    marked = mark_cut("four", 8)
    assert marked == "four … [stopped at 8 tokens]" and unmark(marked) == "four" and unmark("four") == "four"
    df = pd.DataFrame({"prompt": QUESTIONS[:2], "reference": ["four"] * 2, "base": ["four", "4"],
                       "tuned": [marked, "four"]})
    hv = heldout.heldout_start(heldout.heldout_vote_state(df, str(run), "adapter", handlers.BASE, GenSettings()))
    assert hv["rows"][0]["answers"] == ["four", "four"] and hv["rows"][0]["shown"] == ["four", marked]
    _, a, b = heldout.heldout_current(hv)
    assert {a, b} == {"four", marked}  # the judge sees the mark ...
    heldout.heldout_vote(hv, "a")
    (vote,) = judgements.read_votes(run)
    assert "stopped at" not in json.dumps(vote)  # ... the preference data never holds it


def test_fewer_rows_by_default_on_a_cpu(monkeypatch):
    from studio.env import devices
    from studio.ui.chat import layout

    monkeypatch.setattr(devices, "gpus_present", lambda: 0)
    assert layout.default_rows() == 3
    monkeypatch.setattr(devices, "gpus_present", lambda: 1)
    assert layout.default_rows() == 8


def _vote(run: Path, vote: str) -> None:
    judgements.append_vote(run, [{"role": "user", "content": "Hi"}], "Arr.", "Hello.", "m1", "m2", vote)


def test_train_buttons_wait_for_enough_votes_and_ratings(tmp_path):
    from studio.ui.chat import layout, votes, wiring

    run = _eval_run(tmp_path)
    need = runs.MIN_PAIRS
    for v in ["a", "b", "tie", "a"][:need]:  # 3 with a winner, 1 tie (which DPO cannot learn from)
        _vote(run, v)
    (votes_text, votes_ok), (ratings_text, ratings_ok) = votes.train_readiness(run)
    assert votes_text == f"Train on my votes (3 / {need} votes)" and votes_ok is False
    assert ratings_text.endswith(f"(0 / {need} ratings)") and ratings_ok is False
    _vote(run, "b")
    assert votes.train_readiness(run)[0] == (f"Train on my votes ({need} / {need} votes)", True)

    for _ in range(need):
        judgements.append_feedback(run, [{"role": "user", "content": "Hi"}], "Arr.", "m1", True)
    text, ok = votes.train_readiness(run)[1]
    assert ok is False and "rate some 👎 too" in text  # KTO needs both kinds
    judgements.append_feedback(run, [{"role": "user", "content": "Hi"}], "Hello.", "m1", False)
    assert votes.train_readiness(run)[1] == (f"Train on my 👍/👎 (KTO) ({need + 1} / {need} ratings)", True)

    rates, b_votes, b_ratings = wiring.feedback_view(str(run))
    assert b_votes.interactive is True and b_ratings.interactive is True and "Votes on this run" in rates
    # on the page: disabled until a run with enough is picked, and the help says what KTO does in plain words
    _, t = wired(tmp_path)
    assert t.train_votes.interactive is False and t.train_ratings.interactive is False
    assert "KTO learns from single answers" in layout.TRAIN_HELP and str(need) in layout.TRAIN_HELP


def test_one_naming_in_the_chat_tab(tmp_path):
    """Base and Tuned name the two sides everywhere on the tab; A and B only the blind panes; never left/right."""
    from studio.ui.chat import layout

    _, t = wired(tmp_path)
    assert (t.against.label, t.checkpoint.label) == ("Base pane", "Tuned pane")
    assert (t.base.label, t.tuned.label) == ("Base (adapter off)", "Tuned (adapter on)")
    words = " ".join([layout.LEAD, layout.BLIND_NOTE, layout.COMPARE_NOTE, t.against.info, t.checkpoint.info,
                      t.blind.info, t.base.placeholder, t.tuned.placeholder]).lower()
    assert "left" not in words and "right" not in words, words
    assert "base and tuned answer as a and b" in words


@pytest.fixture
def named_runs(tmp_path, trained_run):
    """Three copies of the tiny run: two named "bio-lr2e-4" (the same name), one "bio-lr1e-3"."""
    root = tmp_path / "runs"
    root.mkdir()
    for rid, name in (("20261202-174314-a", "bio-lr2e-4"), ("20261202-174315-b", "bio-lr2e-4"),
                      ("20261202-174316-c", "bio-lr1e-3")):
        shutil.copytree(trained_run, root / rid, ignore=shutil.ignore_patterns("exports", "optimizer.pt"))
        (root / rid / runs.RUN_INFO).write_text(json.dumps({"name": name}), encoding="utf-8")
    return root


def test_pickers_name_runs_not_ids(named_runs):
    from studio.ui.chat import handlers

    labels = dict((v, lab) for lab, v in handlers.run_choices(named_runs))
    c = str(named_runs / "20261202-174316-c")
    assert labels[c] == "bio-lr1e-3"  # a name of its own: no id
    assert sorted(lab for v, lab in labels.items() if v != c) == ["bio-lr2e-4 (20261202-174314-a)",
                                                                 "bio-lr2e-4 (20261202-174315-b)"]
    against = [lab for lab, _ in handlers.against_choices(c, named_runs)]
    assert against[0] == handlers.BASE_LABEL
    assert "bio-lr1e-3 · Final adapter" in [a.split(" ★")[0] for a in against]
    assert not any(a.startswith("bio-lr1e-3 (") for a in against)


def test_a_chat_answer_cut_at_the_limit_is_marked_and_not_sent_back(trained_run, tmp_path):
    from studio import chat
    from studio.ui.chat import handlers

    settings = GenSettings(max_new_tokens=4, temperature=0.0)
    q = [{"role": "user", "content": "Why is the sky blue?"}]
    engine = chat.ChatEngine.load(trained_run)
    text, cut = engine.answer(q, settings=settings)
    assert cut and text == engine.generate(q, settings=settings)  # 4 tokens of a random tiny model: no eos
    assert list(engine.stream(q, settings=settings, mark=True))[-1] == mark_cut(text, 4)
    stop = threading.Event()
    stop.set()
    assert len(engine.generate_ids(q, settings=settings)) == 4
    assert engine.answer(q, settings=settings, stop=stop) == (engine.answer(q, settings=settings, stop=stop)[0], False)

    *_, (left, right, held, status) = handlers.respond("Why is the sky blue?", [], [], None, str(trained_run),
                                                        "adapter", settings, tmp_path, mark=True)
    assert right[-1]["content"] == mark_cut(text, 4) and right[-1]["content"].endswith("[stopped at 4 tokens]")
    # the next turn gives the model its own words, not the page's mark
    assert handlers.plain_history(right)[-1]["content"] == text
    # the page asks for the marks (mark=True in wiring; tests/test_browser_chat_layout.py sees them there); the
    # plain functions give the model's words
    *_, (_, right, _, _) = handlers.respond("Why is the sky blue?", [], [], held, str(trained_run), "adapter",
                                            settings, tmp_path)
    assert right[-1]["content"] == text



def test_a_blind_answer_cut_at_the_limit_is_marked_but_the_vote_saves_the_words(trained_run, tmp_path):
    import random

    from studio.ui.chat import votes

    run = tmp_path / "20260101-000001-blind"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("exports", "optimizer.pt"))
    settings = GenSettings(max_new_tokens=4, temperature=0.0)
    *_, (a, b, _, _, pending) = votes.blind_respond("Hi", None, str(run), "adapter", settings, tmp_path,
                                                    rng=random.Random(1), mark=True)
    assert a[-1]["content"].endswith("[stopped at 4 tokens]") and b[-1]["content"].endswith("[stopped at 4 tokens]")
    assert pending["answers"] == [unmark(a[-1]["content"]), unmark(b[-1]["content"])]
    votes.cast_vote(pending, "a")
    assert "stopped at" not in (run / runs.PREFERENCES).read_text(encoding="utf-8")
