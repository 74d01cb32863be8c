"""One row's cells -> chat messages, or the reason it cannot be one: text cells (numbers used as text with a
warning), conversation cells (OpenAI role/content, ShareGPT from/value, content parts, JSON or Python-repr text in a
CSV cell), the turn order, and `Bad`, the Issue that skips a row. The preference readers (`answers`) read their cells
with the same `as_text` / `as_turn`. No transformers, no torch.
"""
from __future__ import annotations

import ast
import json
import math
import numbers
import re
import sys
from typing import Any

import numpy as np
import pandas as pd

from ..config import ColumnMapping

from .issues import Issue, show, typename
from .limits import MAX_DEPTH

# ~25k tokens: far past any sensible max_length, so such a row is almost surely a paste accident.
MAX_ROW_CHARS = 100_000

# Role names accepted in a turn -> the normalised role (OpenAI, ShareGPT and Gemma spellings).
_ROLES = {"system": "system", "user": "user", "human": "user",
          "assistant": "assistant", "gpt": "assistant", "model": "assistant"}
_ALLOWED_ROLES = "system, user, assistant (ShareGPT: system, human, gpt)"
# A "\ud800" escape without its pair parses to a str no UTF-8 file (or tokenizer) can hold.
_SURROGATE = re.compile("[\ud800-\udfff]")


class Bad(Exception):
    """One row cannot be used; carries the Issue fields (row filled in by the caller)."""

    def __init__(self, kind: str, column: str | None, problem: str, fix: str):
        super().__init__(problem)
        self.issue = Issue(None, column, problem, fix, "error", kind)


def row_messages(fmt: str, row: dict, m: ColumnMapping, system_prompt: str, warns: list[Issue]) -> list[dict]:
    if fmt == "text":
        return [{"role": "assistant", "content": as_text(row["text"], m.text, "text", warns)}]
    system = as_text(row["system"], m.system, "system", warns, required=False) if "system" in row else ""
    system = system or system_prompt
    if fmt in ("messages", "sharegpt"):
        msgs = _turns(row["messages"], m.messages, warns)
        if system and msgs[0]["role"] != "system":
            msgs.insert(0, {"role": "system", "content": system})
        return msgs
    if fmt == "alpaca":
        user = as_text(row["instruction"], m.instruction, "instruction", warns)
        extra = as_text(row["input"], m.input, "input", warns, required=False) if "input" in row else ""
        user = f"{user}\n\n{extra}" if extra else user
        answer = as_text(row["output"], m.output, "output", warns)
    else:
        user = as_text(row["prompt"], m.prompt, "prompt", warns)
        answer = as_text(row["completion"], m.completion, "completion", warns)
    msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return ([{"role": "system", "content": system}] if system else []) + msgs


def as_text(v: Any, column: str, part: str, warns: list[Issue], required: bool = True) -> str:
    """A cell as stripped text; numbers are converted with a warning, lists/dicts refused."""
    if is_missing(v):
        s = ""
    elif isinstance(v, str):
        s = v.strip()
        bad = _SURROGATE.search(s)
        if bad:
            raise Bad("invalid character", column, f"{part} holds a lone UTF-16 surrogate "
                                                   f"({show(bad.group())}) at character {bad.start() + 1}, which "
                                                   f"cannot be saved as UTF-8 or trained on",
                      "fix that \\uXXXX escape in the file (\\ud800-\\udfff come in pairs), or delete the row")
    elif isinstance(v, (numbers.Number, np.bool_)) and not isinstance(v, complex):
        s = _num_str(v)
        warns.append(Issue(None, column, f"{part} is the number {s}, not text; it was used as the text '{s}'",
                           "put quotes around it in the file if that is what you meant", "warning",
                           kind="number as text"))
    else:
        raise Bad("not text", column, f"{part} is a {typename(v)}, not text",
                  f"write the {part} as plain text" + (" (or map this column as 'messages')"
                                                        if isinstance(v, (list, np.ndarray)) else ""))
    if required and not s:
        raise Bad(f"empty {part}", column, f"{part} is empty", f"fill in the {part}, or delete the row")
    return s


def _turns(v: Any, column: str, warns: list[Issue]) -> list[dict]:
    """A messages cell -> validated turns: optional system, then user/assistant alternating."""
    shape = 'write them as a JSON list like [{"role": "user", "content": "..."}, {"role": "assistant", ...}]'
    if isinstance(v, str):
        s = v.strip()
        if not s:
            raise Bad("empty messages", column, "messages are empty", "add the conversation, or delete the row")
        try:
            v = json.loads(s)  # CSV cells hold JSON text
        except RecursionError:
            raise Bad("bad messages", column, f"messages are nested more than {MAX_DEPTH} lists/objects deep",
                      shape) from None
        except json.JSONDecodeError as e:
            try:
                v = ast.literal_eval(s)  # a pandas DataFrame with a list column saved with to_csv
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                raise Bad("bad messages", column, f"messages are not valid JSON ({e.msg} at character {e.pos})",
                          shape) from None
        except ValueError:  # an integer past Python's digit limit
            digits = max((len(d) for d in re.findall(r"\d+", s)), default=0)
            raise Bad("bad messages", column, f"messages hold a number of {digits} digits, more than the "
                                              f"{sys.get_int_max_str_digits() or 4300} Python reads",
                      "put quotes around it to keep it as text, or delete it") from None
    v = as_list(v)
    if is_missing(v) or (isinstance(v, list) and not v):
        raise Bad("empty messages", column, "messages are empty", "add the conversation, or delete the row")
    if not isinstance(v, list):
        raise Bad("messages not a list", column, f"messages are a {typename(v)}, not a list of turns", shape)
    turns = []
    for n, t in enumerate(v, 1):
        norm, content = as_turn(t, n, column)
        try:
            text = as_text(content, column, f"turn {n} ({norm})", warns, required=False)
        except Bad as bad:
            bad.issue.kind = "bad turn"
            raise
        if not text:
            raise Bad("empty message", column, f"turn {n} ({norm}) is empty",
                      "fill in the message, or delete the turn")
        turns.append({"role": norm, "content": text})
    lead = 1 if turns[0]["role"] == "system" else 0
    for j, t in enumerate(turns[lead:]):
        want = "user" if j % 2 == 0 else "assistant"
        if t["role"] != want:
            raise Bad("wrong order", column, f"turn {lead + j + 1} is {t['role']} where {want} was expected",
                      "after an optional first system turn, turns must alternate user, assistant, user, ...")
    if len(turns) > lead and turns[-1]["role"] == "user":
        turns.pop()
        if len(turns) > lead:
            warns.append(Issue(None, column, f"the last turn ({len(turns) + 1}) is a user turn with no answer; "
                                             f"it was dropped", "add the assistant's answer, or leave it",
                               "warning", kind="trailing user turn"))
    if not any(t["role"] == "assistant" for t in turns):
        raise Bad("no assistant turn", column, "there is no assistant turn to learn from",
                  "add the assistant's answer after the user turn")
    return turns


def as_turn(t: Any, n: int, column: str, where: str = "") -> tuple[str, Any]:
    """Turn n of a conversation -> (role, content): 'role'/'content' or ShareGPT's 'from'/'value', the role
    normalised, OpenAI content parts joined. `where` prefixes the messages ("chosen: " in a preference cell).
    The content is not checked yet: the caller reads it as text under its own label."""
    if not isinstance(t, dict) or not ({"role", "from"} & t.keys()) or not ({"content", "value"} & t.keys()):
        raise Bad("bad turn", column, f"{where}turn {n} has no role or no content",
                  "give every turn a 'role' and a 'content' (ShareGPT: 'from' and 'value')")
    role = t["role"] if "role" in t else t["from"]
    norm = _ROLES.get(str(role).strip().lower())
    if norm is None:
        raise Bad("unknown role", column, f"{where}turn {n} has role '{show(str(role))}'",
                  f"use one of {_ALLOWED_ROLES}")
    content = t["content"] if "content" in t else t["value"]
    if isinstance(content, (list, np.ndarray)):  # OpenAI content parts: [{"type": "text", "text": ...}]
        parts = list(content)
        if all(isinstance(p, dict) and p.get("type") == "text" for p in parts):
            content = "".join(str(p.get("text", "")) for p in parts)
    return norm, content


def as_list(v: Any) -> Any:
    if isinstance(v, (np.ndarray, tuple)):  # Parquet list columns arrive as numpy arrays
        return [dict(t) if isinstance(t, dict) else t for t in list(v)]
    return v


def is_missing(v: Any) -> bool:
    if v is None or v is pd.NA or v is pd.NaT:
        return True
    return isinstance(v, float) and math.isnan(v)


def _num_str(v: Any) -> str:
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v)).lower()
    if isinstance(v, float) and v.is_integer():  # 4 became 4.0 in a column with gaps
        return str(int(v))
    return str(v)
