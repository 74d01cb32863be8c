"""The Chat tab's handlers as plain functions: the best checkpoint marked and chosen, the left pane holding
another adapter of the same base (never another base), open_pair, and the held-out scores in the stats."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from studio import runs
from tests.helpers import handler, wired


def _copy_run(src: Path, dst: Path, name: str | None = None) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("exports", "optimizer.pt"))
    if name:
        (dst / runs.RUN_INFO).write_text(json.dumps({"name": name}), encoding="utf-8")
    return dst


def _add_eval(run: Path, step: int, loss: float) -> None:
    with open(run / runs.METRICS, "a", encoding="utf-8") as f:
        f.write(json.dumps({"kind": "eval", "step": step, "eval_loss": loss}) + "\n")


def _set_source(run: Path, model_dir: Path) -> None:
    from studio.config import RunConfig
    for f in (run / runs.CONFIG, run / runs.ADAPTER / runs.STUDIO_CONFIG):
        RunConfig.load(f).replace(model={"source": str(model_dir)}).save(f)


@pytest.fixture
def root(tmp_path, trained_run, demo_model_dir):
    """Three finished runs: A (its checkpoint-4 made the best by a low eval loss), B (the same base, its final
    adapter best) and C (trained, as far as its config says, on another base model)."""
    root = tmp_path / "runs"
    root.mkdir()
    a = _copy_run(trained_run, root / "20260101-000001-a", "run A")
    _add_eval(a, 4, 1.25)
    _add_eval(_copy_run(trained_run, root / "20260101-000002-b", "run B"), 8, 0.5)
    c = _copy_run(trained_run, root / "20260101-000003-c", "run C")
    _set_source(c, demo_model_dir)
    return root


def test_checkpoint_picker_marks_the_best_and_picks_it_when_it_is_earlier(root):
    from studio.ui.chat import handlers

    a, b = str(root / "20260101-000001-a"), str(root / "20260101-000002-b")
    choices, default = handlers.checkpoint_options(a)
    assert choices == [("Final adapter", "adapter"), ("Checkpoint, step 8", "checkpoint-8"),
                       ("Checkpoint, step 4 ★ best 1.250", "checkpoint-4")]
    assert default == "checkpoint-4"
    assert handlers.checkpoint_choices(a) == choices
    # the final adapter best (eval loss at step 8 below step 4's): marked, and the newest is the default anyway
    choices, default = handlers.checkpoint_options(b)
    assert default == "adapter" and choices[0][0] == "Final adapter ★ best 0.500"
    assert sum("★" in label for label, _ in choices) == 1
    assert handlers.checkpoint_options(None) == ([], None)


def test_left_pane_offers_the_base_and_adapters_of_the_same_base_only(root):
    from studio.ui.chat import handlers

    a, b, c = (str(root / n) for n in ("20260101-000001-a", "20260101-000002-b", "20260101-000003-c"))
    opts = handlers.against_choices(a, root)
    values = [v for _, v in opts]
    assert opts[0] == (handlers.BASE_LABEL, handlers.BASE)
    assert f"{b}::adapter" in values and f"{a}::checkpoint-4" in values and f"{b}::checkpoint-8" in values
    assert not any(v.startswith(c) for v in values), "a run on another base is never offered"
    assert dict((v, lab) for lab, v in opts)[f"{a}::checkpoint-4"].endswith("★ best 1.250")
    assert [v for _, v in handlers.against_choices(c, root)] == [handlers.BASE, f"{c}::adapter", f"{c}::checkpoint-8",
                                                                 f"{c}::checkpoint-4"]
    assert handlers.parse_against("") is None and handlers.parse_against(handlers.BASE) is None
    assert handlers.parse_against(f"{a}::checkpoint-4") == (a, "checkpoint-4")
    with pytest.raises(ValueError, match="not a left-pane choice"):
        handlers.parse_against("checkpoint-4")
    assert handlers.pane_labels(a, "adapter", "") == ("Base (adapter off)", "Tuned (adapter on)")
    assert handlers.pane_labels(a, "adapter", f"{b}::checkpoint-8") == ("run B (checkpoint-8)", "run A (final)")


def test_open_pair_sets_run_adapter_and_left_pane(root):
    from studio.ui.chat import handlers, wiring

    a, b, c = (str(root / n) for n in ("20260101-000001-a", "20260101-000002-b", "20260101-000003-c"))
    run_u, ck_u, against_u = handlers.open_pair(b, a, root)
    assert run_u.value == b and b in [v for _, v in run_u.choices]
    assert ck_u.value == "adapter" and "checkpoint-4" in [v for _, v in ck_u.choices]
    assert against_u.value == f"{a}::checkpoint-4"  # run A's default: its best, earlier checkpoint
    assert against_u.value in [v for _, v in against_u.choices]
    # the run's change handler keeps that left pane (valid for the new run), and resets one that is not
    assert handlers.against_choices(b, root) == against_u.choices
    assert wiring._against_update(b, against_u.value, root)[1] == against_u.value
    assert wiring._against_update(c, against_u.value, root)[1] == handlers.BASE
    with pytest.raises(ValueError, match="different base models"):
        handlers.open_pair(a, c, root)
    with pytest.raises(ValueError, match="not a run folder"):
        handlers.open_pair(a, str(root / "nope"), root)


def test_the_run_change_handler_keeps_the_left_pane_open_pair_set(root):
    """open_pair sets run and left pane together; the run's change fires next and must not undo the pair."""
    from studio.ui.chat import handlers

    a, b, c = (str(root / n) for n in ("20260101-000001-a", "20260101-000002-b", "20260101-000003-c"))
    demo, t = wired(root)
    on_run = handler(demo, t.run, "change").fn
    _, _, against_u = handlers.open_pair(b, a, root)
    ck, sp, against, left, right = on_run(b, against_u.value)
    assert (ck.value, against.value) == ("adapter", f"{a}::checkpoint-4")
    assert (left.label, right.label) == ("run A (checkpoint-4)", "run B (final)")
    ck, sp, against, left, right = on_run(c, against_u.value)  # not offered next to run C: back to the base
    assert against.value == handlers.BASE and left.label == "Base (adapter off)"
    ck, sp, against, left, right = on_run(a, f"{a}::checkpoint-8")
    assert (ck.value, against.value) == ("checkpoint-4", f"{a}::checkpoint-8")
    assert (left.label, right.label) == ("run A (checkpoint-8)", "run A (checkpoint-4)")
    refresh = handler(demo, t.refresh, "click").fn
    run_u, against = refresh(b, f"{a}::checkpoint-4")
    assert run_u.value == b and against.value == f"{a}::checkpoint-4"


def test_open_in_chat_holds_its_left_pane_when_the_page_lags(root):
    """The run's change event can read the page before the left pane's new value has landed (Chromium under load
    read the base model there): the pair "Open in Chat" chose, kept on the server, wins for that run only."""
    from studio.ui.chat import handlers

    a, b, c = (str(root / n) for n in ("20260101-000001-a", "20260101-000002-b", "20260101-000003-c"))
    demo, t = wired(root)
    on_run, refresh = handler(demo, t.run, "change").fn, handler(demo, t.refresh, "click").fn
    _, _, against_u = handlers.open_pair(b, a, root)
    pair = {"run": b, "against": handlers.default_against(a)}  # what the Train tab's Open in Chat keeps
    assert pair["against"] == against_u.value
    assert on_run(b, handlers.BASE, pair)[2].value == f"{a}::checkpoint-4"  # the stale page said: base
    assert refresh(b, handlers.BASE, pair)[1].value == f"{a}::checkpoint-4"
    assert on_run(c, handlers.BASE, pair)[2].value == handlers.BASE  # another run: the page's choice
    ends = [d for d in demo.config["dependencies"]
            if [tuple(x) for x in d["targets"]] in ([(t.run._id, "input")], [(t.against._id, "input")])]
    assert len(ends) == 2 and all(d["outputs"] == [t.pair._id] for d in ends)  # the user's own pick ends the pair


def test_chat_and_compare_two_adapters(root):
    from studio import chat
    from studio.ui.chat import handlers, heldout

    a, b, c = (str(root / n) for n in ("20260101-000001-a", "20260101-000002-b", "20260101-000003-c"))
    settings = handlers.settings_from("", 0.0, 0.9, 6, 0)
    against = f"{a}::checkpoint-4"
    last = None
    for last in handlers.respond("Why is the sky blue?", [], [], None, b, "adapter", settings, root, against=against):
        pass
    left_hist, right_hist, held, status = last
    assert status.startswith("Done")
    early = chat.ChatEngine.load(a, "checkpoint-4")
    final = chat.ChatEngine.load(b, "adapter")
    q = [{"role": "user", "content": "Why is the sky blue?"}]
    assert left_hist[-1]["content"] == early.generate(q, tuned=True, settings=settings)
    assert right_hist[-1]["content"] == final.generate(q, tuned=True, settings=settings)
    assert held["against"][0] == against and held["against"][1].key == held["engine"].key

    df, md, csv, held2 = heldout.compare(held, b, "adapter", 2, settings, root, against=against)
    assert held2["against"][1] is held["against"][1]  # the browser's left engine is reused
    assert list(df.columns)[:4] == ["prompt", "reference", "run A (checkpoint-4)", "run B (final)"]
    assert list(df.columns)[4:] == ["run A (checkpoint-4) EM", "run A (checkpoint-4) F1", "run B (final) EM",
                                    "run B (final) F1", "closer"]
    assert "eval loss run A (checkpoint-4)" in md and "held-out prompts" in md and "exact match" in md
    assert "-vs-" in csv.name
    # an adapter of another base is refused with a sentence, and the base held stays
    before = chat.loaded_base()
    with pytest.raises(ValueError, match="another base model"):
        heldout.compare(held, b, "adapter", 1, settings, root, against=f"{c}::adapter")
    assert chat.loaded_base() == before


def test_compare_against_base_shows_scores_and_the_closeness_line(root):
    from studio.ui.chat import handlers, heldout

    b = str(root / "20260101-000002-b")
    settings = handlers.settings_from("", 0.0, 0.9, 6, 0)
    df, md, csv, _ = heldout.compare(None, b, "adapter", 3, settings, root)
    assert list(df.columns) == heldout.COMPARE_COLUMNS
    assert set(df["closer"]) <= {"base", "tuned", "tie"}
    assert all(x in ("0", "1") for x in df["base EM"]) and all(0 <= float(x) <= 1 for x in df["tuned F1"])
    assert " closer on " in md and " of 3 held-out prompts" in md and "token F1 base" in md
    raw = csv.read_text(encoding="utf-8-sig")
    assert raw.splitlines()[0] == ",".join(heldout.COMPARE_COLUMNS)
