"""The Data tab's Checks panel, through the handlers gradio runs (no browser): adding a check updates the YAML and
the preflight on the tab's file, a bad regex shows the sentence, Try it scores a typed answer, and the Train tab's
Start puts the checks into the RunConfig it builds (and the grpo stage without checks is refused in a sentence)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import handler, word_problems_csv

@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """The Data and Train tabs built and wired as the app wires them: (demo, data tab, train tab, runs root)."""
    import gradio as gr

    from studio.ui.data import layout as data_layout
    from studio.ui.data import wiring as data_wiring
    from studio.ui.train import layout as train_layout
    from studio.ui.train import wiring as train_wiring
    root = str(tmp_path_factory.mktemp("runs"))
    with gr.Blocks() as demo:
        data = data_layout.build()
        train = train_layout.build(root)
        s = train.settings
        data_wiring.wire(data, model=s.model, max_length=s.max_length)
        train_wiring.wire(train, data.state, root, demo, checks=data.checks.checks)
    return demo, data, train, root


@pytest.fixture
def state(tmp_path):
    """The Data tab's state for a CSV of word problems whose answers are JSON, with a `unit` column."""
    from studio.ui.data import handlers
    p = word_problems_csv(tmp_path / "problems.csv", n=3, extra="unit")
    view = handlers.inspect(str(p), model_source="no-such-model")
    assert view.ok, view.message
    return view.config


def _form(p, **kw) -> list:
    """The add-a-check form's values, in the order the Add button sends them (after the checks)."""
    from studio.ui.data import checks as ch
    values = {f: ch.field_default(f) for f in ch.all_fields()}
    values.update(kw.pop("fields", {}))
    head = [kw.get("name", ""), kw.get("type", "exact"), kw.get("weight", 1), kw.get("extract", "whole"),
            kw.get("a", ""), kw.get("b", "")]
    return head + [values[f] for f in ch.all_fields()]


def _html(update) -> str:
    return update.get("value") or "" if isinstance(update, dict) else getattr(update, "value", "") or ""


def test_adding_a_check_updates_the_yaml_and_the_preflight(app, state):
    demo, data, _, _ = app
    p = data.checks
    add, refresh = handler(demo, p.add, "click").fn, handler(demo, p.checks, "change").fn
    checks, err, _ = add([], *_form(p, name="right_answer", type="numeric", extract="json", a="answer",
                                      fields={"tolerance": 0}))  # the page sends a cleared number as 0
    assert checks == [{"name": "right_answer", "type": "numeric", "extract": {"json": "answer"}}]
    yaml_text, listing, _, compare_to, note, table, verdicts, failing, _ = refresh(checks, state)
    assert "name: right_answer" in yaml_text and "json: answer" in yaml_text
    assert listing["name"].tolist() == ["right_answer"] and "3 reference answers" in note
    assert table.iloc[0]["passed"] == "3/3" and table.iloc[0]["pass rate"] == "100.0%"
    assert "Every check passes" in verdicts and failing.empty
    assert "unit" in compare_to.choices[-1]  # the file's other column is offered to compare to
    # a wrong check: 0% with its first failing row named
    checks, _, _ = add(checks, *_form(p, name="wrong", type="numeric", extract="json", a="result"))
    out = refresh(checks, state)
    assert out[5].iloc[1]["passed"] == "0/3"
    assert "wrong passes 0 of 3 reference answers: `extract: json:result` found nothing in row 1" in out[6]
    assert out[7]["row"].tolist() == [1, 2, 3]
    # a check comparing to the unit column, then removed again
    checks, _, _ = add(checks, *_form(p, name="unit", type="exact", extract="json", a="unit",
                                      fields={"compare_to": "unit", "normalize": ["strip", "lower"]}))
    assert checks[-1]["compare_to"] == "unit" and checks[-1]["normalize"] == ["strip", "lower"]
    checks, _ = handler(demo, p.remove, "click").fn(checks, "wrong")
    assert [c["name"] for c in checks] == ["right_answer", "unit"]


def test_a_bad_regex_or_yaml_shows_the_sentence(app, state):
    demo, data, _, _ = app
    p = data.checks
    kept, err, _ = handler(demo, p.add, "click").fn([], *_form(p, name="rx", type="regex",
                                                                 fields={"pattern": "(unclosed"}))
    assert kept.get("__type__") == "update" and len(kept) == 1  # gr.skip(): the list is unchanged
    assert "studio-error" in _html(err) and "not a valid regular expression" in _html(err)
    checks, err = handler(demo, p.apply, "click").fn("- name: a\n  type: [exact\n")
    assert "not valid YAML at line" in _html(err)
    checks, err = handler(demo, p.apply, "click").fn("- {name: short, type: length, max_words: 5}\n")
    assert checks == [{"name": "short", "type": "length", "max_words": 5}] and not _html(err)


def test_try_it_scores_a_typed_answer_against_a_row(app, state):
    demo, data, _, _ = app
    p = data.checks
    row_md, answer = handler(demo, p.try_row, "change").fn(state, 2)
    assert "Row 2" in row_md and answer == '{"answer": 24, "unit": "eggs"}'
    checks = [{"name": "right_answer", "type": "numeric", "extract": {"json": "answer"}},
              {"name": "short", "type": "length", "max_words": 4}]
    frame, err = handler(demo, p.try_go, "click").fn(checks, state, 2, 'It is {"answer": 24}')
    assert frame["score"].tolist() == ["1.00", "1.00"] and frame.iloc[0]["extracted"] == "24"
    frame, err = handler(demo, p.try_go, "click").fn(checks, state, 2, "twenty-four eggs, I am quite sure")
    assert frame.iloc[0]["score"] == "0.00" and "found nothing" in frame.iloc[0]["why"]
    assert float(frame.iloc[1]["score"]) < 1 and "limit 4" in frame.iloc[1]["why"]
    frame, err = handler(demo, p.try_go, "click").fn(checks, state, 99, "x")
    assert frame.empty and "not an example" in _html(err)


def test_start_puts_the_checks_into_the_run_config(app, state, monkeypatch, tmp_path):
    from studio import runs
    from studio.ui import settings

    demo, data, train, root = app
    launched = []
    monkeypatch.setattr(runs, "launch", lambda cfg, root: launched.append(cfg) or tmp_path / "no-run")
    start = handler(demo, train.start, "click")
    assert data.checks.checks in start.inputs
    values = settings.preset_values("quick", "checked", "demo")
    values[settings.KEYS.index(("train", "batch_size"))] = 4
    checks = [{"name": "right_answer", "type": "numeric", "extract": {"json": "answer"}}]
    start.fn(state, checks, *values)
    assert launched and launched[-1].checks == checks
    # the grpo stage without checks: RunConfig's refusal reaches the page as a sentence
    values[settings.KEYS.index(("train", "stage"))] = "grpo"
    out = start.fn(state, [], *values)
    assert len(launched) == 1
    assert "add at least one check" in _html(out[1]) and "studio-error" in _html(out[1])
    start.fn(state, checks, *values)
    assert launched[-1].train.stage == "grpo" and launched[-1].checks == checks
    # Show/Save config carry them too, and Load config gives them back
    path = settings.save_config(values, state, checks)
    assert settings.load_checks(path) == checks
    assert "right_answer" in settings.config_text(values, state, root, checks)[0]


def test_without_usable_data_the_panel_says_why(app, tmp_path):
    demo, data, _, _ = app
    refresh = handler(demo, data.checks.checks, "change").fn
    assert "No usable data yet" in refresh([{"name": "a", "type": "exact"}], None)[4]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"Q{i}?", "chosen": "Good.", "rejected": "Bad."}) + "\n"
                             for i in range(3)), encoding="utf-8")
    out = refresh([], {"path": str(pairs), "format": "auto", "columns": {}})
    assert "preference pairs" in out[4], out[4]


def test_the_stage_group_lists_the_grpo_settings():
    from studio.ui import settings
    title = next(t for t in settings.ADVANCED_GROUPS if t.startswith("Stage"))
    assert title == "Stage: instruction tuning, preference tuning (DPO/KTO) or checks (GRPO)"
    for f in ("grpo_generations", "grpo_max_completion", "grpo_beta", "grpo_temperature"):
        assert ("train", f) in settings.ADVANCED_GROUPS[title]
    assert Path(settings.__file__).is_file()
