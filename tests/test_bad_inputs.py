"""Bad input from a careless or hostile user, as a table (issue 10): each file or config goes through the CLI
(`studio data FILE`, `studio config check --file F`) in-process; every case must end with the expected sentence,
the exit code, no exception escaping, and the user's file byte-for-byte unchanged."""
import json

import pytest

from studio.cli import main

GOOD = json.dumps({"instruction": "Say hi", "output": "Hi!"}) + "\n"
MSG = {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}

# (file name, content, exit code, a fragment of what the user reads)
DATA_CASES = [
    ("empty.jsonl", b"", 2, "is empty. Choose the file"),
    ("blank-lines.jsonl", b"\n\n\n", 2, "is empty"),
    ("not-json.jsonl", b"hello world\n", 2, "line 1 is not valid JSON"),
    ("half-json.jsonl", GOOD + '{"instruction": "c", "outp\n', 2, "line 2 is not valid JSON"),
    ("array-in-jsonl.jsonl", b"[1, 2, 3]\n", 2, "expected a list of objects"),
    ("scalar-rows.jsonl", b"1\n2\n", 2, "line 1 is a int, not a JSON object"),
    ("no-known-columns.jsonl", b'{"a": 1, "b": 2}\n', 2, "cannot tell the format from its columns (a, b)"),
    ("empty-output.jsonl", '{"instruction": "a", "output": ""}\n' + GOOD, 0, "row 1, column 'output': output is empty"),
    ("null-output.jsonl", '{"instruction": "a", "output": null}\n' + GOOD, 0, "output is empty"),
    ("number-output.jsonl", '{"instruction": "a", "output": 5}\n' + GOOD, 0, "output is the number 5, not text"),
    ("dupes.jsonl", GOOD * 3, 0, "row 3: same example as row 1"),
    ("bad-roles.jsonl", json.dumps({"messages": [{"role": "wizard", "content": "x"}, MSG["messages"][1]]}) + "\n"
     + json.dumps(MSG) + "\n", 0, "turn 1 has role 'wizard'"),
    ("no-assistant.jsonl", json.dumps({"messages": [{"role": "user", "content": "x"}]}) + "\n", 2,
     "there is no assistant turn to learn from"),
    ("messages-not-list.jsonl", json.dumps({"messages": "hello"}) + "\n", 2, "messages are not valid JSON"),
    ("deep.json", "[" * 5000 + "]" * 5000, 2, "nested more than 100 lists/objects deep at line 1"),
    ("bigint.jsonl", '{"instruction": "a", "output": "b", "n": ' + "9" * 5000 + "}\n", 2,
     "holds a number of 5000 digits"),
    ("surrogate.jsonl", '{"instruction": "a\\ud800", "output": "b"}\n' + GOOD, 0, "lone UTF-16 surrogate"),
    ("latin1.csv", "instruction,output\ncaf\xe9,ol\xe9\n".encode("latin-1"), 0, "file: the file is not UTF-8"),
    ("binary.csv", bytes(range(256)) * 10, 2, "contains NUL bytes"),
    ("empty.csv", b"", 2, "is empty"),
    ("header-only.csv", b"instruction,output\n", 2, "has no rows (only the header"),
    ("ragged.csv", b"instruction,output\na,b,c,d\ne\n", 2, "has 4 fields but the header has 2"),
    ("unclosed-quote.csv", b'instruction,output\n"a,b\n', 2, "is not valid CSV"),
    ("json-object.json", b'{"instruction": "a", "output": "b"}', 2, "the top level is an object"),
    ("json-garbage.json", b'{"instruction": ', 2, "is not valid JSON: Expecting value at line 1"),
    ("fake.parquet", b"PAR1 not really", 2, "is not a readable Parquet file"),
    ("utf16.jsonl", GOOD.encode("utf-16"), 0, "1 row read as alpaca; all 1 used"),
    ("bom.jsonl", b"\xef\xbb\xbf" + GOOD.encode(), 0, "1 row read as alpaca; all 1 used"),
    ("nul.jsonl", b'{"instruction": "a\x00", "output": "b"}\n', 2, "contains NUL bytes"),
    ("huge-row.jsonl", json.dumps({"instruction": "a", "output": "x" * 200_000}) + "\n", 2,
     "row is over 100,000 characters"),
    ("notes.txt", b"hello\n", 2, "files ending in '.txt' are not supported"),
]

CONFIG_CASES = [
    ("garbage.yaml", "a: [1, 2\n", "is not valid YAML"),
    ("list.yaml", "- 1\n- 2\n", "must be a mapping with sections"),
    ("unknown-section.yaml", "trainer:\n  lr: 1\n", "Unknown section(s) trainer"),
    ("unknown-field.yaml", "train:\n  lr: 1\n", "Unknown setting(s) lr in section 'train'"),
    ("bad-type.yaml", "train:\n  batch_size: four\n", "Batch size must be a whole number (got 'four')"),
    ("bad-range.yaml", "train:\n  learning_rate: 5\n", "Learning rate must be between 1e-07 and 0.01"),
    ("bad-choice.yaml", "model:\n  quantization: int3\n", "Quantisation 'int3' is not known"),
    ("empty-name.yaml", "name: ''\n", "Run name is empty"),
    ("section-not-map.yaml", "train: 5\n", "Section 'train' must be a mapping"),
    ("early-no-eval.yaml", "train:\n  early_stopping_patience: 2\n  eval_fraction: 0\n",
     "Early stopping needs held-out rows"),
    ("nan-lr.yaml", "train:\n  learning_rate: .nan\n", "Learning rate must be a number (got nan)"),
    ("bool-as-int.yaml", "train:\n  max_steps: true\n", "Max steps must be a whole number (got True)"),
]


def _run(args, capsys):
    code = main([str(a) for a in args])  # an exception escaping here fails the test: no traceback for users
    out = capsys.readouterr()
    return code, out.out + out.err


@pytest.mark.parametrize("name,content,code,fragment", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_bad_data_file(name, content, code, fragment, tmp_path, capsys):
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    before = path.read_bytes()
    got, text = _run(["data", path], capsys)
    assert got == code and fragment in text, text[-1500:]
    assert path.read_bytes() == before
    assert "Traceback" not in text and "row None" not in text


@pytest.mark.parametrize("name,content,fragment", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_bad_config_file(name, content, fragment, tmp_path, capsys):
    path = tmp_path / name
    path.write_text(content)
    got, text = _run(["config", "check", "--file", path], capsys)
    assert got == 2 and fragment in text and "Traceback" not in text, text[-1500:]
    assert path.read_text() == content


def test_missing_files_and_folders(tmp_path, capsys):
    got, text = _run(["data", tmp_path / "nope.jsonl"], capsys)
    assert got == 2 and "file not found at" in text
    (tmp_path / "dir.jsonl").mkdir()
    got, text = _run(["data", tmp_path / "dir.jsonl"], capsys)
    assert got == 2 and "is a folder, not a file" in text
    got, text = _run(["config", "check", "--file", tmp_path / "nope.yaml"], capsys)
    assert got == 2 and "does not exist" in text
