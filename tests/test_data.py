"""studio.data: reading every format, refusing bad input with a useful message, and the assistant mask."""
from __future__ import annotations

import copy
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from studio.config import ColumnMapping, DataSettings
from studio.models import ensure_chat_template
from studio.data import (DataError, DatasetReport, Issue, detect_format, read_examples, from_config, read_jsonl,
                         read_table, split, token_stats, tokenize_messages, write_jsonl)
from tests.helpers import ROOT, SAMPLES
from tests.helpers_tokenizer import CHATML, make_test_tokenizer


@pytest.fixture(scope="module")
def tok():
    return make_test_tokenizer()


def put(tmp_path: Path, name: str, content) -> Path:
    p = tmp_path / name
    if isinstance(content, pd.DataFrame):
        content.to_parquet(p)
    elif isinstance(content, bytes):
        p.write_bytes(content)
    elif isinstance(content, str):
        p.write_bytes(content.encode("utf-8"))
    elif name.endswith((".jsonl", ".ndjson")):
        p.write_text("".join(json.dumps(r) + "\n" for r in content), encoding="utf-8")
    else:
        p.write_text(json.dumps(content), encoding="utf-8")
    return p


def digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def load(tmp_path: Path, name: str, content, **kw) -> DatasetReport:
    """Load a file, asserting its bytes are untouched."""
    p = put(tmp_path, name, content)
    before = digest(p)
    try:
        return read_examples(p, **kw)
    finally:
        assert digest(p) == before, "the user's file was modified"


def fails(tmp_path: Path, name: str, content, *needles: str, **kw) -> str:
    """Loading must raise DataError naming the file and containing each needle (case-insensitive)."""
    with pytest.raises(DataError) as e:
        load(tmp_path, name, content, **kw)
    msg = str(e.value)
    assert name in msg, msg
    for n in needles:
        assert n.lower() in msg.lower(), f"{n!r} not in: {msg}"
    return msg


def only_issue(report: DatasetReport, severity: str = "error") -> Issue:
    found = [i for i in report.issues if i.severity == severity]
    assert len(found) == 1, report.issues
    return found[0]


QA = [{"instruction": "What is 2+2?", "input": "", "output": "4, matey."},
      {"instruction": "Capital of France?", "input": "Answer briefly.", "output": "Paris."}]
EXPECTED = [[{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4, matey."}],
            [{"role": "user", "content": "Capital of France?\n\nAnswer briefly."},
             {"role": "assistant", "content": "Paris."}]]
CSV = 'instruction,input,output\nWhat is 2+2?,,"4, matey."\nCapital of France?,Answer briefly.,Paris.\n'


# --- every format ------------------------------------------------------------------------------

@pytest.mark.parametrize("name,content", [
    ("a.csv", CSV),
    ("a.tsv", CSV.replace(",,", "\t\t").replace("instruction,input,output", "instruction\tinput\toutput")
     .replace('?,"4', '?\t"4').replace("?,Answer briefly.,", "?\tAnswer briefly.\t")),
    ("semicolon.csv", 'instruction;input;output\nWhat is 2+2?;;"4, matey."\n'
                      'Capital of France?;Answer briefly.;Paris.\n'),
    ("a.json", QA),
    ("a.jsonl", QA),
    ("a.ndjson", QA),
    ("a.parquet", pd.DataFrame(QA)),
    ("wrapped.json", {"version": 2, "data": QA}),
    ("records.json", {"q1": QA[0], "q2": QA[1]}),
    ("columns.json", {k: [r[k] for r in QA] for k in QA[0]}),
    ("pandas_default.json", pd.DataFrame(QA).to_json()),
    ("lines_as.json", "".join(json.dumps(r) + "\n" for r in QA)),
    ("pretty_array.jsonl", json.dumps(QA, indent=2)),
    ("bom.csv", "\ufeff" + CSV),
    ("crlf.csv", CSV.replace("\n", "\r\n")),
    ("upper.csv", CSV.replace("instruction,input,output", "Instruction,INPUT,Output")),
    ("utf16.csv", "\ufeff".encode("utf-16-le") + CSV.encode("utf-16-le")),
])
def test_alpaca_in_every_container(tmp_path, name, content):
    r = load(tmp_path, name, content)
    assert r.format == "alpaca"
    assert r.examples == EXPECTED
    assert r.rows == [1, 2] or name.endswith(".jsonl") and r.rows == [2, 7]  # pretty JSON array: items
    assert r.issues == [] and r.n_used == 2 and r.n_skipped == 0


def test_jsonl_rows_are_line_numbers(tmp_path):
    r = load(tmp_path, "gaps.jsonl", json.dumps(QA[0]) + "\n\n" + json.dumps(QA[1]) + "\n")
    assert r.rows == [1, 3]


def test_aliases_question_answer_and_dolly(tmp_path):
    r = load(tmp_path, "qa.csv", "Question,Answer\nWhy?,Because.\n")
    assert r.format == "alpaca" and (r.mapping.instruction, r.mapping.output) == ("Question", "Answer")
    assert r.examples == [[{"role": "user", "content": "Why?"}, {"role": "assistant", "content": "Because."}]]
    r = load(tmp_path, "dolly.jsonl", [{"instruction": "Sum it up", "context": "Long text.", "response": "Short."}])
    assert r.mapping.input == "context" and r.examples[0][0]["content"] == "Sum it up\n\nLong text."


def test_messages_jsonl_csv_and_parquet(tmp_path):
    conv = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Ahoy."}, {"role": "user", "content": "Bye"},
            {"role": "assistant", "content": "Fair winds."}]
    for name, content in [("m.jsonl", [{"messages": conv}]),
                          ("m.csv", pd.DataFrame({"messages": [json.dumps(conv)]}).to_csv(index=False)),
                          ("repr.csv", pd.DataFrame({"messages": [str(conv)]}).to_csv(index=False)),
                          ("m.parquet", pd.DataFrame({"messages": [conv]}))]:
        r = load(tmp_path, name, content)
        assert r.format == "messages", name
        assert r.examples == [conv], name


def test_openai_content_parts(tmp_path):
    conv = [{"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]},
            {"role": "assistant", "content": "Ahoy."}]
    assert load(tmp_path, "parts.jsonl", [{"messages": conv}]).examples[0][0]["content"] == "Hi there"


def test_sharegpt(tmp_path):
    rows = [{"conversations": [{"from": "system", "value": "Pirate."}, {"from": "human", "value": "Hi"},
                               {"from": "gpt", "value": "Arr."}]}]
    r = load(tmp_path, "s.json", rows)
    assert r.format == "sharegpt" and r.mapping.messages == "conversations"
    assert r.examples == [[{"role": "system", "content": "Pirate."}, {"role": "user", "content": "Hi"},
                           {"role": "assistant", "content": "Arr."}]]


def test_prompt_completion_and_text(tmp_path):
    r = load(tmp_path, "pc.jsonl", [{"prompt": "Say hi", "completion": "Hi!"}])
    assert r.format == "prompt_completion"
    assert r.examples == [[{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "Hi!"}]]
    r = load(tmp_path, "t.jsonl", [{"text": "Once upon a time."}, {"text": "The end."}], system_prompt="ignored")
    assert r.format == "text"
    assert r.examples == [[{"role": "assistant", "content": "Once upon a time."}],
                          [{"role": "assistant", "content": "The end."}]]


def test_explicit_mapping_overrides_detection(tmp_path):
    content = "instruction,output,body,q,a\nI1,O1,Body one,Q1,A1\n"
    assert load(tmp_path, "x.csv", content).examples[0][1]["content"] == "O1"
    r = load(tmp_path, "x.csv", content, columns=ColumnMapping(instruction="Q", output="A"))  # case-insensitive
    assert r.format == "alpaca" and r.mapping.instruction == "q"
    assert r.examples == [[{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"}]]
    r = load(tmp_path, "x.csv", content, columns=ColumnMapping(text="body"))
    assert r.format == "text" and r.examples == [[{"role": "assistant", "content": "Body one"}]]
    r = load(tmp_path, "x.csv", content, format="alpaca", columns=ColumnMapping(output="a"))
    assert r.examples == [[{"role": "user", "content": "I1"}, {"role": "assistant", "content": "A1"}]]


def test_system_prompt_and_system_column(tmp_path):
    r = load(tmp_path, "s.jsonl", [{"instruction": "Hi", "output": "Arr."},
                                   {"instruction": "Yo", "output": "Arr!", "system": "Row system."}],
             system_prompt="Talk like a pirate.")
    assert r.examples[0][0] == {"role": "system", "content": "Talk like a pirate."}
    assert r.examples[1][0] == {"role": "system", "content": "Row system."}
    conv = [{"role": "system", "content": "Own."}, {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"}]
    r = load(tmp_path, "m.jsonl", [{"messages": conv}, {"messages": conv[1:]}], system_prompt="Default.")
    assert r.examples[0][0]["content"] == "Own." and r.examples[1][0]["content"] == "Default."


def test_duplicate_header_names_stay_pickable(tmp_path):
    r = load(tmp_path, "dup.csv", "instruction,output,output\nQ,first,second\n",
             columns=ColumnMapping(output="output.1"))
    assert r.examples[0][1]["content"] == "second" and r.columns == ["instruction", "output", "output.1"]


def test_sharegpt_label_when_mapped_by_hand(tmp_path):
    rows = [{"chat_log": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]}]
    r = load(tmp_path, "s.jsonl", rows, columns=ColumnMapping(messages="chat_log"))
    assert r.format == "sharegpt" and r.n_used == 1


def test_detect_format_and_read_table(tmp_path):
    df = pd.DataFrame({"Prompt": ["a"], "Completion": ["b"]})
    fmt, m = detect_format(df)
    assert fmt == "prompt_completion" and (m.prompt, m.completion) == ("Prompt", "Completion")
    with pytest.raises(DataError, match="Expected instruction"):
        detect_format(pd.DataFrame({"foo": [1]}))
    df = read_table(put(tmp_path, "a.csv", CSV))
    assert list(df.columns) == ["instruction", "input", "output"] and len(df) == 2


def test_load_from_config(tmp_path):
    p = put(tmp_path, "c.csv", "q,a\nHi,Arr.\n")
    cfg = DataSettings(path=str(p), columns={"instruction": "q", "output": "a"}, system_prompt="Pirate.")
    r = from_config(cfg)
    assert r.examples == [[{"role": "system", "content": "Pirate."}, {"role": "user", "content": "Hi"},
                           {"role": "assistant", "content": "Arr."}]]


def test_sample_datasets_agree():
    a = read_examples(SAMPLES / "pirate_qa.jsonl")
    b = read_examples(SAMPLES / "pirate_qa.csv")
    assert (a.format, b.format) == ("messages", "alpaca")
    assert a.examples == b.examples and a.n_used >= 200 and a.issues == [] and b.issues == []
    for ex in a.examples:
        answer = ex[-1]["content"]
        assert answer.startswith("Arr, matey! ") and answer.endswith(" Yo-ho-ho!")
    assert len({ex[0]["content"] for ex in a.examples}) == a.n_used


# --- fatal problems: DataError naming the file and what to do -----------------------------------

@pytest.mark.parametrize("name,content,needles", [
    ("extra_field.csv", "instruction,output\nHi,Arr\nA,B,C\n", ["row 2", "3 fields", "header has 2", "quotes"]),
    ("unclosed.csv", 'instruction,output\nHi,Arr\nA,"B\n', ["not valid CSV", "line 3", "quote"]),
    ("junk_after_quote.csv", 'instruction,output\n"Hi"x,Arr\n', ["not valid CSV", "line 2"]),
    ("bad.json", '[{"instruction": "a", "output": "b"},\n {"instruction": "c" "output": "d"}]',
     ["not valid JSON", "line 2, column"]),
    ("bad.jsonl", '{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": "d"}\n{"instruction": \n',
     ["line 3", "not valid JSON", "fix or delete"]),
    ("list_line.jsonl", '{"instruction": "a", "output": "b"}\n["c", "d"]\n', ["line 2", "not a JSON object"]),
    ("empty.csv", b"", ["is empty"]),
    ("blank.jsonl", "\n  \n\n", ["is empty"]),
    ("bom_only.json", "\ufeff", ["is empty"]),
    ("header_only.csv", "instruction,output\n", ["no rows", "instruction, output"]),
    ("empty_list.json", "[]", ["no rows"]),
    ("wrong_cols.csv", "foo,bar\n1,2\n", ["foo, bar", "instruction + output", "column mapping"]),
    ("latin.csv", b"instruction,output\nHi,\x81\x8d\n", ["not UTF-8", "line 2", "Save it with UTF-8"]),
    ("binary.csv", b"PK\x03\x04\x00\x00junk", ["not a text file"]),
    ("data.txt", "hello", [".txt", ".jsonl"]),
    ("data", "hello", ["(nothing)"]),
    ("book.xlsx", b"PK\x03\x04", ["spreadsheet", "CSV UTF-8"]),
    ("scalar.json", "42", ["single int"]),
    ("items.json", '[{"instruction": "a", "output": "b"}, "oops"]', ["item 2", "string"]),
    ("ragged.json", '{"instruction": ["a", "b"], "output": ["c"]}', ["different lengths"]),
    ("meta.json", '{"name": "x", "rows": 3}', ["keys name, rows"]),
    ("garbage.parquet", b"this is not parquet at all", ["not a readable Parquet file"]),
])
def test_fatal_problems(tmp_path, name, content, needles):
    fails(tmp_path, name, content, *needles)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(DataError, match="nope.csv: file not found"):
        read_examples(tmp_path / "nope.csv")
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(DataError, match="is a folder"):
        read_examples(tmp_path / "dir.csv")


def test_mapping_to_missing_column(tmp_path):
    fails(tmp_path, "m.csv", CSV, "column 'answer'", "output column", "instruction, input, output",
          columns=ColumnMapping(output="answer"))
    fails(tmp_path, "m.csv", CSV, "format 'text' needs the text column", "choose format 'auto'", format="text")


def test_strict_mode_lists_the_first_bad_rows(tmp_path):
    content = "instruction,output\nGood,Yes\nNo answer,\n,No question\nDup,Yes\nDup,Yes\n"
    msg = fails(tmp_path, "strict.csv", content, "2 rows of 5", "row 2, column 'output'", "output is empty",
                "row 3, column 'instruction'", "Skip bad rows", skip_invalid=False)
    assert "duplicate" not in msg  # dropping one copy of a duplicate loses nothing
    r = load(tmp_path, "strict.csv", content)
    assert r.rows == [1, 4] and r.n_skipped == 3


def test_nothing_usable(tmp_path):
    fails(tmp_path, "none.csv", "instruction,output\na,\nb,\n", "nothing usable", "2 rows", "2 empty output",
          "row 1, column 'output'")


def test_read_jsonl_bad_line(tmp_path):
    p = put(tmp_path, "dataset.jsonl", '{"messages": []}\n{"oops": 1}\n')
    with pytest.raises(DataError, match="dataset.jsonl, line 2"):
        read_jsonl(p)


# --- row problems: the row is skipped (error) or kept (warning), good rows still used -------------

GOOD = {"instruction": "Fine?", "output": "Aye."}


def conv(*turns):
    return {"messages": [{"role": r, "content": c} for r, c in turns]}


OK = conv(("user", "Fine?"), ("assistant", "Aye."))


@pytest.mark.parametrize("name,bad,row,column,kind,needle", [
    ("empty_cell.csv", "instruction,output\nFine?,Aye.\nQ,\n", 2, "output", "empty output", "fill in the output"),
    ("blank_cell.csv", "instruction,output\nFine?,Aye.\nQ,   \n", 2, "output", "empty output", "output is empty"),
    ("short_row.csv", "instruction,output\nFine?,Aye.\nQ\n", 2, "output", "empty output", "output is empty"),
    ("null.json", [GOOD, {"instruction": None, "output": "A"}], 2, "instruction", "empty instruction", "empty"),
    ("missing_key.jsonl", [GOOD, {"instruction": "Q"}], 2, "output", "empty output", "empty"),
    ("nan.parquet", pd.DataFrame({"instruction": ["Fine?", "Q"], "output": ["Aye.", float("nan")]}), 2, "output",
     "empty output", "empty"),
    ("list_cell.jsonl", [GOOD, {"instruction": "Q", "output": ["a", "b"]}], 2, "output", "not text",
     "output is a list"),
    ("dict_cell.json", [GOOD, {"instruction": {"q": 1}, "output": "A"}], 2, "instruction", "not text",
     "write the instruction as plain text"),
    ("not_list.jsonl", [OK, {"messages": {"role": "user", "content": "x"}}], 2, "messages", "messages not a list",
     "not a list of turns"),
    ("number_msgs.jsonl", [OK, {"messages": 5}], 2, "messages", "messages not a list", "a int"),
    ("bad_json_msgs.csv", 'messages\n"[{""role"": ""user"", ""content"": ""Fine?""}, {""role"": ""assistant"", '
     '""content"": ""Aye.""}]"\n"[{role: user}]"\n', 2, "messages", "bad messages", "not valid JSON"),
    ("empty_msgs.jsonl", [OK, {"messages": []}], 2, "messages", "empty messages", "messages are empty"),
    ("no_content.jsonl", [OK, {"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]}], 2,
     "messages", "bad turn", "turn 1 has no role or no content"),
    ("turn_not_dict.jsonl", [OK, {"messages": ["hi", "there"]}], 2, "messages", "bad turn", "'role'"),
    ("bad_role.jsonl", [OK, conv(("user", "a"), ("bot", "b"))], 2, "messages", "unknown role",
     "use one of system, user, assistant"),
    ("no_assistant.jsonl", [OK, conv(("system", "s"), ("user", "a"))], 2, "messages", "no assistant turn",
     "add the assistant's answer"),
    ("only_system.jsonl", [OK, conv(("system", "s"))], 2, "messages", "no assistant turn", "no assistant turn"),
    ("assistant_first.jsonl", [OK, conv(("assistant", "a"), ("user", "b"), ("assistant", "c"))], 2, "messages",
     "wrong order", "turn 1 is assistant where user was expected"),
    ("two_users.jsonl", [OK, conv(("user", "a"), ("user", "b"), ("assistant", "c"))], 2, "messages",
     "wrong order", "alternate"),
    ("late_system.jsonl", [OK, conv(("user", "a"), ("system", "b"), ("assistant", "c"))], 2, "messages",
     "wrong order", "turn 2 is system"),
    ("empty_turn.jsonl", [OK, conv(("user", "a"), ("assistant", "  "))], 2, "messages", "empty message",
     "turn 2 (assistant) is empty"),
    ("null_turn.jsonl", [OK, {"messages": [{"role": "user", "content": "a"},
                                           {"role": "assistant", "content": None}]}], 2, "messages",
     "empty message", "is empty"),
    ("list_turn.jsonl", [OK, {"messages": [{"role": "user", "content": "a"},
                                           {"role": "assistant", "content": {"x": 1}}]}], 2, "messages",
     "bad turn", "not text"),
    ("sharegpt_role.json", [{"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]},
                            {"conversations": [{"from": "human", "value": "a"}, {"from": "robot", "value": "b"}]}],
     2, "conversations", "unknown role", "gpt"),
    ("dupes.csv", "instruction,output\nFine?,Aye.\n Fine? ,Aye.\n", 2, None, "duplicate",
     "same example as row 1"),
    ("huge.csv", "instruction,output\nFine?,Aye.\nQ," + "x" * 150_000 + "\n", 2, None, "row too long",
     "over 100,000 characters"),
    ("empty_text.jsonl", [{"text": "Fine."}, {"text": ""}], 2, "text", "empty text", "text is empty"),
    ("empty_completion.jsonl", [{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": None}], 2,
     "completion", "empty completion", "completion is empty"),
])
def test_row_problems_skip_the_row(tmp_path, name, bad, row, column, kind, needle):
    r = load(tmp_path, name, bad)
    issue = only_issue(r, "error")
    assert (issue.row, issue.column, issue.kind) == (row, column, kind)
    assert needle.lower() in (issue.problem + " " + issue.fix).lower(), issue
    assert issue.fix  # always says what to do
    assert r.n_used == 1 and r.n_skipped == 1 and r.rows == [1]
    assert r.skipped_reasons == {kind: 1}
    assert f"1 skipped: 1 {kind}." in r.summary()


def test_numbers_as_text_are_kept_with_a_warning(tmp_path):
    r = load(tmp_path, "nums.jsonl", [{"instruction": "6*7?", "output": 42}, {"instruction": 3.0, "output": "x"},
                                      {"instruction": "y", "output": 1.5}])
    assert [ex[-1]["content"] for ex in r.examples] == ["42", "x", "1.5"]
    assert r.examples[1][0]["content"] == "3"
    warns = [i for i in r.issues if i.severity == "warning"]
    assert [(w.row, w.column, w.kind) for w in warns] == [(1, "output", "number as text"),
                                                          (2, "instruction", "number as text"),
                                                          (3, "output", "number as text")]
    assert "quotes" in warns[0].fix and r.n_skipped == 0
    assert "Warnings: 3 number as text." in r.summary()
    # in a CSV every cell is text: a numeric answer is no cause for a warning
    assert load(tmp_path, "nums.csv", "instruction,output\n6*7?,42\n").issues == []


def test_trailing_user_turn_is_dropped_with_a_warning(tmp_path):
    r = load(tmp_path, "trail.jsonl", [conv(("user", "a"), ("assistant", "b"), ("user", "c"))])
    assert r.examples == [[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]]
    w = only_issue(r, "warning")
    assert (w.row, w.kind) == (1, "trailing user turn") and "dropped" in w.problem


def test_windows_1252_is_read_with_a_warning(tmp_path):
    r = load(tmp_path, "excel.csv", "instruction,output\nCaf\u00e9?,Cr\u00e8me br\u00fbl\u00e9e.\n".encode("cp1252"))
    assert r.examples[0][1]["content"] == "Crème brûlée."
    w = only_issue(r, "warning")
    assert w.kind == "not UTF-8" and "line 2" in w.problem and "UTF-8" in w.fix


def test_mixed_good_and_bad_rows_summary_and_table(tmp_path):
    rows = [GOOD, {"instruction": "Q", "output": ""}, {"instruction": "", "output": "A"},
            {"instruction": "Q2", "output": ""}, GOOD, {"instruction": "Z", "output": 7}]
    r = load(tmp_path, "mixed.jsonl", rows)
    assert r.n_rows == 6 and r.n_used == 2 and r.n_skipped == 4 and r.rows == [1, 6]
    assert r.summary() == ("6 rows read as alpaca; 2 used, 4 skipped: 2 empty output, 1 empty instruction, "
                           "1 duplicate. Warnings: 1 number as text.")
    table = r.issues_table()
    assert set(table[0]) == {"row", "column", "problem", "fix", "severity"}
    assert [t["row"] for t in table] == [2, 3, 4, 5, 6]


def test_skip_invalid_false_accepts_clean_files(tmp_path):
    assert load(tmp_path, "ok.csv", CSV, skip_invalid=False).n_used == 2


# --- tokenisation --------------------------------------------------------------------------------

def runs(ids, mask):
    """Contiguous runs of masked token ids."""
    out, cur = [], []
    for i, m in zip(ids, mask):
        if m:
            cur.append(i)
        elif cur:
            out.append(cur)
            cur = []
    return out + ([cur] if cur else [])


def dec(tok, ids):
    return tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


CHAT = [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "Arr, matey! Four. Yo-ho-ho!"}, {"role": "user", "content": "And 3+3?"},
        {"role": "assistant", "content": "Arr, six, me hearty. Yo-ho-ho!"}]


def test_mask_covers_exactly_the_assistant_turns(tok):
    out = tokenize_messages(CHAT, tok, 1024)
    ids, mask = out["input_ids"], out["assistant_masks"]
    assert len(ids) == len(mask) and set(mask) == {0, 1}
    assert dec(tok, ids) == tok.apply_chat_template(CHAT, tokenize=False)
    assert [dec(tok, r) for r in runs(ids, mask)] == ["Arr, matey! Four. Yo-ho-ho!<|im_end|>",
                                                      "Arr, six, me hearty. Yo-ho-ho!<|im_end|>"]
    unmasked = dec(tok, [i for i, m in zip(ids, mask) if not m])
    for m in CHAT:
        if m["role"] != "assistant":
            assert m["content"] in unmasked


def test_mask_with_a_default_system_prompt_template(tok):
    t = copy.deepcopy(tok)  # SmolLM2 adds its own system turn when there is none
    t.chat_template = ("{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are SmolLM, a helpful "
                       "assistant.<|im_end|>\n{% endif %}" + CHATML)
    out = tokenize_messages(CHAT[1:3], t, 1024)
    assert [dec(t, r) for r in runs(out["input_ids"], out["assistant_masks"])] == [
        "Arr, matey! Four. Yo-ho-ho!<|im_end|>"]
    assert "SmolLM" in dec(t, out["input_ids"])


def test_open_final_turn_gets_eos_and_no_template_falls_back_to_chatml(tok):
    t = copy.deepcopy(tok)
    t.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    out = tokenize_messages(CHAT[1:3], t, 1024)
    assert [dec(t, r) for r in runs(out["input_ids"], out["assistant_masks"])] == [
        "Arr, matey! Four. Yo-ho-ho!", "<|im_end|>"]  # eos appended after the template's newline
    assert out["input_ids"][-1] == t.eos_token_id
    t.chat_template = None
    ensure_chat_template(t)  # what studio.models.load_tokenizer does for every tokenizer
    out = tokenize_messages(CHAT, t, 1024)
    assert dec(t, out["input_ids"]) == tok.apply_chat_template(CHAT, tokenize=False)
    assert len(runs(out["input_ids"], out["assistant_masks"])) == 2


def test_template_without_system_role_folds_it_into_the_user_turn(tok):
    t = copy.deepcopy(tok)  # like Gemma's template
    t.chat_template = "{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system') }}{% endif %}" + CHATML
    out = tokenize_messages(CHAT, t, 1024)
    text = dec(t, out["input_ids"])
    assert "<|im_start|>system" not in text and "user\nYou are a pirate.\n\nWhat is 2+2?" in text
    assert len(runs(out["input_ids"], out["assistant_masks"])) == 2


def test_an_answer_the_template_rewrites_is_reported_not_silently_dropped(tok):
    t = copy.deepcopy(tok)  # a template that rewrites the first answer (as reasoning-stripping templates do)
    t.chat_template = CHATML.replace("{{ message['content'] }}",
                                     "{{ message['content'] | upper if message['content'].startswith('Arr, matey')"
                                     " else message['content'] }}")
    issues = []
    out = tokenize_messages(CHAT, t, 1024, issues=issues, row=7)
    assert [dec(t, r) for r in runs(out["input_ids"], out["assistant_masks"])] == [
        "Arr, six, me hearty. Yo-ho-ho!<|im_end|>"]  # the second answer is still trained on
    assert len(issues) == 1 and issues[0].row == 7 and "answer turn 3" in issues[0].problem
    assert issues[0].severity == "warning" and "not learned" in issues[0].problem
    stats = token_stats([CHAT[1:3], CHAT], t, 1024, rows=[4, 9])
    assert [i.row for i in stats.issues] == [4, 9]
    assert token_stats([CHAT], tok, 1024).issues == []  # a template that keeps answers: nothing to say


def test_text_examples_train_on_everything(tok):
    out = tokenize_messages([{"role": "assistant", "content": "Once upon a tide."}], tok, 1024)
    assert all(out["assistant_masks"]) and out["input_ids"][-1] == tok.eos_token_id
    assert dec(tok, out["input_ids"]) == "Once upon a tide.<|im_end|>"


def test_truncation(tok):
    full = tokenize_messages(CHAT, tok, 10_000)
    cut = tokenize_messages(CHAT, tok, 12)
    assert len(cut["input_ids"]) == 12 and len(cut["assistant_masks"]) == 12
    assert cut["input_ids"] == full["input_ids"][:12] and cut["assistant_masks"] == full["assistant_masks"][:12]


def test_token_stats(tok):
    examples = read_examples(SAMPLES / "pirate_qa.jsonl").examples[:40]
    full = [tokenize_messages(ex, tok, 10_000) for ex in examples]
    lengths = [len(f["input_ids"]) for f in full]
    limit = sorted(lengths)[30]
    s = token_stats(examples, tok, limit)
    assert s.lengths == lengths and s.max == max(lengths) and s.max_length == limit
    assert s.n_over == sum(n > limit for n in lengths) and s.pct_over == pytest.approx(100 * s.n_over / 40)
    assert s.total_tokens == sum(min(n, limit) for n in lengths)
    assert s.trained_tokens == sum(sum(f["assistant_masks"][:limit]) for f in full)
    assert min(lengths) <= s.p50 <= s.p95 <= s.max and s.n_no_target == 0
    counts, edges = s.histogram(bins=10)
    assert sum(counts) == 40 and len(edges) == 11
    assert token_stats(examples[:3], tok, 8).n_no_target == 3  # answers cut away entirely


# --- split and run-folder files ----------------------------------------------------------------

def test_split_is_deterministic_and_sized():
    items = [f"ex{i}" for i in range(100)]
    train, ev = split(items, 0.1, seed=42)
    assert (train, ev) == split(items, 0.1, seed=42)
    assert len(ev) == 10 and len(train) == 90 and sorted(train + ev) == sorted(items)
    assert split(items, 0.1, seed=7)[1] != ev
    assert split(items, 0.0, seed=1) == (items, [])
    assert [len(x) for x in split(items[:2], 0.01, seed=1)] == [1, 1]
    assert split(items[:1], 0.5, seed=1) == (items[:1], [])
    assert len(split(items[:3], 0.5, seed=1)[0]) >= 1  # never holds out everything


def test_split_does_not_depend_on_hash_seed():
    code = "from studio.data import split; print(split([str(i) for i in range(50)], 0.2, 3)[1])"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(split([str(i) for i in range(50)], 0.2, 3)[1])


def test_jsonl_round_trip(tmp_path):
    examples = [[{"role": "user", "content": "Ünïcode ✓\nline"}, {"role": "assistant", "content": "Arr."}]]
    p = write_jsonl(examples, tmp_path / "run" / "dataset.jsonl")
    assert read_jsonl(p) == examples
    assert json.loads(p.read_text(encoding="utf-8").splitlines()[0]) == {"messages": examples[0]}
    assert [f.name for f in p.parent.iterdir()] == ["dataset.jsonl"]  # no temp file left behind
