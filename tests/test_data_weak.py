"""Hostile or odd text in a data file becomes a row issue or a DataError with a line and column, never a traceback
(audit: deep nesting, a 5000-digit integer, a lone surrogate, the CLI's "row None:")."""
from __future__ import annotations

import json

import pytest

from studio import cli
from studio.data import read_examples, write_jsonl
from tests.helpers import data_refused as fails

DEEP = "[" * 100_000 + "]" * 100_000
GOOD = json.dumps({"instruction": "Hello?", "output": "Ahoy."})


@pytest.mark.parametrize("name,text,needles", [
    ("deep.json", DEEP, ("nested", "100", "line 1, column 101")),
    ("deep_inside.json", '[\n  {"instruction": "q", "output": ' + DEEP + "}\n]", ("nested", "line 2, column 132")),
    ("deep.jsonl", GOOD + "\n" + '{"messages": ' + DEEP + "}\n", ("nested", "line 2, column 113")),
    ("bigint.jsonl", GOOD + "\n" + '{"instruction": "q", "output": ' + "7" * 5000 + "}\n",
     ("line 2, column 32", "5000 digits", "quotes")),
    ("bigint.json", '[{"instruction": "q",\n "output": ' + "7" * 5000 + "}]", ("line 2, column 12", "digits")),
])
def test_deep_nesting_and_huge_numbers_are_file_errors_with_line_and_column(tmp_path, name, text, needles):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    fails(p, *needles)


def test_deep_or_huge_json_in_a_csv_cell_is_a_row_issue(tmp_path):
    p = tmp_path / "cells.csv"
    good = json.dumps([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ahoy"}])
    rows = [good, DEEP, '[{"role": "user", "content": ' + "9" * 5000 + "}]"]
    p.write_text("messages\n" + "".join('"' + r.replace('"', '""') + '"\n' for r in rows), encoding="utf-8")
    rep = read_examples(p)
    assert rep.n_used == 1
    bad = {i.row: i for i in rep.issues if i.severity == "error"}
    assert set(bad) == {2, 3} and all(i.column == "messages" for i in bad.values()), rep.issues
    assert "nested" in bad[2].problem and "digits" in bad[3].problem, rep.issues


def test_a_lone_surrogate_skips_the_row_and_the_rest_can_be_written(tmp_path):
    p = tmp_path / "sur.jsonl"
    p.write_text(GOOD + "\n" + '{"instruction": "bad \\ud800 text", "output": "x"}\n'
                 + '{"instruction": "a", "output": "b\\udfff"}\n',
                 encoding="utf-8")
    rep = read_examples(p)
    assert rep.n_used == 1 and "all" not in rep.summary()
    bad = sorted((i.row, i.column) for i in rep.issues if i.severity == "error")
    assert bad == [(2, "instruction"), (3, "output")], rep.issues
    issue = next(i for i in rep.issues if i.row == 2)
    assert "\\ud800" in issue.problem and "character 5" in issue.problem, issue
    issue.problem.encode("utf-8")  # printable as it is
    write_jsonl(rep.examples, tmp_path / "out.jsonl").read_text(encoding="utf-8")


def test_utf16_with_a_lone_surrogate_is_a_file_error(tmp_path):
    p = tmp_path / "u16.csv"
    body = "instruction,output\nq,a\n".encode("utf-16-le") + b"\x00\xd8" + ",b\n".encode("utf-16-le")
    p.write_bytes(b"\xff\xfe" + body)
    fails(p, "line 3", "UTF-8")


def test_cli_prints_file_warnings_without_row_none_and_survives_surrogates(tmp_path, capsys):
    p = tmp_path / "latin.csv"
    p.write_bytes("instruction,output\nCafé?,Oui.\n".encode("cp1252"))
    assert cli.main(["data", str(p)]) == 0
    out = capsys.readouterr().out
    assert "row None" not in out and "[warning] file: the file is not UTF-8" in out, out

    q = tmp_path / "role.jsonl"
    ok = '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}'
    q.write_text(ok + "\n" + '{"messages": [{"role": "us\\udc80er", "content": "a"}, '
                 '{"role": "assistant", "content": "b"}]}\n', encoding="utf-8")
    assert cli.main(["data", str(q)]) == 0
    out = capsys.readouterr().out
    out.encode("utf-8")
    assert "row 2, column 'messages'" in out, out
