"""studio.checks on hand-made answers: every check type passing and failing (with the reason it gives), the
extract forms, the DOTALL default, JSON Schema at parse and score time, validation messages that name the check,
the YAML round trip, and the Wilson / mean intervals against hand-computed values."""
from __future__ import annotations

import math

import pytest

from studio.checks import (FIELDS, NORMALIZERS, TYPES, Check, check_columns, detail, extract, from_yaml, mean_ci,
                           parse_checks, score, score_all, summarize, to_yaml, wilson)

ROW = {"reference": "The answer is 1234.", "columns": {"question": "q", "answer": "1,234"}}


def one(**spec) -> Check:
    return parse_checks([{"name": "c", **spec}])[0]


def run(spec: dict, answer: str, row: dict | None = None) -> dict:
    return detail(one(**spec), answer, row if row is not None else ROW)


# --- types ---------------------------------------------------------------------------------------------------

def test_exact_normalize_and_compare_to():
    assert run({"type": "exact"}, "  Paris \n", {"reference": "Paris"})["score"] == 1
    d = run({"type": "exact"}, "paris", {"reference": "Paris"})
    assert d["score"] == 0 and d["why"] == "'paris' != 'Paris'"
    spec = {"type": "exact", "normalize": ["lower", "collapse_spaces", "remove_punctuation", "strip"]}
    assert run(spec, "New   york!", {"reference": "new York."})["score"] == 1
    assert run({"type": "exact", "normalize": ["remove_commas"]}, "1,234", {"reference": "1234"})["score"] == 1
    assert run({"type": "exact", "compare_to": "answer"}, "1,234", ROW)["score"] == 1
    assert run({"type": "exact"}, "1,234", ROW)["score"] == 0


def test_missing_reference_scores_zero():
    for spec in ({"type": "exact"}, {"type": "numeric"}, {"type": "json", "same_as_reference": True}):
        d = run(spec, '{"a": 1}', {"reference": None})
        assert (d["score"], d["why"]) == (0.0, "no reference")
    d = run({"type": "numeric", "compare_to": "final"}, "3", {"reference": "3", "columns": {}})
    assert d["score"] == 0 and "column 'final'" in d["why"]


def test_numeric_commas_tolerance_relative():
    assert run({"type": "numeric"}, "1,234", {"reference": "1234"})["score"] == 1
    assert run({"type": "numeric"}, "$1,234.00", {"reference": "1234"})["score"] == 1
    assert run({"type": "numeric"}, "So the total is 1,234 apples.", {"reference": "1234"})["score"] == 1
    assert run({"type": "numeric"}, "50%", {"reference": "50"})["score"] == 1
    assert run({"type": "numeric", "compare_to": "answer"}, "1234", ROW)["score"] == 1
    d = run({"type": "numeric"}, "5", {"reference": "6"})
    assert (d["score"], d["why"]) == (0.0, "5 != 6")
    assert run({"type": "numeric", "tolerance": 0.1}, "1.1", {"reference": "1.0"})["score"] == 1  # float error
    assert run({"type": "numeric", "tolerance": 0.1}, "1.2", {"reference": "1.0"})["score"] == 0
    assert run({"type": "numeric", "relative": 0.01}, "101", {"reference": "100"})["score"] == 1
    d = run({"type": "numeric", "relative": 0.01}, "102", {"reference": "100"})
    assert d["score"] == 0 and d["why"] == "102 != 100 (relative 0.01)"
    assert run({"type": "numeric"}, "no idea", {"reference": "3"})["why"] == "no number in 'no idea'"


def test_regex_dotall_default_mode_and_expect():
    answer = "Answer:\nsome work\n42"
    assert run({"type": "regex", "pattern": r"^Answer:.*42$"}, answer)["score"] == 1
    d = run({"type": "regex", "pattern": r"^Answer:.*42$", "dotall": False}, answer)
    assert d["score"] == 0 and d["why"].startswith("does not match")
    assert run({"type": "regex", "pattern": "42", "mode": "fullmatch"}, "42 apples")["score"] == 0
    assert run({"type": "regex", "pattern": r"\d+", "mode": "fullmatch"}, "42")["score"] == 1
    assert run({"type": "regex", "pattern": "answer", "ignore_case": True}, "ANSWER: 1")["score"] == 1
    assert run({"type": "regex", "pattern": "answer"}, "ANSWER: 1")["score"] == 0
    assert run({"type": "regex", "pattern": "sorry", "expect": False}, "Sure: 4")["score"] == 1
    assert run({"type": "regex", "pattern": "sorry", "expect": False}, "I'm sorry")["score"] == 0


SCHEMA = {"type": "object", "required": ["x"], "properties": {"x": {"type": "integer"}}}


def test_json_parse_required_schema_and_reference():
    assert run({"type": "json"}, '{"a": 1}')["score"] == 1
    assert run({"type": "json"}, "Here you go:\n```json\n{\"a\": [1, 2]}\n```\nDone.")["score"] == 1
    assert run({"type": "json"}, "The list is [1, 2, 3] as asked")["score"] == 1
    d = run({"type": "json"}, "no json {here")
    assert (d["score"], d["why"]) == (0.0, "no JSON object in the answer")
    d = run({"type": "json", "required": ["answer"]}, '{"reply": 1}')
    assert (d["score"], d["why"]) == (0.0, "missing key 'answer'")
    d = run({"type": "json", "required": ["answer"]}, "[1]")
    assert d["why"] == "the JSON is an array, not an object with keys"
    assert run({"type": "json", "schema": SCHEMA}, 'ok {"x": 3}')["score"] == 1
    d = run({"type": "json", "schema": SCHEMA}, '{"y": 3}')
    assert d["score"] == 0 and d["why"] == "schema: 'x' is a required property at $"
    d = run({"type": "json", "schema": SCHEMA}, '{"x": "three"}')
    assert d["score"] == 0 and d["why"].startswith("schema: 'three' is not of type 'integer'") and "$.x" in d["why"]
    same = {"type": "json", "same_as_reference": True}
    assert run(same, 'Result: {"b": 2, "a": 1}', {"reference": '{"a": 1, "b": 2}'})["score"] == 1
    assert run(same, '{"a": 1}', {"reference": '{"a": 2}'})["score"] == 0


def test_contains_and_not_contains():
    spec = {"type": "contains", "all": ["Paris", "France"], "any": ["capital", "city"]}
    assert run(spec, "Paris is the capital of France")["score"] == 1
    d = run(spec, "Paris is the capital")
    assert (d["score"], d["why"]) == (0.0, "missing 'France'")
    assert run(spec, "Paris, France")["why"] == "none of 'capital', 'city'"
    assert run({"type": "contains", "any": ["yes"], "ignore_case": True}, "YES!")["score"] == 1
    assert run({"type": "contains", "any": ["yes"]}, "YES!")["score"] == 0
    nc = {"type": "not_contains", "any": ["As an AI", "sorry"], "ignore_case": True}
    assert run(nc, "Sure, here it is.")["score"] == 1
    d = run(nc, "SORRY, I can't.")
    assert (d["score"], d["why"]) == (0.0, "contains 'sorry'")


def test_length_falls_linearly():
    spec = {"type": "length", "max_words": 40}
    for words, expected in ((10, 1.0), (40, 1.0), (60, 0.5), (80, 0.0), (200, 0.0)):
        assert run(spec, " ".join(["w"] * words))["score"] == pytest.approx(expected)
    assert run(spec, " ".join(["w"] * 62))["why"] == "62 words, limit 40"
    assert run({"type": "length", "min_words": 10}, "one two three four five")["score"] == pytest.approx(0.5)
    both = {"type": "length", "max_chars": 10, "min_words": 4}
    assert run(both, "a b c d")["score"] == 1
    assert run(both, "aaaaaaaaaaaaaaa")["score"] == pytest.approx(0.25)  # min(2 - 15/10, 1/4)


# --- extract -------------------------------------------------------------------------------------------------

def test_extract_forms():
    text = "Reasoning... <answer> 42 </answer> and more"
    assert extract(None, "  hi \n") == "hi"
    assert extract("whole", " hi ") == "hi"
    assert extract({"between": ["<answer>", "</answer>"]}, text) == "42"
    assert extract({"between": ["####", ""]}, "work\n#### 18\n") == "18"
    assert extract({"between": ["<x>", "</x>"]}, text) is None
    assert extract({"between": ["<answer>", "</nope>"]}, text) is None
    assert extract({"regex": r"Final: (\w+)"}, "a\nFinal: yes\n") == "yes"
    assert extract({"regex": r"\d+"}, "a 12 b 34") == "12"
    assert extract({"regex": r"start(.*)end"}, "start\nmiddle\nend") == "\nmiddle\n"  # DOTALL
    assert extract({"regex": "zzz"}, "abc") is None
    assert extract("last_number", "from -3 to 1,234.5 or 2e-4.") == "2e-4"
    assert extract("last_number", "total: -1,234.5 dollars") == "-1234.5"
    assert extract("last_number", "pages 10-20") == "20"
    assert extract("last_number", "no numbers") is None
    doc = 'Sure!\n```json\n{"a": {"b": [{"c": 7}, {"c": "x"}]}, "ok": true}\n```'
    assert extract({"json": "a.b.0.c"}, doc) == "7"
    assert extract({"json": "a.b.1.c"}, doc) == "x"
    assert extract({"json": "a.b"}, doc) == '[{"c": 7}, {"c": "x"}]'
    assert extract({"json": "ok"}, doc) == "true"
    assert extract({"json": "a.b.5.c"}, doc) is None
    assert extract({"json": "a.missing"}, doc) is None
    assert extract({"json": "a"}, "not json") is None


def test_extract_applies_to_reference_and_reports_nothing_found():
    spec = {"type": "numeric", "extract": {"between": ["####", ""]}}
    assert run(spec, "work... #### 1,234", {"reference": "steps\n#### 1234"})["score"] == 1
    d = run({"type": "numeric", "extract": {"json": "answer"}}, '{"other": 1}', {"reference": '{"answer": 1}'})
    assert (d["score"], d["extracted"], d["why"]) == (0.0, None, "extract json:answer found nothing")
    d = run(spec, "#### 5", {"reference": "no marker"})
    assert d["score"] == 0 and d["why"] == "extract between:'####'..'' found nothing in the reference"
    d = run({"type": "exact", "extract": "last_number"}, "it is 12", {"reference": "12.0 or 12"})
    assert (d["extracted"], d["reference"], d["score"]) == ("12", "12", 1.0)


def test_score_all_and_detail_fields():
    checks = from_yaml("""
checks:
  - {name: is_json, type: json, required: [answer]}
  - {name: right_answer, type: numeric, extract: {json: answer}, tolerance: 0}
  - {name: short, type: length, max_words: 40, weight: 0.5}
""")
    row = {"reference": '{"answer": 42}'}
    assert score_all(checks, 'Sure: {"answer": 42}', row) == {"is_json": 1.0, "right_answer": 1.0, "short": 1.0}
    assert score_all(checks, '{"answer": 41}', row)["right_answer"] == 0.0
    assert score(checks[1], '{"answer": "42"}', row) == 1.0
    assert detail(checks[0], '{"answer": 1}', row) == {"score": 1.0, "extracted": '{"answer": 1}',
                                                         "reference": None, "why": ""}


# --- validation ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, words", [
    ({"name": "x", "type": "fuzzy"}, ["check 1 'x'", "unknown type 'fuzzy'", "exact, numeric"]),
    ({"name": "x"}, ["check 1 'x' has no type"]),
    ({"name": "x", "type": "regex", "pattern": "a", "tolerance": 1}, ["check 1 'x'", "'tolerance'", "pattern, mode"]),
    ({"type": "exact"}, ["check 1 has no name"]),
    ({"name": "has space", "type": "exact"}, ["check 1", "'has space'", "letters, digits"]),
    ({"name": "x", "type": "exact", "weight": -1}, ["check 1 'x'", "weight"]),
    ({"name": "x", "type": "exact", "weight": "heavy"}, ["check 1 'x'", "weight"]),
    ({"name": "x", "type": "exact", "weight": True}, ["check 1 'x'", "weight"]),
    ({"name": "x", "type": "regex", "pattern": "(ab"},
     ["check 1 'x': the pattern '(ab' is not a valid regular expression: missing ), unterminated subpattern "
      "at position 0."]),
    ({"name": "x", "type": "regex"}, ["check 1 'x'", "needs a pattern"]),
    ({"name": "x", "type": "regex", "pattern": "a", "mode": "match"}, ["check 1 'x'", "fullmatch"]),
    ({"name": "x", "type": "regex", "pattern": "a", "dotall": "no"}, ["check 1 'x'", "dotall must be true or false"]),
    ({"name": "x", "type": "json", "schema": {"type": "objekt"}}, ["check 1 'x'", "not a valid JSON Schema at $.type"]),
    ({"name": "x", "type": "json", "schema": {"properties": {"a": {"minimum": "3"}}}},
     ["check 1 'x'", "$.properties.a.minimum", "'3' is not of type 'number'"]),
    ({"name": "x", "type": "json", "schema": "object"}, ["check 1 'x'", "schema must be"]),
    ({"name": "x", "type": "json", "required": "answer"}, ["check 1 'x'", "required must be a list"]),
    ({"name": "x", "type": "json", "compare_to": "a"}, ["check 1 'x'", "same_as_reference"]),
    ({"name": "x", "type": "exact", "extract": "first_line"}, ["check 1 'x'", "extract 'first_line'", "between"]),
    ({"name": "x", "type": "exact", "extract": {"between": ["<a>"]}}, ["check 1 'x'", "between needs two texts"]),
    ({"name": "x", "type": "exact", "extract": {"regex": "[a"}}, ["check 1 'x'", "extract pattern '[a'"]),
    ({"name": "x", "type": "exact", "extract": {"json": ["a"]}}, ["check 1 'x'", "dotted path"]),
    ({"name": "x", "type": "exact", "extract": {"json": "a", "regex": "b"}}, ["check 1 'x'", "extract"]),
    ({"name": "x", "type": "exact", "normalize": ["lowercase"]}, ["check 1 'x'", "'lowercase'", "strip, lower"]),
    ({"name": "x", "type": "exact", "compare_to": ""}, ["check 1 'x'", "compare_to"]),
    ({"name": "x", "type": "numeric", "tolerance": -0.1}, ["check 1 'x'", "tolerance must be a number of 0 or more"]),
    ({"name": "x", "type": "numeric", "relative": "1%"}, ["check 1 'x'", "relative"]),
    ({"name": "x", "type": "contains"}, ["check 1 'x'", "all: [...]"]),
    ({"name": "x", "type": "contains", "any": []}, ["check 1 'x'", "any must be a list"]),
    ({"name": "x", "type": "not_contains", "all": "sorry"}, ["check 1 'x'", "all must be a list"]),
    ({"name": "x", "type": "length"}, ["check 1 'x'", "max_words"]),
    ({"name": "x", "type": "length", "max_words": 0}, ["check 1 'x'", "max_words must be a whole number"]),
    ({"name": "x", "type": "length", "max_words": 2.5}, ["check 1 'x'", "max_words"]),
    ({"name": "x", "type": "length", "min_chars": 9, "max_chars": 3}, ["check 1 'x'", "min_chars (9)"]),
    ("just a string", ["check 1", "not a mapping"]),
])
def test_validation_errors_name_the_check(spec, words):
    with pytest.raises(ValueError) as e:
        parse_checks([spec])
    msg = str(e.value)
    for w in words:
        assert w in msg, (w, msg)
    assert "\n" not in msg


def test_validation_position_duplicates_and_list_shape():
    ok = {"name": "a", "type": "exact"}
    with pytest.raises(ValueError, match=r"check 2 'b': unknown type"):
        parse_checks([ok, {"name": "b", "type": "nope"}])
    with pytest.raises(ValueError, match=r"check 2 'a' has the same name as check 1"):
        parse_checks([ok, {"name": "a", "type": "json"}])
    with pytest.raises(ValueError, match=r"check 2 'a' has the same name"):
        parse_checks([one(type="exact").__class__("a", "exact"), ok])
    with pytest.raises(ValueError, match="must be a list"):
        parse_checks({"name": "a", "type": "exact"})
    assert parse_checks(None) == []


def test_weight_default_zero_and_passthrough():
    c = one(type="exact")
    assert c.weight == 1.0 and c.extract is None and c.fields == {}
    assert one(type="exact", weight=0).weight == 0.0
    assert one(type="exact", weight=2.5).weight == 2.5
    assert parse_checks([c]) == [c]


def test_check_columns():
    checks = parse_checks([{"name": "right", "type": "numeric", "compare_to": "final"}, {"name": "j", "type": "json"}])
    with pytest.raises(ValueError) as e:
        check_columns(checks, ["question", "answer"])
    assert str(e.value) == ("check 'right' compares to column 'final' which the data does not have: its columns "
                            "are question, answer.")
    check_columns(checks, ["question", "final"])
    check_columns(parse_checks([{"name": "j", "type": "json"}]), [])


def test_round_trip_and_yaml():
    raw = [
        {"name": "a", "type": "exact", "normalize": ["lower"], "compare_to": "answer", "extract": "last_number"},
        {"name": "b.2", "type": "numeric", "weight": 0.5, "extract": {"json": "x.0"}, "tolerance": 0.5},
        {"name": "c-3", "type": "regex", "pattern": "^a.*b$", "mode": "fullmatch", "dotall": False, "expect": False},
        {"name": "d", "type": "json", "schema": SCHEMA, "required": ["x"], "extract": {"between": ["<j>", ""]}},
        {"name": "e", "type": "contains", "all": ["x"], "any": ["y", "z"], "ignore_case": True},
        {"name": "f", "type": "not_contains", "any": ["sorry"]},
        {"name": "g", "type": "length", "max_words": 40, "min_chars": 2, "weight": 0},
    ]
    checks = parse_checks(raw)
    assert [c.to_dict() for c in checks] == raw
    assert parse_checks([c.to_dict() for c in checks]) == checks
    assert from_yaml(to_yaml(checks)) == checks
    assert to_yaml(checks).startswith("checks:\n- name: a\n  type: exact\n")
    assert len({hash(c) for c in checks}) == len(checks)
    assert set(FIELDS) == set(TYPES) and "remove_punctuation" in NORMALIZERS


def test_from_yaml_shapes_and_errors():
    listed = from_yaml("- {name: a, type: json}\n- {name: b, type: length, max_chars: 10}\n")
    mapped = from_yaml("model: x\nchecks:\n  - {name: a, type: json}\n  - {name: b, type: length, max_chars: 10}\n")
    assert listed == mapped and [c.name for c in listed] == ["a", "b"]
    assert from_yaml("") == [] and from_yaml("checks:\n") == []
    with pytest.raises(ValueError, match=r"not valid YAML at line 3, column 1: expected ',' or '}'"):
        from_yaml("checks:\n  - {name: a, type: json\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        from_yaml("[" * 5000)
    with pytest.raises(ValueError, match="YAML list"):
        from_yaml("name: a\ntype: json\n")
    with pytest.raises(ValueError, match=r"check 1 'a': unknown type"):
        from_yaml("checks: [{name: a, type: jsn}]")


# --- stats ---------------------------------------------------------------------------------------------------

def test_wilson_and_mean_ci():
    lo, hi = wilson(0, 240)
    assert lo == 0.0 and hi == pytest.approx(0.0158, abs=1e-4)
    assert wilson(120, 240) == pytest.approx((0.437, 0.563), abs=1e-3)
    assert wilson(240, 240)[1] == 1.0 and wilson(240, 240)[0] == pytest.approx(1 - 0.0158, abs=1e-4)
    assert wilson(0, 0) == (0.0, 1.0)
    assert all(math.isnan(x) for x in mean_ci([]))
    mean, lo, hi = mean_ci([0.0, 1.0] * 50)
    assert mean == 0.5 and (lo, hi) == pytest.approx((0.5 - 1.96 * 0.05025, 0.5 + 1.96 * 0.05025), abs=1e-4)
    assert mean_ci([1.0, 1.0, 1.0]) == (1.0, 1.0, 1.0)
    assert mean_ci([0.0, 1.0]) == (0.5, 0.0, 1.0)  # clipped


def test_summarize_counts():
    s = summarize([1.0, 1.0, 0.5, 0.0])
    assert (s["n"], s["passed"], s["pass_rate"], s["mean"]) == (4, 2, 0.5, 0.625)
    assert (s["pass_lo"], s["pass_hi"]) == wilson(2, 4)
    assert s["mean_lo"] < 0.625 < s["mean_hi"]
    empty = summarize([])
    assert (empty["n"], empty["passed"], empty["pass_lo"], empty["pass_hi"]) == (0, 0, 0.0, 1.0)
    assert math.isnan(empty["pass_rate"]) and math.isnan(empty["mean"])
