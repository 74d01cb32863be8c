"""The Data tab as a newcomer meets it (issue 23, items 1, 7, 11, 12, 13): a reload restores the attached run's data,
rows cut at the max length are listed as warnings, messages name the user's columns, skipped rows say "skipped",
the preview shows conversations as User / Assistant columns and marks skipped rows, the legend shows the stage's
parts only, the template's own system prompt is explained, and the file box names the file, not gradio's temp path.
Handlers only: no browser, no training."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from studio import runs
from studio.config import RunConfig
from studio.ui.data import handlers, origin
from studio.ui.data.view import CHOSEN, CUT, PAIR_COLOURS, REJECTED, SFT_COLOURS, SKIPPED, TRAINED
from tests.helpers import SAMPLE_JSONL


@pytest.fixture(autouse=True)
def fresh_caches():
    for cache in (handlers._REPORTS, handlers._STATS, handlers._KINDS):
        cache.clear()


def qa_csv(path: Path, n: int = 6, long_row: int | None = None, empty_row: int | None = None) -> Path:
    """A CSV with `question,answer` columns (not the alpaca names): row `long_row` has a ~600-token answer, row
    `empty_row` an empty one."""
    lines = ["question,answer"]
    for i in range(1, n + 1):
        answer = "" if i == empty_row else ("word " * 600 if i == long_row else f"Answer {i} matey.")
        lines.append(f"Question {i}?,{answer}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_cut_rows_are_warnings_and_messages_name_the_users_column(tmp_path, demo_model_dir):
    p = qa_csv(tmp_path / "qa30.csv", long_row=3, empty_row=5)
    v = handlers.inspect(str(p), model_source=str(demo_model_dir), max_length=256)
    assert v.ok, v.message
    issues = v.issues
    cut = issues[issues["problem"].str.contains("cut to the max sequence length")]
    assert len(cut) == 1 and cut.iloc[0]["row"] == 3 and cut.iloc[0]["severity"] == "warning", issues
    tokens = int(cut.iloc[0]["problem"].split(" tokens")[0].replace(",", ""))
    assert tokens > 256 and "256" in cut.iloc[0]["problem"]
    empty = issues[issues["row"] == 5].iloc[0]
    # the user's column, never the role it is read as ("output is empty - fill in the output")
    assert empty["column"] == "answer" and "'answer' is empty" in empty["problem"], empty
    assert "output" not in empty["problem"] + empty["what to do"]
    assert empty["severity"] == SKIPPED and "error" not in set(issues["severity"])
    assert "empty 'answer'" in v.message  # the summary counts it in the same words
    # one name per concept: the file's columns, trained as the chat messages the training log names
    assert "**alpaca** columns, trained as **chat messages**" in v.message
    # the preview marks the skipped row
    status = dict(zip(v.preview["row"], v.preview["status"]))
    assert status[5] == f"{SKIPPED}: empty 'answer'" and status[1] == "used", status
    # nothing cut: no cut warning
    v = handlers.inspect(str(p), model_source=str(demo_model_dir), max_length=2048)
    assert not v.issues["problem"].str.contains("cut to the max").any()


def test_cut_rows_past_the_listed_limit_are_counted_in_one_line():
    from studio.ui.data.view import CUT_LISTED, cut_issues
    lengths = [300] * (CUT_LISTED + 5) + [10]
    out = cut_issues(lengths, list(range(1, len(lengths) + 1)), 256, len(lengths))
    assert len(out) == CUT_LISTED + 1 and all(i.severity == "warning" for i in out)
    assert "205 examples are longer than 256 tokens (5 more than listed)" in out[-1].problem
    sampled = cut_issues([300, 10], [7, 9], 256, 5000)
    assert [i.row for i in sampled] == [7, None] and "sampled" in sampled[-1].problem


def test_sample_preview_shows_user_and_assistant_and_the_sft_legend(demo_model_dir):
    v = handlers.inspect(str(SAMPLE_JSONL), model_source=str(demo_model_dir), max_length=512)
    assert v.ok, v.message
    assert list(v.preview.columns[:4]) == ["row", "status", "User", "Assistant"], list(v.preview.columns)
    assert "messages" not in v.preview.columns and "System" not in v.preview.columns
    assert v.preview.iloc[0]["User"] == "Who painted the Mona Lisa?"
    assert v.preview.iloc[0]["Assistant"].startswith("Arr, matey!")
    assert not any(str(c).startswith('[{"role"') for c in v.preview.iloc[0])
    # the legend: SFT's own parts only, in two colours
    assert v.colours == SFT_COLOURS and set(v.colours) == {TRAINED, CUT}
    assert len(set(v.colours.values())) == len(v.colours)
    assert set(PAIR_COLOURS) == {CHOSEN, REJECTED} and PAIR_COLOURS[CHOSEN] != SFT_COLOURS[TRAINED]
    # SmolLM2's template adds a system prompt the data does not hold: the note says where it comes from
    text = "".join(t for t, _ in v.example)
    assert "You are a helpful AI assistant named SmolLM" in text
    assert "the model's chat template adds it" in v.example_note
    v = handlers.inspect(str(SAMPLE_JSONL), system_prompt="Talk like a pirate.", model_source=str(demo_model_dir))
    assert "chat template adds it" not in v.example_note


def test_preference_pairs_show_their_own_legend(tmp_path, demo_model_dir):
    p = tmp_path / "pairs.jsonl"
    p.write_text("".join(json.dumps({"prompt": f"Q{i}?", "chosen": f"Good {i}.", "rejected": f"Bad {i}."}) + "\n"
                         for i in range(4)), encoding="utf-8")
    v = handlers.inspect(str(p), model_source=str(demo_model_dir))
    assert v.ok and v.colours == PAIR_COLOURS, v.message


def test_file_label_names_the_file_not_the_temp_path(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    up = tmp_path / "gradio" / "0a1b2c" / "qa30.csv"
    up.parent.mkdir(parents=True)
    up.write_text("question,answer\nA?,B.\n", encoding="utf-8")
    assert origin.file_label(str(up)) == "qa30.csv (uploaded)"
    assert origin.file_label(str(SAMPLE_JSONL)) == "pirate_qa.jsonl (bundled sample)"
    own = tmp_path / "mine.csv"
    assert origin.file_label(str(own)) == str(own)  # the user's own file: its path is theirs
    # the sample picker names the upload instead of going blank
    choices = origin.upload_choices(str(up))
    assert choices[-1] == ("qa30.csv (your upload)", str(up)) and len(choices) > 1


def _fake_run(root: Path, source: Path, rows_used: int, name: str = "bio run") -> Path:
    """A run folder as create_run leaves it (config.yaml, run.json, its own copy), without training."""
    run = root / "20261203-101500-bio-run"
    run.mkdir(parents=True)
    own = run / "dataset.jsonl"
    own.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Question {i}?"},
                                                    {"role": "assistant", "content": f"Answer {i}."}]}) + "\n"
                           for i in range(rows_used)), encoding="utf-8")
    cfg = RunConfig().replace(name=name, data={"path": str(own), "format": "messages", "columns": {}})
    cfg.save(run / runs.CONFIG)
    (run / runs.RUN_INFO).write_text(json.dumps({"name": name, "source_data": str(source), "rows_used": rows_used}))
    return run


def test_restore_shows_the_attached_runs_source_then_its_own_copy(tmp_path, monkeypatch, demo_model_dir):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    (tmp_path / "gradio" / "abc").mkdir(parents=True)
    src = qa_csv(tmp_path / "gradio" / "abc" / "qa30.csv", n=6, empty_row=2)  # 5 rows used
    run = _fake_run(tmp_path / "runs", src, rows_used=5)

    r = origin.restore(str(run), [])
    assert r.path == str(src) and "Showing the data of run **bio run**: qa30.csv (5 rows used" in r.note
    assert r.chosen == [str(src)] and ("qa30.csv (data of run bio run)", str(src)) in r.choices
    view = handlers.handle(r.path, r.chosen, model_source=None, max_length=None)
    assert view.ok and view.config["path"] == str(src) and view.n_examples == 5  # DataTab.state is that file

    # the file changed since (or is read differently now): the run's own copy, and why
    qa_csv(src, n=8)
    r = origin.restore(str(run), [])
    assert r.path == str(run / "dataset.jsonl") and "gives 8 rows, not the 5" in r.note, r.note
    assert handlers.allowed(r.path, r.chosen) and not handlers.allowed(r.path, [])
    assert origin.file_label(r.path) == "dataset.jsonl (the copy kept in run bio run)"
    view = handlers.handle(r.path, r.chosen, model_source=None, max_length=None)
    assert view.ok and view.n_examples == 5, view.message

    src.unlink()  # gone (a server restart empties gradio's temp folder)
    r = origin.restore(str(run), [])
    assert r.path == str(run / "dataset.jsonl") and "no longer on this machine" in r.note

    assert origin.keep_note(r.path, r.note) == r.note  # the note stays while its file is shown
    assert origin.keep_note(str(SAMPLE_JSONL), r.note) == ""  # and goes with another file (a loaded config's)
    # no run attached: the bundled sample, no note
    r = origin.restore(None, [])
    assert r.path == handlers.default_path() and not r.note


def test_the_trainer_log_names_the_users_file_and_how_it_was_read(tmp_path):
    """Issue 23 item 11: the Data tab says 'alpaca columns, trained as chat messages'; the run's log line names the
    same file and reading, not only its own copy ('read as messages')."""
    import json

    from studio.config import preset
    from studio.train.datasets import _origin
    (tmp_path / "run.json").write_text(json.dumps({"source_data": "/home/me/qa30.csv",
                                                   "data_summary": "30 rows read as alpaca; 29 used, 1 skipped"}))
    cfg = preset("quick", data={"path": str(tmp_path / "dataset.jsonl"), "format": "messages"})
    assert _origin("Data", cfg, tmp_path) == "Data from qa30.csv (alpaca columns), kept as dataset.jsonl"
    assert _origin("Data", cfg, None) == "Data"  # `studio train` on the user's own file: nothing to add
