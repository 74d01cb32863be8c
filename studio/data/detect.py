"""Which columns hold what: the names each part of an example goes by (alpaca, OpenAI messages, ShareGPT,
prompt/completion, text), `detect_format`, and `resolve_format`, which turns a format and the user's column mapping
into (format, mapping) or a DataError naming the columns the file has; OpenAI and ShareGPT turns told apart by
their keys. No transformers, no torch.
"""
from __future__ import annotations

import json

import pandas as pd

from ..config import ColumnMapping

from .cells import as_list
from .issues import DataError

FORMATS = ("alpaca", "messages", "sharegpt", "prompt_completion", "text")

# Column names that fill each part of an example, in order of preference (compared lower-case).
_ALIASES = {
    "messages": ("messages", "conversations", "conversation", "chat", "dialog", "dialogue"),
    "instruction": ("instruction", "question", "query", "prompt", "input", "source", "user"),
    "input": ("input", "context"),
    "output": ("output", "answer", "response", "completion", "target", "reply", "assistant"),
    "prompt": ("prompt",),
    "completion": ("completion",),
    "text": ("text", "content", "document", "body"),
    "system": ("system", "system_prompt"),
}
# format -> (required parts, optional parts); also the order `detect_format` tries them in.
_PARTS = {
    "messages": (("messages",), ("system",)),
    "sharegpt": (("messages",), ("system",)),
    "prompt_completion": (("prompt", "completion"), ("system",)),
    "alpaca": (("instruction", "output"), ("input", "system")),
    "text": (("text",), ()),
}
_EXPECTED = ("instruction + output [+ input] (alpaca), messages (OpenAI chat), conversations (ShareGPT), "
             "prompt + completion, or text")


def detect_format(df: pd.DataFrame) -> tuple[str, ColumnMapping]:
    """(format, mapping) from the column names, case-insensitively; DataError when nothing fits."""
    return resolve_format(df, "auto", ColumnMapping(), df.attrs.get("source", "the file"))


def resolve_format(df: pd.DataFrame, fmt: str, user: ColumnMapping, name: str) -> tuple[str, ColumnMapping]:
    """(format, mapping) for `fmt` ("auto" or one of FORMATS) and the user's mapping, the parts it leaves out found
    by their names; DataError naming the file's columns when they do not fit (`name`: the file, for the message)."""
    if fmt != "auto" and fmt not in FORMATS:
        raise DataError(f"{name}: format '{fmt}' is not known: use auto or one of {', '.join(FORMATS)}.")
    by_lower: dict[str, str] = {}
    for c in df.columns:
        by_lower.setdefault(str(c).strip().lower(), str(c))
    found = ", ".join(map(str, df.columns))
    chosen: dict[str, str] = {}
    for part, col in user.used().items():
        real = by_lower.get(col.strip().lower())
        if real is None:
            raise DataError(f"{name}: column '{col}' (set as the {part} column) is not in the file; its columns "
                            f"are: {found}. Pick one of those in the column mapping.")
        chosen[part] = real
    sniff = fmt == "auto"  # auto: tell OpenAI from ShareGPT turns by looking at the data
    if fmt == "auto":
        set_parts = set(chosen) - {"system"}
        for f, (req, opt) in _PARTS.items():
            if set_parts & set(req + opt):
                fmt = f
                break
    candidates = [fmt] if fmt != "auto" else list(_PARTS)
    for f in candidates:
        parts = dict(chosen)
        req, opt = _PARTS[f]
        for part in req + opt:
            if part not in parts:
                taken = set(parts.values())
                col = next((by_lower[a] for a in _ALIASES[part] if a in by_lower and by_lower[a] not in taken), None)
                if col is not None:
                    parts[part] = col
        if all(p in parts for p in req):
            if f in ("messages", "sharegpt"):
                f = _turn_style(df[parts["messages"]]) if sniff else f
            keep = {p: c for p, c in parts.items() if p in req + opt}
            return f, ColumnMapping(**keep)
    if fmt != "auto":
        missing = [p for p in _PARTS[fmt][0] if p not in chosen]
        raise DataError(f"{name}: format '{fmt}' needs the {' and '.join(missing)} column"
                        f"{'s' if len(missing) > 1 else ''}, but the file's columns are: {found}. Set them in the "
                        f"column mapping, or choose format 'auto'.")
    raise DataError(f"{name}: cannot tell the format from its columns ({found}). Expected {_EXPECTED}. Rename "
                    f"the columns, or set the column mapping by hand.")


def _turn_style(col: pd.Series) -> str:
    """'sharegpt' when turns use {from, value}, else 'messages' (looks at the first few rows)."""
    for v in col.head(20):
        try:
            turns = as_list(json.loads(v) if isinstance(v, str) else v)
        except (ValueError, TypeError, RecursionError):
            continue
        for t in turns if isinstance(turns, list) else []:
            if isinstance(t, dict):
                return "sharegpt" if "from" in t or "value" in t else "messages"
    return "sharegpt" if str(col.name).lower().startswith("conv") else "messages"
