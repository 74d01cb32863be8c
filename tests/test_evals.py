"""Base vs tuned on a run's checks (studio.evals.evaluate): the JSON written to RUN/evals/ with both sides' answers,
scores and intervals; `studio eval` (the path last, a sentence and exit 2 without checks); the evaluation at the end of
training; the model card's section; the check columns of the Chat tab's held-out comparison."""
from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import pytest

from tests.helpers import studio_cli

CHECKS = [{"name": "short", "type": "length", "max_words": 3},
          {"name": "no_digits", "type": "regex", "pattern": "[0-9]", "expect": False}]
TOKENS = 6


def _copy_run(src: Path, dst: Path, name: str, checks: list | None = None) -> Path:
    from studio import runs
    from studio.config import RunConfig

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("exports", "optimizer.pt", "evals"))
    (dst / runs.RUN_INFO).write_text(json.dumps({"name": name}), encoding="utf-8")
    if checks is not None:  # the run's config and the copy saved beside its adapter, as the trainer writes them
        for f in (dst / runs.CONFIG, dst / runs.ADAPTER / runs.STUDIO_CONFIG):
            RunConfig.load(f).replace(checks=checks).save(f)
    return dst


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, trained_run):
    """A copy of the shared tiny run with two checks, evaluated once on 3 held-out rows: (run, path, result, the
    progress reported)."""
    from studio.evals.evaluate import evaluate_run

    run = _copy_run(trained_run, tmp_path_factory.mktemp("evals") / "runs" / "20260101-000001-checked", "checked",
                    CHECKS)
    said = []
    path, result = evaluate_run(run, rows=3, max_new_tokens=TOKENS, progress=lambda f, t: said.append((f, t)))
    return run, path, result, said


def test_evaluate_run_writes_both_sides_answers_scores_and_intervals(evaluated):
    from studio.chat import ChatEngine, GenSettings
    from studio.checks import parse_checks, score_all
    from studio.evals.evaluate import EVALS, latest_eval
    from studio.evals.rows import run_rows

    run, path, result, said = evaluated
    assert path.parent == run / EVALS and re.fullmatch(r"\d{8}-\d{6}\.json", path.name)
    assert json.loads(path.read_text(encoding="utf-8")) == result
    assert latest_eval(run) == {**result, "path": str(path)}
    assert (result["where"], result["rows_n"], result["max_new_tokens"], result["against"]) == \
        ("held-out", 3, TOKENS, "base")
    assert result["checks"] == CHECKS and result["checkpoint"] == "adapter"
    assert list(result["sides"]) == ["base", "tuned"]
    rows, _ = run_rows(run, 3)
    checks = parse_checks(CHECKS)
    for got, row in zip(result["rows"], rows, strict=True):
        assert (got["row"], got["prompt"], got["reference"]) == (row["row"], row["prompt"], row["reference"])
        for side in ("base", "tuned"):
            assert got["scores"][side] == score_all(checks, got["answers"][side], row)
            assert isinstance(got["cut"][side], bool)
    # the answers are the chat engine's greedy ones, adapter off and on
    engine = ChatEngine.load(run)
    s = engine.default_settings(temperature=0, max_new_tokens=TOKENS)
    assert result["rows"][0]["answers"] == {"base": engine.generate(rows[0]["prompt"], False, s).strip(),
                                            "tuned": engine.generate(rows[0]["prompt"], True, s).strip()}
    assert isinstance(s, GenSettings)
    for side, per in result["sides"].items():
        for c in CHECKS:
            st = per[c["name"]]
            scores = [r["scores"][side][c["name"]] for r in result["rows"]]
            assert st["n"] == 3 and st["passed"] == sum(x == 1.0 for x in scores)
            assert st["pass_lo"] <= st["pass_rate"] <= st["pass_hi"] and st["mean_lo"] <= st["mean"] <= st["mean_hi"]
            assert st["mean"] == pytest.approx(sum(scores) / 3)
    assert len(result["summary"]) == 2
    for line, c in zip(result["summary"], CHECKS):
        assert re.fullmatch(rf"{c['name']}: base \d+% -> tuned \d+% \(95% CI \d+-\d+% -> \d+-\d+%\), mean score "
                            rf"\d\.\d\d -> \d\.\d\d", line), line
    assert said[0][0] == 0.0 and said[-1][0] == 1.0 and any("row 3 of 3" in t for _, t in said)


def test_evaluate_run_refuses_and_stops_with_a_sentence(evaluated, trained_run, tmp_path):
    from studio.evals.evaluate import EvalCancelled, eval_files, evaluate_run

    run = evaluated[0]
    before = eval_files(run)
    with pytest.raises(EvalCancelled, match="stopped after 0 of 2 rows: nothing was written"):
        evaluate_run(run, rows=2, max_new_tokens=2, cancel=lambda: True)
    assert eval_files(run) == before
    with pytest.raises(ValueError, match="at least 1"):
        evaluate_run(run, rows=0)
    with pytest.raises(ValueError, match="no checks to score answers with"):
        evaluate_run(trained_run, rows=1)
    with pytest.raises(ValueError, match="not a run folder"):
        evaluate_run(tmp_path)
    with pytest.raises(ValueError, match="compares to column 'answer_key'"):
        evaluate_run(run, [{"name": "k", "type": "exact", "compare_to": "answer_key"}], rows=1)


def test_against_another_run_uses_the_two_runs_names(evaluated, tmp_path):
    from studio.evals.evaluate import evaluate_run

    run = evaluated[0]
    other = _copy_run(run, tmp_path / "other", "other")
    path, result = evaluate_run(other, CHECKS[:1], against=run, rows=1, max_new_tokens=3)
    assert list(result["sides"]) == ["checked (final)", "other (final)"] == list(result["rows"][0]["answers"])
    assert result["against"] == str(run) and path.parent == other / "evals"
    # the same weights on both sides: the same greedy answer
    a, b = result["rows"][0]["answers"].values()
    assert a == b
    assert result["summary"][0].startswith("short: checked (final) ")


def test_eval_cli_without_checks_is_a_sentence_and_exit_2(trained_run, tmp_path):
    runs_dir = tmp_path / "runs"
    _copy_run(trained_run, runs_dir / "20260101-000002-plain", "plain")
    res = studio_cli("eval", "20260101-000002-plain", "--runs-dir", runs_dir, timeout=120)
    assert res.returncode == 2 and res.stdout == "", res.stderr
    assert res.stderr.startswith("error: Run 20260101-000002-plain has no checks") and "--checks" in res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    res = studio_cli("eval", "nope", "--runs-dir", runs_dir, timeout=120)
    assert res.returncode == 2 and res.stderr.startswith("error: No run 'nope'"), res.stderr
    res = studio_cli("eval", "20260101-000002-plain", "--runs-dir", runs_dir, "--checks", tmp_path / "none.yaml",
                     timeout=120)
    assert res.returncode == 2 and "none.yaml does not exist" in res.stderr and "Traceback" not in res.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("- name: x\n  type: sometimes\n", encoding="utf-8")
    res = studio_cli("eval", "20260101-000002-plain", "--runs-dir", runs_dir, "--checks", bad, timeout=120)
    assert res.returncode == 2 and res.stderr.startswith("error: ") and "Traceback" not in res.stderr, res.stderr


def test_eval_cli_prints_the_summary_and_the_path_last(trained_run, tmp_path):
    runs_dir = tmp_path / "runs"
    run = _copy_run(trained_run, runs_dir / "20260101-000003-cli", "cli")
    checks = tmp_path / "checks.yaml"
    checks.write_text("checks:\n  - name: short\n    type: length\n    max_words: 3\n", encoding="utf-8")
    res = studio_cli("eval", run.name, "--runs-dir", runs_dir, "--checks", checks, "--rows", 2, "--max-new-tokens", 4,
                     timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = res.stdout.strip().splitlines()
    path = Path(lines[-1])
    assert path.is_file() and path.parent == run / "evals"
    result = json.loads(path.read_text(encoding="utf-8"))
    assert result["rows_n"] == 2 and result["max_new_tokens"] == 4 and result["summary"][0] in lines
    assert any(line.startswith("short ") and "tuned" in line for line in lines)  # the per-check table


def test_model_card_carries_the_latest_evaluation(evaluated):
    import zipfile

    from studio.export import export_adapter_zip
    from studio.export.card import model_card

    run, path, result, _ = evaluated
    card = model_card(run)
    assert "## Evaluation on checks" in card and "3 held-out prompts" in card
    for line in result["summary"]:
        assert f"- {line}" in card
    assert card.index("## Evaluation on checks") < card.index("## How to load")
    assert "not this one" in model_card(run, checkpoint="checkpoint-4")  # the card says which adapter was evaluated
    with zipfile.ZipFile(export_adapter_zip(run)) as zf:
        assert result["summary"][0] in zf.read("README.md").decode("utf-8")


def test_model_card_without_an_evaluation_has_no_such_section(trained_run):
    from studio.export.card import model_card
    assert "Evaluation on checks" not in model_card(trained_run)


def test_heldout_comparison_shows_the_checks_as_columns(evaluated):
    from studio.chat import ChatEngine, GenSettings, compare_heldout
    from studio.ui.chat import handlers, heldout

    run, path, result, _ = evaluated
    engine = ChatEngine.load(run)
    df, stats = compare_heldout(engine, run, n=2, settings=engine.default_settings(temperature=0,
                                                                                  max_new_tokens=TOKENS))
    assert list(df.columns)[:9] == heldout.COMPARE_COLUMNS
    assert list(df.columns)[9:] == ["base short", "tuned short", "base no_digits", "tuned no_digits"]
    # greedy with the same settings as the evaluation: the same answers and scores
    for i in range(2):
        for side in ("base", "tuned"):
            assert df[side].iloc[i] == result["rows"][i]["answers"][side]
            assert df[f"{side} short"].iloc[i] == result["rows"][i]["scores"][side]["short"]
    assert stats["checks"]["short"]["tuned"]["n"] == 2 and len(stats["check_summary"]) == 2
    assert stats["check_summary"][0].startswith("short: base ")
    # no checks asked for: the table as before
    plain, _ = compare_heldout(engine, run, n=1, settings=GenSettings(temperature=0, max_new_tokens=2), checks=[])
    assert list(plain.columns) == heldout.COMPARE_COLUMNS

    settings = handlers.settings_from("", 0.0, 0.9, TOKENS, 0)
    shown, md, csv, _ = heldout.compare(None, str(run), "adapter", 2, settings, str(run.parent))
    assert list(shown.columns)[9:] == list(df.columns)[9:]
    assert all(re.fullmatch(r"[01]\.\d\d", x) for x in shown["tuned short"])
    assert "The run's checks on these 2 rows" in md and stats["check_summary"][0] in md
    assert f"Latest evaluation on the checks ({path.name}: 3 held-out rows" in md and result["summary"][1] in md
    assert csv.read_text(encoding="utf-8-sig").splitlines()[0].endswith("base no_digits,tuned no_digits")
    assert len(heldout.column_widths(len(shown.columns))) == len(shown.columns)


def test_the_evaluation_at_the_end_of_training(evaluated, tmp_path, monkeypatch, caplog):
    from studio.config import RunConfig
    from studio.evals import evaluate
    from studio.runs.events import read_metrics_events

    run = _copy_run(evaluated[0], tmp_path / "run", "after training")
    monkeypatch.setitem(evaluate.AFTER_TRAINING, "cpu", 3)
    cfg = RunConfig.load(run / "config.yaml").replace(train={"checks_eval_rows": 2})
    with caplog.at_level(logging.INFO, logger="studio.train"):
        path = evaluate.evaluate_after_training(run, cfg, device_is_cpu=True)
    assert path is not None and path.is_file()
    result = json.loads(path.read_text(encoding="utf-8"))
    assert (result["rows_n"], result["max_new_tokens"]) == (2, 3)
    ev = [e for e in read_metrics_events(run) if e.get("kind") == "checks_eval"][-1]
    assert ev["file"] == path.name and ev["summary"] == result["summary"] and ev["time"] > 0
    assert result["summary"][0] in caplog.text
    # no checks: nothing to do; a failure is a warning, never an exception (the training has succeeded)
    assert evaluate.evaluate_after_training(run, cfg.replace(checks=[]), device_is_cpu=True) is None
    assert evaluate.evaluate_after_training(run, cfg.replace(train={"checks_eval_rows": 0}), True) is None
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="studio.train"):
        assert evaluate.evaluate_after_training(run / "missing", cfg, device_is_cpu=True) is None
    assert "evaluation on the checks failed" in caplog.text
