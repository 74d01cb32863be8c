"""`studio data` streams the file (formats.scan_examples over read.iter_tables): the same report as training's
read_examples (format, counts, issues with their rows, summary, DataErrors, token sample), in memory that does not
grow with the file (a 200 MB CSV took 2.0 GB read whole)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from studio import cli
from studio.config import ColumnMapping
from studio.data import DataError, read_examples, sample_examples, scan_examples, token_stats
from studio.data import limits as slimits
from studio.data import text as stext
from studio.data import tokens as stokens
from tests.helpers import ROOT, SAMPLES

CHUNKS = (1, 3, 7, slimits.ROWS_PER_CHUNK)  # 1 and 3: duplicates, detection and rows across chunk boundaries


def same(path: Path, **kw) -> object:
    """read_examples and scan_examples (at every chunk size) agree on everything the CLI prints or counts."""
    whole = read_examples(path, **kw)
    ex, rows = sample_examples(whole.examples, whole.rows)
    for chunk in CHUNKS:
        scan = scan_examples(path, rows_per_chunk=chunk, **kw)
        assert (scan.format, scan.mapping, scan.columns, scan.n_rows) == \
               (whole.format, whole.mapping, whole.columns, whole.n_rows), chunk
        assert (scan.n_used, scan.n_skipped) == (whole.n_used, whole.n_skipped), chunk
        assert scan.skipped_reasons.most_common() == whole.skipped_reasons.most_common(), chunk
        assert scan.issues == whole.issues and scan.n_issues == len(whole.issues), chunk
        assert scan.summary() == whole.summary(), chunk
        assert (scan.sample, scan.sample_rows) == (ex, rows), chunk
    return whole


def same_error(path: Path, *needles: str, **kw) -> str:
    with pytest.raises(DataError) as e:
        read_examples(path, **kw)
    msg = str(e.value)
    for chunk in CHUNKS:
        with pytest.raises(DataError) as s:
            scan_examples(path, rows_per_chunk=chunk, **kw)
        assert str(s.value) == msg, chunk
    for n in needles:
        assert n in msg, msg
    return msg


def alpaca_csv_lines() -> list[str]:
    return ["instruction,input,output",
            "What is a ship?,,A big boat.",
            "Say hi,,",                              # empty output
            '"Two\nlines",,"Arr, matey."',            # a quoted line break
            "",                                      # a blank line counts as a row number
            "What is a ship?,,A big boat.",          # duplicate of row 1 (another chunk at 1 and 3 rows a chunk)
            ",,No question.",                        # empty instruction
            "Long," + "x" * 100_001 + ",ok",         # too long
            "Café?,,Oui.",
            "What is a ship?,,A big boat.",          # a second duplicate
            "Say hi,,",                              # a bad row repeated is not a duplicate
            "Last,,One."]


def test_bundled_samples_stream_the_same(monkeypatch):
    for name in ("pirate_qa.jsonl", "pirate_qa.csv"):
        if (SAMPLES / name).exists():
            assert same(SAMPLES / name).n_used > 100
            assert same(SAMPLES / name, system_prompt="Be a pirate.").n_used > 100
    monkeypatch.setattr(stokens, "TOKEN_SAMPLE", 9)  # a real sample of the file: the same rows either way
    whole = same(SAMPLES / "pirate_qa.jsonl")
    scan = scan_examples(SAMPLES / "pirate_qa.jsonl")
    assert len(scan.sample) == 9 and scan.sample_rows == sorted(scan.sample_rows) and scan.sample_rows[-1] > 100
    assert scan.sample == [whole.examples[whole.rows.index(r)] for r in scan.sample_rows]


@pytest.mark.parametrize("encoding,newline", [("utf-8", "\n"), ("utf-8-sig", "\r\n"), ("cp1252", "\n"),
                                              ("utf-16", "\n")])
def test_bad_rows_duplicates_and_encodings_stream_the_same(tmp_path, monkeypatch, encoding, newline):
    p = tmp_path / "qa.csv"
    p.write_bytes(newline.join(alpaca_csv_lines()).encode(encoding))
    monkeypatch.setattr(stext, "_BLOCK", 5)  # characters split across the pieces the encoding is checked in
    rep = same(p)
    assert rep.n_rows == 10 and rep.n_used == 4  # the blank line counts as a row number, not as a row
    assert [(i.row, i.kind) for i in rep.issues if i.severity == "error"] == [
        (2, "empty output"), (5, "duplicate"), (6, "empty instruction"), (7, "row too long"), (9, "duplicate"),
        (10, "empty output")]
    assert {i.problem for i in rep.issues if i.kind == "duplicate"} == {"same example as row 1"}
    if encoding == "cp1252":
        assert rep.issues[0].kind == "not UTF-8" and "byte 0xE9 on line 10" in rep.issues[0].problem
    same_error(p, "cannot be used", skip_invalid=False)


def test_other_shapes_stream_the_same(tmp_path):
    semi = tmp_path / "semi.csv"
    semi.write_text("question;answer\nq1;a1\nq2;\nq1;a1\n", encoding="utf-8")
    assert same(semi).n_used == 1
    tsv = tmp_path / "t.tsv"
    tsv.write_text("prompt\tcompletion\tsystem\np\tc\tBe brief.\np2\t\t\n", encoding="utf-8")
    assert same(tsv).format == "prompt_completion"
    arr = [{"instruction": f"q{i % 4}", "output": f"a{i % 4}"} for i in range(9)]
    js = tmp_path / "arr.json"
    js.write_text(json.dumps(arr), encoding="utf-8")
    assert same(js).n_used == 4
    js2 = tmp_path / "arr.jsonl"
    js2.write_text("  \n" + json.dumps(arr), encoding="utf-8")  # a JSON array saved as .jsonl
    assert same(js2).n_used == 4
    pq = tmp_path / "t.parquet"
    pd.DataFrame({"messages": [[{"role": "user", "content": f"q{i % 5}"}, {"role": "assistant", "content": "a"}]
                               if i % 7 else None for i in range(40)],
                  "system": [None if i % 3 else "Be a pirate." for i in range(40)]}).to_parquet(pq)
    rep = same(pq)
    assert rep.format == "messages" and rep.n_skipped > 10
    same(pq, format="messages", system_prompt="Arr.")


def test_jsonl_rows_and_keys_across_chunks_stream_the_same(tmp_path):
    turn = {"role": "user", "content": "hi"}
    lines = [json.dumps({"messages": [turn, {"role": "assistant", "content": f"a{i % 6}"}]}) for i in range(30)]
    lines[4] = json.dumps({"messages": [turn, {"role": "assistant", "content": 42}]})       # number as text
    lines[8] = json.dumps({"messages": [turn]})                                               # no assistant turn
    lines[12] = json.dumps({"messages": [turn, {"role": "assistant", "content": "x"}, turn]})  # trailing user
    lines[25] = json.dumps({"messages": [turn, {"role": "assistant", "content": "y"}], "system": "Be a pirate."})
    p = tmp_path / "chat.jsonl"
    p.write_text("\n".join(lines[:10]) + "\n\n" + "\n".join(lines[10:]) + "\n", encoding="utf-8")
    rep = same(p)  # "system" appears on line 27 only: a whole read maps it, so must the streamed one
    assert rep.mapping.system == "system" and rep.examples[-1][0] == {"role": "system", "content": "Be a pirate."}
    assert {i.kind for i in rep.issues} >= {"number as text", "no assistant turn", "trailing user turn", "duplicate"}

    late = tmp_path / "late.jsonl"  # the first 25 lines fit no format; the columns that do come later
    late.write_text("\n".join([json.dumps({"id": i}) for i in range(25)]
                              + [json.dumps({"question": "q", "answer": f"a{i}"}) for i in range(5)]),
                    encoding="utf-8")
    rep = same(late)
    assert rep.format == "alpaca" and rep.n_used == 5 and rep.n_skipped == 25


def test_file_errors_are_the_same(tmp_path, monkeypatch):
    bad = tmp_path / "bad.jsonl"  # no format in the first lines, and a broken line later: the broken line is named
    bad.write_text("\n".join([json.dumps({"id": i}) for i in range(30)] + ["{oops"]), encoding="utf-8")
    same_error(bad, "line 31 is not valid JSON")
    cols = tmp_path / "cols.csv"
    cols.write_text("a,b\n" + "1,2\n" * 30, encoding="utf-8")
    same_error(cols, "cannot tell the format")
    fields = tmp_path / "fields.csv"
    fields.write_text("instruction,output\n" + "q,a\n" * 30 + "q,a,extra\n", encoding="utf-8")
    same_error(fields, "row 31 (line 32) has 3 fields")
    none = tmp_path / "none.csv"
    none.write_text("instruction,output\n" + "q,\n" * 12, encoding="utf-8")
    same_error(none, "nothing usable: 12 rows, all skipped: 12 empty output")
    same_error(none, "column 'nope'", columns=ColumnMapping(output="nope"))
    header = tmp_path / "header.csv"
    header.write_text("instruction,output\n\n", encoding="utf-8")
    same_error(header, "no rows (only the header: instruction, output)")
    monkeypatch.setattr(stext, "_BLOCK", 3)
    for name, raw, needle in [
            ("blank.csv", b" \n\t\n", "is empty"), ("bom.jsonl", b"\xef\xbb\xbf  \n", "is empty"),
            ("nul.csv", b"instruction,output\n\xe9,a\n" + b"q,\x00\n", "NUL bytes"),
            ("neither.csv", b"instruction,output\nq\xe9,a\n\n\x81,b\n", "first bad byte 0xE9 on line 2"),
            ("cut.csv", b"instruction,output\nq,a\xc3", "byte 0xC3 on line 2"),
            ("u16.csv", b"\xff\xfe" + "instruction,output\nq,a\n".encode("utf-16-le") + b"\x00\xd8"
             + ",b\n".encode("utf-16-le"), "damaged character on line 3")]:
        (tmp_path / name).write_bytes(raw)
        if name == "cut.csv":  # not UTF-8 at its very end: read as Windows-1252, with a warning
            assert needle in same(tmp_path / name).issues[0].problem
        else:
            same_error(tmp_path / name, needle)
    monkeypatch.setattr(slimits, "MAX_ROWS", 20)
    many = tmp_path / "many.jsonl"
    many.write_text("".join(json.dumps({"instruction": "q", "output": f"a{i}"}) + "\n" for i in range(25)))
    same_error(many, "more than 20 rows")


def old_cli(path: Path, show: int, tok=None, max_length: int = 512) -> str:
    """What cmd_data printed before it streamed (read_examples, every example kept)."""
    report = read_examples(path)
    out = [report.summary()]
    for issue in report.issues[:show]:
        where = ("file" if issue.row is None else f"row {issue.row}") + (
            f", column '{issue.column}'" if issue.column else "")
        out.append(f"  [{issue.severity}] {where}: {issue.problem} -> {issue.fix}")
    if len(report.issues) > show:
        out.append(f"  ... and {len(report.issues) - show} more")
    if tok is not None:
        examples, rows = sample_examples(report.examples, report.rows)
        st = token_stats(examples, tok, max_length, rows)
        of = f" (a random sample of {len(examples):,} of {report.n_used:,})" if len(examples) < report.n_used else ""
        out.append(f"Tokens per example{of}: median {st.p50}, p95 {st.p95}, max {st.max}; {st.pct_over:.1f}% over "
                   f"{max_length}; {st.trained_tokens} of {st.total_tokens} tokens are trained on (assistant turns).")
    return "\n".join(out) + "\n"


def test_cli_output_is_unchanged(tmp_path, capsys, monkeypatch, demo_model_dir):
    p = tmp_path / "latin.csv"
    p.write_bytes("\n".join(alpaca_csv_lines()).encode("cp1252"))
    files = [p] + [SAMPLES / n for n in ("pirate_qa.jsonl", "pirate_qa.csv") if (SAMPLES / n).exists()]
    for f in files:
        for show in (0, 2, 20, -1):
            assert cli.main(["data", str(f), "--show", str(show)]) == 0
            assert capsys.readouterr().out == old_cli(f, show), (f, show)
    from studio.models import load_tokenizer
    tok = load_tokenizer(demo_model_dir)
    monkeypatch.setattr(stokens, "TOKEN_SAMPLE", 7)  # the sample, not all of the file, and the same rows
    for f in files:
        assert cli.main(["data", str(f), "--tokens", "--model", str(demo_model_dir), "--max-length", "64"]) == 0
        out = capsys.readouterr().out
        assert out == old_cli(f, 20, tok, 64), f
        assert ("a random sample of 7 of" in out) == (f != p)


def peak_rss_mb(*args: str) -> float:
    """Peak RSS of `python -m studio ARGS`, from a fresh parent whose only child it is."""
    code = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", code, sys.executable, "-m", "studio", *args], cwd=ROOT,
                         capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1]) / 1024  # KB on Linux


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KB on Linux only")
def test_cli_memory_does_not_grow_with_the_file(tmp_path):
    """A 60 MB CSV of ~530k rows: read whole it took +560 MB (9.4x the file) over the interpreter's; streamed +35."""
    p = tmp_path / "big.csv"
    words = "the a ship sail sea captain treasure gold map island parrot rum crew anchor storm wind".split()
    with open(p, "w", encoding="utf-8", newline="") as f:
        f.write("instruction,input,output\n")
        for i in range(530_000):
            q = " ".join(words[(i * 7 + j) % len(words)] for j in range(3 + i % 10))
            f.write(f'"Q{i}: {q}?",,"{" ".join(words[(i + j) % len(words)] for j in range(5 + i % 9))}, arr."\n')
    size_mb = p.stat().st_size / 1e6
    assert size_mb > 50
    base = peak_rss_mb("data", str(SAMPLES / "pirate_qa.csv"))
    peak = peak_rss_mb("data", str(p))
    assert peak - base < 1.5 * size_mb, f"peak {peak:.0f} MB, interpreter {base:.0f} MB, file {size_mb:.0f} MB"
