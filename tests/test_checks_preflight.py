"""`studio checks DATA --checks YAML` scores the data's own reference answers: a right check passes them all, a
wrong one passes none and names the first failing row and what its extract found; bad checks and an unknown column
give one `error:` line and exit 2. Also preflight and try_it as plain functions."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from studio.evals import preflight as pf
from tests.helpers import studio_cli, word_problems_csv

CHECKS = """checks:
- name: right_answer
  type: numeric
  extract: {json: answer}
- name: wrong_answer
  type: numeric
  extract: {json: result}
- name: expected
  type: numeric
  extract: last_number
  compare_to: expected
"""


@pytest.fixture
def problems(tmp_path) -> Path:
    """Word problems whose answers are JSON like {"answer": 19, "unit": "kites"}, with an `expected` column."""
    return word_problems_csv(tmp_path / "problems.csv", extra="expected")


def _checks(tmp_path, text: str) -> Path:
    p = tmp_path / "checks.yaml"
    p.write_text(text, encoding="utf-8")
    return p


def test_cli_scores_the_references_and_names_a_wrong_checks_first_row(tmp_path, problems):
    r = studio_cli("checks", problems, "--checks", _checks(tmp_path, CHECKS), timeout=120)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    table = out.split("\n\n")[1].splitlines()  # the table comes after the first line and a blank one
    lines = {ln.split()[0]: ln for ln in table[1:]}
    assert "5/5" in lines["right_answer"] and "100.0%" in lines["right_answer"]
    assert "0/5" in lines["wrong_answer"] and "0.0%" in lines["wrong_answer"]
    assert "5/5" in lines["expected"]
    assert ("wrong_answer passes 0 of 5 reference answers: `extract: json:result` found nothing in row 1, whose "
            "answer is '{\"answer\": 19") in out
    assert "row 2: extracted nothing" in out and "row 4:" not in out  # --show 3 by default
    assert "Traceback" not in r.stderr


def test_cli_refuses_bad_yaml_and_an_unknown_column_in_one_line(tmp_path, problems):
    cases = [("- name: a\n  type: [exact\n", "not valid YAML"),
             ("- {name: a, type: exact, compare_to: nope}\n", "column 'nope'"),
             ("- {name: a, type: regex, pattern: '('}\n", "not a valid regular expression")]
    for text, needle in cases:
        r = studio_cli("checks", problems, "--checks", _checks(tmp_path, text), timeout=120)
        assert r.returncode == 2, (text, r.stdout, r.stderr)
        err = r.stderr.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], r.stderr
    r = studio_cli("checks", tmp_path / "missing.csv", "--checks", _checks(tmp_path, CHECKS), timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr, r.stderr


def test_preflight_under_100_percent_and_try_it(problems):
    rows = pf.load_rows(problems)
    checks = [{"name": "small", "type": "numeric", "extract": {"json": "answer"}, "tolerance": 0},
              {"name": "under_20", "type": "regex", "extract": {"json": "answer"}, "pattern": "^1?[0-9]$"}]
    res = pf.preflight(checks, rows, show=1)
    under = res["checks"][1]
    assert res["n"] == 5 and under["passed"] == 2 and len(under["failing"]) == 1
    assert under["failing"][0]["row"] == 2 and under["failing"][0]["extracted"] == "24"
    assert under["verdict"].startswith("under_20 fails 3 of 5 rows: first row 2: does not match")
    assert res["verdicts"] == [under["verdict"]]
    tried = pf.try_it(checks, 'I think {"answer": 19}', rows[0])
    assert [t["score"] for t in tried] == [1.0, 1.0] and tried[0]["extracted"] == "19"
    wrong = pf.try_it(checks, "twenty", rows[0])
    assert wrong[0]["score"] == 0.0 and "found nothing" in wrong[0]["why"]


def test_a_file_without_other_columns_can_only_compare_to_the_answer(tmp_path):
    p = tmp_path / "qa.jsonl"
    p.write_text(json.dumps({"instruction": "2+2?", "output": "4"}) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="can only compare to the answer"):
        pf.load_rows(p, checks=[{"name": "x", "type": "exact", "compare_to": "gold"}])
    assert pf.preflight([{"name": "x", "type": "numeric"}], pf.load_rows(p))["checks"][0]["passed"] == 1
