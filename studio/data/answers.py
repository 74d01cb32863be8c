"""What preference pairs (`pairs`, DPO) and rated answers (`ratings`, KTO) share: a prompt or answer cell read as
text or as turns (JSON or Python-repr text in a CSV cell, OpenAI or ShareGPT turns, Anthropic HH text), the prompt's
and the answers' roles checked, the row loop that names each problem's row and refuses a second copy of an example,
the first rows of a file (to tell what it holds), and the JSONL writer of the run's own copy. The cells are read by
`cells`' rules, so a preference file says what an SFT file says about the same cell. No transformers, no torch.
"""
from __future__ import annotations

import ast
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import pandas as pd

from .cells import Bad, as_list, as_text, as_turn
from .formats import Tally
from .issues import DataError, Issue
from ..env.io import write_json_lines
from .read import iter_tables, read_table, written_by_studio

DETECT_ROWS = 20  # rows looked at to name the shape and, for is_preference_file, to find the columns
HH = re.compile(r"(?:^|\n)\s*(Human|Assistant):[ \t]?")
ANSWER_FIX = "a pair needs a prompt and two different answers to it"


def first_rows(path: str | os.PathLike) -> pd.DataFrame | None:
    """The file's first rows (columns are what detection looks at); None when it cannot be read."""
    try:
        if written_by_studio(path):  # small, and read line by line past a damaged line (read.read_table)
            return read_table(path).head(DETECT_ROWS)
        chunks = iter_tables(path, rows_per_chunk=DETECT_ROWS)
        try:
            return next(chunks)[0]
        finally:
            chunks.close()
    except (DataError, OSError, StopIteration):
        return None


# --- cells -> turns -----------------------------------------------------------------------------

def _json_turns(s: str) -> list | None:
    """A cell's text read as a list of turns (CSV cells hold JSON; pandas' to_csv writes Python reprs), or None."""
    try:
        v = json.loads(s)
    except (ValueError, RecursionError):
        try:
            v = ast.literal_eval(s)
        except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
            return None
    if isinstance(v, list) and v and all(isinstance(t, dict) and {"role", "from"} & t.keys() for t in v):
        return v
    return None


def turns_or_text(v: Any, column: str, part: str, warns: list[Issue]) -> str | list[dict]:
    """A cell as text or as turns ("" / [] when empty); Bad for what is neither."""
    if isinstance(v, str):
        s = v.strip()
        if s.startswith("[") and s.endswith("]"):
            turns = _json_turns(s)
            if turns is not None:
                return _turns(turns, column, part, warns)
        return as_text(v, column, part, warns, required=False)
    v = as_list(v)
    if isinstance(v, list):
        return _turns(v, column, part, warns)
    if isinstance(v, dict) and {"role", "from"} & v.keys():  # a single turn
        return _turns([v], column, part, warns)
    return as_text(v, column, part, warns, required=False)  # None -> "", a number -> text (warned), else not text


def _turns(v: list, column: str, part: str, warns: list[Issue]) -> list[dict]:
    out = []
    for n, t in enumerate(v, 1):
        norm, content = as_turn(t, n, column, f"{part}: ")
        text = as_text(content, column, f"{part} turn {n} ({norm})", warns, required=False)  # Bad "not text"
        if not text:
            raise Bad(f"empty {part}", column, f"{part}: turn {n} ({norm}) is empty",
                      "fill in the message, or delete the row")
        out.append({"role": norm, "content": text})
    return out


def _hh_turns(text: str) -> list[dict] | None:
    """'Human: q  Assistant: a ...' -> turns; None when the text has no such markers."""
    marks = list(HH.finditer(text))
    if not marks or text[:marks[0].start()].strip():
        return None
    out = []
    for m, nxt in zip(marks, marks[1:] + [None]):
        content = text[m.end():nxt.start() if nxt else len(text)].strip()
        out.append({"role": "user" if m.group(1) == "Human" else "assistant", "content": content})
    return out


def _same(a: dict, b: dict) -> bool:
    return a["role"] == b["role"] and a["content"] == b["content"]


def shared_turns(a: list[dict], b: list[dict]) -> int:
    """How many leading turns a and b share (TRL's extract_prompt does the same on whole turns)."""
    k = 0
    while k < min(len(a), len(b)) and _same(a[k], b[k]):
        k += 1
    return k


# --- one side of a row --------------------------------------------------------------------------

def answer_turns(v: Any, column: str, part: str, hh: bool, warns: list[Issue]) -> list[dict]:
    """An answer cell (chosen, rejected, completion) as turns: text becomes one assistant turn, or with `hh` (no
    prompt column) the turns of its Human:/Assistant: text; Bad when it is empty or, with `hh`, plain text."""
    got = turns_or_text(v, column, part, warns)
    if not got:
        raise Bad(f"empty {part}", column, f"{part} is empty",
                  f"fill in the {part} answer, or delete the row ({ANSWER_FIX})")
    if isinstance(got, str):
        turns = _hh_turns(got) if hh else None
        if hh and turns is None:
            raise Bad("missing prompt", column, f"there is no prompt: the file has no prompt column, and {part} is "
                                                f"plain text, not a conversation",
                      "add a prompt column (the question both answers reply to), or write chosen and rejected as "
                      "conversations ('Human: ... Assistant: ...', or a list of turns)")
        if turns is not None and any(not t["content"] for t in turns):
            raise Bad(f"empty {part}", column, f"{part} has an empty turn", "fill it in, or delete the row")
        return turns or [{"role": "assistant", "content": got}]
    return got


def prompt_turns(cells: dict, cols: dict, warns: list[Issue]) -> list[dict] | None:
    """The prompt column's turns (with the system and input columns folded in), or None without a prompt column."""
    system = as_text(cells["system"], cols["system"], "system", warns, required=False) if "system" in cols else ""
    if "prompt" not in cols:
        return [{"role": "system", "content": system}] if system else None
    got = turns_or_text(cells["prompt"], cols["prompt"], "prompt", warns)
    if not got:
        raise Bad("empty prompt", cols["prompt"], "prompt is empty",
                  "write the question or instruction both answers reply to, or delete the row")
    if isinstance(got, str):
        extra = as_text(cells["input"], cols["input"], "input", warns, required=False) if "input" in cols else ""
        got = [{"role": "user", "content": f"{got}\n\n{extra}" if extra else got}]
    if system and got[0]["role"] != "system":
        got = [{"role": "system", "content": system}, *got]
    return got


def check_prompt(prompt: list[dict], column: str) -> None:
    """Bad unless the prompt's turns alternate user, assistant, ... after an optional system turn, ending with the
    user's."""
    roles = [t["role"] for t in prompt]
    lead = 1 if roles[0] == "system" else 0
    for j, role in enumerate(roles[lead:]):
        want = "user" if j % 2 == 0 else "assistant"
        if role != want:
            raise Bad("wrong roles", column, f"prompt turn {lead + j + 1} is {role} where {want} was expected",
                      "after an optional first system turn, the prompt's turns alternate user, assistant, user")
    if roles[-1] != "user":
        raise Bad("wrong roles", column, f"the prompt ends with a{'n' if roles[-1] == 'assistant' else ''} "
                                         f"{roles[-1]} turn, not the user's",
                  "end the prompt with the user's turn; the answers go in chosen and rejected")


def check_answer(turns: list[dict], column: str, part: str) -> None:
    """Bad unless the answer's turns alternate assistant, user, ... and end with the assistant's."""
    for j, t in enumerate(turns):
        want = "assistant" if j % 2 == 0 else "user"
        if t["role"] != want:
            where = "starts with" if j == 0 else f"has at turn {j + 1}"
            raise Bad("wrong roles", column, f"{part} {where} a {t['role']} turn where {want} was expected",
                      f"{part} holds the assistant's answer (after the prompt)")
    if turns[-1]["role"] != "assistant":
        raise Bad("wrong roles", column, f"{part}'s last turn is from the {turns[-1]['role']}, not the assistant",
                  f"end {part} with the assistant's answer")


def _digest(ex: dict) -> bytes:
    return hashlib.blake2b(json.dumps(ex, ensure_ascii=False, sort_keys=True).encode("utf-8"),
                           digest_size=16).digest()


def read_rows(rows: list[int], cells: dict[str, list], tally: Tally, make, what: str) -> tuple[list, list[int]]:
    """Each row through `make(row, warns)` -> an example (None: a row that is not one, and not a problem; Bad: a
    problem). Problems and warnings get the file's row number; a second copy of an example is refused. Returns
    (examples, the row number of each)."""
    examples, used_rows, seen = [], [], {}
    for i, rownum in enumerate(rows):
        row = {part: vals[i] for part, vals in cells.items()}
        warns: list[Issue] = []
        try:
            ex = make(row, warns)
        except Bad as bad:
            bad.issue.row = rownum
            tally.add(None, [bad.issue])
            continue
        if ex is None:
            continue
        key = _digest(ex)
        if key in seen:
            tally.add(None, [Issue(rownum, None, f"same {what} as row {seen[key]}",
                                   "delete one copy; duplicates would be trained on twice", "error", "duplicate")])
            continue
        seen[key] = rownum
        for w in warns:
            w.row = rownum
        tally.add(ex, warns)
        examples.append(ex)
        used_rows.append(rownum)
    return examples, used_rows


# --- the run's own copy -------------------------------------------------------------------------

def write_lines(examples: list[dict], keys: tuple[str, ...], path: str | os.PathLike) -> Path:
    """`keys` of each example, one JSON object a line, written whole or not at all (studio.env.io)."""
    return write_json_lines(path, ({k: ex[k] for k in keys} for ex in examples))
