"""Blind A/B votes and single-answer feedback: what preferences.jsonl / feedback.jsonl hold, that nothing else in
the run folder changes, the win rates against a hand computation, and the Chat tab's blind handlers: a random
(seedable) order, and no model named on the page before the vote."""
from __future__ import annotations

import hashlib
import json
import random
import shutil
from pathlib import Path

import pytest

from studio import runs
from studio.runs import judgements
from tests.helpers import handler, wired

PROMPT = [{"role": "system", "content": "Talk like a pirate."}, {"role": "user", "content": "Why is the sky blue?"}]
SETTINGS = {"system_prompt": "Talk like a pirate.", "temperature": 0.0, "top_p": 0.9, "max_new_tokens": 8, "seed": 3}


def _digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def run_copy(tmp_path, trained_run) -> Path:
    """The shared finished run, copied under a runs root (votes are written into it)."""
    dst = tmp_path / "runs" / "20260101-000001-vote"
    shutil.copytree(trained_run, dst, ignore=shutil.ignore_patterns("exports", "optimizer.pt"))
    return dst


def test_each_vote_kind_is_written_and_read_back_and_nothing_else_changes(run_copy):
    before = _digest(run_copy)
    a = judgements.append_vote(run_copy, PROMPT, "Rayleigh scattering.", "Because.", "pirate (final)", "base", "a",
                          settings=SETTINGS, seed=3)
    b = judgements.append_vote(run_copy, PROMPT, "Because.", "Rayleigh scattering.", "base", "pirate (final)", "b",
                          seed=4, source="heldout")
    tie = judgements.append_vote(run_copy, PROMPT, "x", "y", "base", "pirate (final)", "tie")
    bad = judgements.append_vote(run_copy, PROMPT, "x", "y", "pirate (final)", "base", "both_bad", edited_answer="  ")
    ed = judgements.append_vote(run_copy, PROMPT, "Blue light.", "Because.", "pirate (final)", "base", "a",
                           edited_answer="  Arr, blue light scatters most.\n")
    same = judgements.append_vote(run_copy, PROMPT, "Because.", "Blue light.", "base", "pirate (final)", "b",
                             edited_answer="Blue light.")
    after = _digest(run_copy)
    assert set(after) - set(before) == {runs.PREFERENCES}
    assert {k: v for k, v in after.items() if k != runs.PREFERENCES} == before

    lines = (run_copy / runs.PREFERENCES).read_text(encoding="utf-8").splitlines()
    assert len(lines) == 6
    votes = judgements.read_votes(run_copy)
    assert votes == [a, b, tie, bad, ed, same] == [json.loads(x) for x in lines]
    keys = {"prompt", "chosen", "rejected", "vote", "models", "chosen_model", "rejected_model", "edited", "settings",
            "seed", "time", "source"}
    assert all(set(v) == keys for v in votes)
    assert a["prompt"] == PROMPT and a["vote"] == "a" and a["models"] == ["pirate (final)", "base"]
    assert a["chosen"] == [{"role": "assistant", "content": "Rayleigh scattering."}]
    assert a["rejected"] == [{"role": "assistant", "content": "Because."}]
    assert (a["chosen_model"], a["rejected_model"], a["edited"], a["seed"], a["source"]) == \
        ("pirate (final)", "base", False, 3, "chat")
    assert a["settings"] == SETTINGS and isinstance(a["time"], float)
    assert (b["chosen"][0]["content"], b["chosen_model"], b["rejected_model"], b["source"]) == \
        ("Rayleigh scattering.", "pirate (final)", "base", "heldout")
    for v in (tie, bad):
        assert v["chosen"] is None and v["rejected"] is None and v["chosen_model"] is None and not v["edited"]
    assert bad["vote"] == "both_bad" and tie["settings"]["max_new_tokens"] == 128  # defaults when none given
    assert ed["chosen"] == [{"role": "assistant", "content": "Arr, blue light scatters most."}] and ed["edited"]
    assert ed["rejected"][0]["content"] == "Because." and ed["chosen_model"] == "pirate (final)"
    assert same["chosen"][0]["content"] == "Blue light." and not same["edited"]  # the same text is not an edit
    assert len(judgements.preference_pairs(votes)) == 4

    # a torn last line (a crash mid-write) is skipped, and the next vote is still a whole line of its own
    with open(run_copy / runs.PREFERENCES, "a", encoding="utf-8") as f:
        f.write('{"prompt": [{"role": "user", "con')
    assert judgements.read_votes(run_copy) == votes
    nxt = judgements.append_vote(run_copy, PROMPT, "x", "y", "base", "pirate (final)", "a")
    assert judgements.read_votes(run_copy) == [*votes, nxt]


def test_bad_votes_are_refused_with_a_sentence_and_nothing_is_written(run_copy, tmp_path):
    good = dict(run_dir=run_copy, prompt_messages=PROMPT, answer_a="x", answer_b="y", model_a="base",
                model_b="pirate (final)", vote="a")
    cases = [({"vote": "A"}, "one of a, b, tie, both_bad"),
             ({"model_b": "base"}, "different models"),
             ({"model_a": " "}, "needs a name"),
             ({"prompt_messages": []}, "non-empty list"),
             ({"prompt_messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
              "end with the user's turn"),
             ({"prompt_messages": [{"role": "robot", "content": "hi"}]}, "Prompt message 1"),
             ({"answer_b": None}, "Answer B must be text"),
             ({"source": "web"}, "chat, heldout"),
             ({"vote": "tie", "edited_answer": "better"}, "'A is better' or 'B is better'"),
             ({"seed": -1}, "whole number"),
             ({"settings": {"temp": 1.0}}, "Unknown generation setting"),
             ({"settings": {"temperature": 9.0}}, "Temperature"),
             ({"run_dir": tmp_path / "nowhere"}, "not a run folder")]
    for change, words in cases:
        with pytest.raises(ValueError) as e:
            judgements.append_vote(**{**good, **change})
        assert words.lower() in str(e.value).lower(), (change, str(e.value))
    assert not (run_copy / runs.PREFERENCES).exists() and not (tmp_path / "nowhere").exists()
    assert judgements.read_votes(run_copy) == []


def _votes(pairs):
    """[(model shown as A, model shown as B, vote), ...] as vote lines."""
    return [{"models": [a, b], "vote": v} for a, b, v in pairs]


def test_win_rates_and_the_wilson_interval_match_a_hand_computation():
    # adapter vs base: adapter wins 7 (4 as A, 3 as B), base wins 3, 2 ties, 1 both bad; two checkpoints 3-0
    votes = _votes([("adapter", "base", "a")] * 4 + [("base", "adapter", "b")] * 3 + [("base", "adapter", "a")] * 3
                   + [("adapter", "base", "tie")] * 2 + [("base", "adapter", "both_bad")]
                   + [("ck-4", "ck-8", "b")] * 3)
    r, ck = judgements.win_rates(votes)
    assert (r["model"], r["other"], r["wins"], r["losses"], r["ties"], r["both_bad"], r["decided"], r["n"]) == \
        ("adapter", "base", 7, 3, 2, 1, 10, 13)
    assert r["win_rate"] == pytest.approx(0.7)
    # Wilson, z = 1.96: (p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n) with p = 0.7, n = 10:
    # (0.7 + 0.19207 ± 1.95996·sqrt(0.021 + 0.0096036)) / 1.38415 = (0.89207 ± 0.34288) / 1.38415
    assert r["ci"] == pytest.approx((0.39678, 0.89221), abs=1e-5)
    assert (ck["model"], ck["wins"], ck["losses"], ck["win_rate"]) == ("ck-8", 3, 0, 1.0)
    assert ck["ci"] == pytest.approx((0.43850, 1.0), abs=1e-5)  # 3 of 3 is still a wide interval
    assert judgements.wilson(0, 5) == pytest.approx((0.0, 0.43448), abs=1e-5) and judgements.wilson(0, 0) is None
    # the judged adapter first when asked, else the leading side
    flipped = judgements.win_rates(votes, first="base")[0]
    assert (flipped["model"], flipped["wins"], flipped["losses"]) == ("base", 3, 7)
    assert flipped["ci"] == pytest.approx((1 - 0.89221, 1 - 0.39678), abs=1e-5)
    assert judgements.win_rate_text(votes) == (
        "adapter vs base: adapter wins 7 of 10 decided votes (70%, 95% CI 40–89%); 2 ties, 1 both bad\n"
        "ck-8 vs ck-4: ck-8 wins 3 of 3 decided votes (100%, 95% CI 44–100%)")
    assert judgements.win_rate_text(_votes([("x", "y", "tie")])) == "x vs y: no decided votes yet; 1 tie"
    assert judgements.win_rate_text([]) == "No votes yet."


def test_feedback_lines_are_ktos_unpaired_format(run_copy, tmp_path):
    before = _digest(run_copy)
    up = judgements.append_feedback(run_copy, PROMPT, "Arr, scattering!", "pirate (final)", True, settings=SETTINGS,
                               seed=3)
    down = judgements.append_feedback(run_copy, PROMPT[1:], "No idea.", "base", False)
    lines = [json.loads(x) for x in (run_copy / runs.FEEDBACK).read_text(encoding="utf-8").splitlines()]
    assert lines == [up, down] == judgements.read_ratings(run_copy)
    assert up["prompt"] == PROMPT and up["completion"] == [{"role": "assistant", "content": "Arr, scattering!"}]
    assert (up["label"], up["model"], up["seed"], up["settings"]) == (True, "pirate (final)", 3, SETTINGS)
    assert down["label"] is False and down["prompt"] == PROMPT[1:] and isinstance(down["time"], float)
    assert set(_digest(run_copy)) - set(before) == {runs.FEEDBACK}
    with pytest.raises(ValueError, match="True or False"):
        judgements.append_feedback(run_copy, PROMPT, "x", "base", "yes")
    with pytest.raises(ValueError, match="not a run folder"):
        judgements.append_feedback(tmp_path, PROMPT, "x", "base", True)


# --- the Chat tab's blind handlers --------------------------------------------------------------------

def _page_text(values) -> str:
    """Everything a list of handler outputs puts on the page, as text: plain values, and the set properties of
    component updates (label, value, info, elem_id, placeholder, ...)."""
    import gradio as gr
    out = []
    for v in values:
        if isinstance(v, gr.components.Component) or isinstance(v, gr.blocks.BlockContext):
            out.append(repr({k: x for k, x in vars(v).items()
                             if isinstance(x, (str, int, float, list, dict, tuple, type(None)))}))
        else:
            out.append(repr(v))
    return "\n".join(out)


def test_blind_order_is_drawn_per_prompt_and_seedable(run_copy):
    from studio.ui.chat import handlers, votes

    root, run = run_copy.parent, str(run_copy)
    settings = handlers.settings_from("", 0.0, 0.9, 2, 0)
    left, right = votes.vote_labels(run, "adapter", handlers.BASE)
    assert (left, right) == (handlers.BASE_LABEL, "my run/../é*? (final)")

    def orders(seed, n=12):
        rng, held, out = random.Random(seed), None, []
        for _ in range(n):
            *_, (a, b, held, status, pending) = votes.blind_respond("Hi", held, run, "adapter", settings, root,
                                                                   rng=rng)
            out.append(tuple(pending["models"]))
            assert [a[-1]["content"], b[-1]["content"]] == pending["answers"]
        return out

    first = orders(7)
    assert set(first) == {(left, right), (right, left)}  # both orders occur
    assert orders(7) == first  # the same seed draws the same orders
    # the answers follow the models: the adapter's answer is in the pane the state says
    engine = handlers.engine_for(None, run, "adapter", root)[0]
    q = [{"role": "user", "content": "Hi"}]
    want = {left: engine.generate(q, tuned=False, settings=settings),
            right: engine.generate(q, tuned=True, settings=settings)}
    *_, (a, b, _, _, pending) = votes.blind_respond("Hi", None, run, "adapter", settings, root,
                                                   rng=random.Random(1))
    assert pending["answers"] == [want[m] for m in pending["models"]]


def test_no_model_is_named_on_the_page_before_the_vote_and_both_are_after(run_copy):
    from studio.ui.chat import handlers, votes

    root, run = run_copy.parent, str(run_copy)
    left, right = votes.vote_labels(run, "adapter", handlers.BASE)
    demo, t = wired(root)
    send = handler(demo, t.send, "click")
    states = {i for i, c in enumerate(send.outputs) if c in (t.engine, t.pending, t.shown)}
    gen = ("Be brief.", 0.0, 0.9, 4, 0)
    yields = list(send.fn("Why is the sky blue?", [], [], None, run, "adapter", handlers.BASE, True, *gen))
    assert len(yields) > 2
    for out in yields:
        page = _page_text([v for i, v in enumerate(out) if i not in states])
        for name in (left, right, "Base", "Tuned", "adapter off", "adapter on", "my run"):
            assert name not in page, (name, page[:2000])
    last = dict(zip(send.outputs, yields[-1]))
    pending = last[t.pending]
    assert set(pending["models"]) == {left, right} and "Done" in last[t.status]
    assert all(b.interactive for b in (last[c] for c in t.vote_buttons))  # votes open once both answered
    assert pending["prompt"] == [{"role": "system", "content": "Be brief."},
                                 {"role": "user", "content": "Why is the sky blue?"}]

    vote = handler(demo, t.vote_buttons[1], "click")  # "B is better"
    out = dict(zip(vote.outputs, vote.fn(pending, "")))
    page = _page_text([v for c, v in out.items() if c is not t.pending])
    assert left in page and right in page
    assert out[t.pane_a].label == f"A · {pending['models'][0]}" and out[t.pane_b].label == f"B · {pending['models'][1]}"
    assert "your vote: B is better" in out[t.reveal]
    assert "1 (1 with a better answer" in out[t.rates] and " of 1 decided vote (" in out[t.rates]
    assert not any(out[c].interactive for c in t.vote_buttons)
    (saved,) = judgements.read_votes(run_copy)
    assert saved["vote"] == "b" and saved["chosen_model"] == pending["models"][1] and saved["source"] == "chat"
    assert saved["chosen"][0]["content"] == pending["answers"][1] and saved["settings"]["max_new_tokens"] == 4
    # the same pair cannot be voted on twice: refused on the server too, nothing more written
    again = dict(zip(vote.outputs, vote.fn(out[t.pending], "")))
    assert "already" in again[t.reveal] and len(judgements.read_votes(run_copy)) == 1
    # an empty prompt leaves the pair on show (and its state) as it is
    import gradio as gr
    (empty,) = send.fn("  ", [], [], None, run, "adapter", handlers.BASE, True, *gen)
    empty = dict(zip(send.outputs, empty))
    assert empty[t.status] == "Type a message first." and empty[t.pending] == gr.skip() == empty[t.pane_a]
    # an improved answer is saved as the chosen one; with a tie it is refused with a sentence
    *_, fresh = send.fn("Name a colour.", [], [], None, run, "adapter", handlers.BASE, True, *gen)
    p2 = dict(zip(send.outputs, fresh))[t.pending]
    tie = handler(demo, t.vote_buttons[2], "click")
    assert "improved answer replaces the better" in dict(zip(tie.outputs, tie.fn(p2, "Blue.")))[t.reveal]
    a_vote = handler(demo, t.vote_buttons[0], "click")
    a_vote.fn(p2, "Blue.")
    last_vote = judgements.read_votes(run_copy)[-1]
    assert last_vote["chosen"][0]["content"] == "Blue." and last_vote["edited"]

    # 👍 on pane A saves the answer under the model the state says, without naming it on the page
    like = handler(demo, t.pane_a, "like")

    class Like:
        index, value, liked = 1, None, True
    msg = like.fn(p2, [], Like())
    assert "saved for A" in msg and left not in msg and right not in msg
    (fb,) = judgements.read_ratings(run_copy)
    assert fb["model"] == p2["models"][0] and fb["completion"][0]["content"] == p2["answers"][0] and fb["label"]


def test_open_panes_feedback_names_the_pane_side(run_copy):
    from studio.ui.chat import handlers, votes

    root, run = run_copy.parent, str(run_copy)
    settings = handlers.settings_from("", 0.0, 0.9, 3, 0)
    *_, (left_hist, right_hist, _, _) = handlers.respond("Hi", [], [], None, run, "adapter", settings, root)
    info = votes.shown_info(run, "adapter", handlers.BASE, settings)
    assert "saved for my run" in votes.feedback(info, 1, False, right_hist, 1)
    assert votes.feedback(info, 0, "", left_hist, 1).startswith("Feedback taken back")
    with pytest.raises(ValueError, match="not a message of yours"):
        votes.feedback(info, 0, True, left_hist, 0)
    (fb,) = judgements.read_ratings(run_copy)
    assert fb["model"] == "my run/../é*? (final)" and fb["label"] is False
    assert fb["prompt"] == [{"role": "user", "content": "Hi"}] and fb["completion"][0]["content"] == right_hist[1][
        "content"]


def test_blind_votes_on_the_heldout_rows(run_copy):
    from studio.ui.chat import handlers, heldout, votes, wiring

    root, run = run_copy.parent, str(run_copy)
    left, right = votes.vote_labels(run, "adapter", handlers.BASE)
    settings = handlers.settings_from("Be brief.", 0.0, 0.9, 3, 0)
    df, _, _, _ = heldout.compare(None, run, "adapter", 3, settings, root)
    hv = heldout.heldout_start(heldout.heldout_vote_state(df, run, "adapter", handlers.BASE, settings),
                                random.Random(3))
    assert len(hv["rows"]) == 3 and hv["rows"][0]["prompt"][0] == {"role": "system", "content": "Be brief."}
    for i, kind in enumerate(("a", "b", "both_bad")):
        view = wiring.hv_view(hv)
        page = _page_text(view)
        assert left not in page and right not in page
        text, a, b = heldout.heldout_current(hv)
        assert text == df["prompt"][i] and {a, b} == {df["base"][i], df["tuned"][i]}
        assert view[1].value == text and view[2:4] == [a, b]
        hv, reveal = heldout.heldout_vote(hv, kind)
        assert reveal.startswith(f"Row {i + 1}: ") and "your vote" in reveal
    assert heldout.heldout_current(hv) is None
    with pytest.raises(ValueError, match="Every row has a vote"):
        heldout.heldout_vote(hv, "a")
    votes = judgements.read_votes(run_copy)
    assert [v["vote"] for v in votes] == ["a", "b", "both_bad"] and {v["source"] for v in votes} == {"heldout"}
    for i, (v, swapped) in enumerate(zip(votes, hv["order"])):
        assert v["models"] == ([right, left] if swapped else [left, right])
        answers = [df["tuned"][i], df["base"][i]] if swapped else [df["base"][i], df["tuned"][i]]
        if v["vote"] != "both_bad":
            assert v["chosen"][0]["content"] == answers["ab".index(v["vote"])]
    assert wiring.hv_view(hv)[0].visible is False  # done: the stepper hides and the table comes back
    with pytest.raises(ValueError, match="Compare on held-out prompts first"):
        heldout.heldout_start(None)


def test_train_on_my_votes_button(run_copy, monkeypatch):
    from studio.ui.chat import votes

    root, run = run_copy.parent, str(run_copy)
    demo, t = wired(root)
    click = handler(demo, t.train_votes, "click")
    if hasattr(runs, "launch_dpo"):  # the real one, with no votes yet: refused, said in a box, nothing started
        msg = click.fn(run)
        assert "studio-error" in msg and len(list(root.iterdir())) == 1, msg
    calls = []

    def fake(run_dir, root=None):
        calls.append((str(run_dir), str(root)))
        return Path(root) / "20260102-000000-dpo"

    monkeypatch.setattr(runs, "launch_dpo", fake, raising=False)
    assert "DPO run started: 20260102-000000-dpo; follow it on the Train tab." in click.fn(run)
    assert calls == [(run, str(root))]

    def refuse(run_dir, root=None):
        raise runs.RunError("Only 3 preference pairs; a DPO run needs at least 8.")

    monkeypatch.setattr(runs, "launch_dpo", refuse, raising=False)
    msg = click.fn(run)
    assert "studio-error" in msg and "at least 8" in msg
    monkeypatch.delattr(runs, "launch_dpo", raising=False)
    with pytest.raises(ValueError, match="launch_dpo is missing"):
        votes.train_on_votes(run, root)
    with pytest.raises(ValueError, match="Pick the run"):
        votes.train_on_votes(None, root)
