"""Preference data for the DPO stage: pairs of a better (chosen) and a worse (rejected) answer to one prompt.

Reads the shapes people have, through `read`'s readers and caps: TRL's standard format (prompt, chosen, rejected as
text), TRL's conversational format (prompt as turns, chosen/rejected as assistant turns), whole conversations with
the prompt inside (with a prompt column, UltraFeedback-style, or without: the shared start is the prompt), Anthropic
HH text ("Human: ... Assistant: ..."), the paired column names of StackExchange / Orca / LLaMA-Factory sets, and the
Chat tab's own preferences.jsonl. Every pair comes out in TRL's conversational shape,
`{"prompt": [turns ending with a user turn], "chosen": [assistant turn, ...], "rejected": [assistant turn, ...]}`;
every row that cannot become one is an Issue naming its row, column and what to do, as in `formats`.
No transformers, no torch (`preference_token_stats` takes a tokenizer object).
"""
from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import tokens
from .formats import MAX_ROW_CHARS, _as_list, _Bad, _Counts, _missing, _n, _show, _Tally, _text, _turn
from .read import DataError, Issue, iter_tables, read_table

# Column names for each part, in order of preference (compared lower-case): TRL's names first, then those of the
# paired sets people download: lvwerra/stack-exchange-paired (question, response_j, response_k: response_j is the
# answer with the higher score), Intel/orca_dpo_pairs (system, question, chosen, rejected), argilla's DPO sets
# (input, chosen, rejected), LLaMA-Factory's alpaca-style pairs (instruction, input, chosen, rejected).
SYNONYMS: dict[str, tuple[str, ...]] = {
    "chosen": ("chosen", "response_j", "chosen_response", "chosen_answer", "better_response", "preferred",
               "preferred_response"),
    "rejected": ("rejected", "response_k", "rejected_response", "rejected_answer", "worse_response", "dispreferred",
                 "dispreferred_response"),
    "prompt": ("prompt", "question", "instruction", "query", "input"),
    "input": ("input", "context"),  # extra text under the prompt (alpaca's input), when the prompt is another column
    "system": ("system", "system_prompt"),
}
VOTE_COLUMN = "vote"  # the Chat tab's preferences.jsonl (with "models", "chosen_model"): a | b | tie | both_bad
NOT_PAIRS = ("tie", "both_bad")  # votes that say neither answer is better: no pair, and not an error either

# shape -> how the summary names it
SHAPES = {
    "standard": "TRL standard pairs (prompt, chosen, rejected as text)",
    "conversational": "TRL conversational pairs (prompt as turns, chosen/rejected as assistant turns)",
    "full_conversations": "whole conversations with a prompt column (UltraFeedback style: the prompt is cut from "
                          "chosen/rejected)",
    "implicit_prompt": "whole conversations without a prompt column (their shared start is the prompt)",
    "hh_text": "Human:/Assistant: text (Anthropic HH style; the shared start is the prompt)",
    "chat_votes": "the Chat tab's votes (preferences.jsonl)",
}
_PEEK = 1 << 20  # bytes of a text file is_preference_file looks at before reading rows
_DETECT_ROWS = 20  # rows looked at to name the shape and, for is_preference_file, to find the columns
_HH = re.compile(r"(?:^|\n)\s*(Human|Assistant):[ \t]?")
_ANSWER_FIX = "a pair needs a prompt and two different answers to it"


@dataclass
class PreferenceReport(_Counts):
    path: str
    shape: str                 # a key of SHAPES
    mapping: dict[str, str]    # part (prompt, chosen, rejected, input, system, vote) -> the file's column
    columns: list[str]
    n_rows: int
    examples: list[dict]       # {"prompt": [...], "chosen": [...], "rejected": [...]}
    rows: list[int]            # the file's row number of each example
    issues: list[Issue]
    not_pairs: Counter = field(default_factory=Counter)  # vote -> rows: ties and both-bad votes, not errors
    table: pd.DataFrame | None = field(default=None, repr=False)  # the raw cells as read (for a preview)

    @property
    def n_not_pairs(self) -> int:
        return sum(self.not_pairs.values())

    @property
    def shape_label(self) -> str:
        return SHAPES.get(self.shape, self.shape)

    def summary(self) -> str:
        s = f"{_n(self.n_rows, 'row')} read as {self.shape_label}; "
        if self.n_skipped:
            why = ", ".join(f"{n} {k}" for k, n in self.skipped_reasons.most_common())
            s += f"{_n(self.n_used, 'pair')} used, {self.n_skipped} skipped: {why}."
        else:
            s += f"{_n(self.n_used, 'pair')} used, none skipped."
        if self.not_pairs:
            votes = ", ".join(f"{n} {k.replace('_', '-')}" for k, n in self.not_pairs.most_common())
            s += f" {_n(self.n_not_pairs, 'vote')} not a pair ({votes}): counted apart, not trained on."
        warned = Counter(i.kind for i in self.issues if i.severity == "warning")
        if warned:
            s += " Warnings: " + ", ".join(f"{n} {k}" for k, n in warned.most_common()) + "."
        return s


# --- columns and shape --------------------------------------------------------------------------

def _find_columns(columns: list) -> dict[str, str] | None:
    """part -> column, or None when there is no chosen or no rejected column."""
    by_lower: dict[str, str] = {}
    for c in columns:
        by_lower.setdefault(str(c).strip().lower(), str(c))
    found: dict[str, str] = {}
    for part, names in SYNONYMS.items():
        col = next((by_lower[a] for a in names if a in by_lower and by_lower[a] not in found.values()), None)
        if col is not None:
            found[part] = col
    if "chosen" not in found or "rejected" not in found:
        return None
    if VOTE_COLUMN in by_lower and {"models", "chosen_model"} & by_lower.keys():  # the Chat tab's, not upvotes
        found["vote"] = by_lower[VOTE_COLUMN]
    order = ("system", "prompt", "input", "chosen", "rejected", "vote")  # as a reader names them
    return {p: found[p] for p in order if p in found}


def _not_preferences(name: str, columns: list) -> DataError:
    found = ", ".join(map(str, columns)) or "(none)"
    by_lower = {str(c).strip().lower() for c in columns}
    missing = [p for p in ("chosen", "rejected") if not by_lower & set(SYNONYMS[p])]
    return DataError(
        f"{name} is not preference data: its columns are {found}, and it has no "
        f"{' and no '.join(missing)} column. Preference pairs (for the DPO stage) need a chosen and a rejected "
        f"column, the better and the worse answer, and a prompt column unless they are whole conversations: "
        f"prompt, chosen, rejected as TRL writes them. Also read: "
        f"{'/'.join(SYNONYMS['prompt'][1:3])} + response_j/response_k, chosen_response/rejected_response. "
        f"Rename the columns, or train on this file with SFT (a normal run) instead.")


def _shape(df: pd.DataFrame, cols: dict[str, str]) -> str:
    if "vote" in cols:
        return "chat_votes"
    for v in df[cols["chosen"]].head(_DETECT_ROWS).tolist():
        try:
            got = _cell(v, cols["chosen"], "chosen", [])
        except _Bad:
            continue
        if not got:
            continue
        if "prompt" not in cols:
            return "hh_text" if isinstance(got, str) and _HH.search(got) else "implicit_prompt"
        if isinstance(got, str):
            return "standard"
        return "conversational" if got[0]["role"] == "assistant" else "full_conversations"
    return "standard" if "prompt" in cols else "implicit_prompt"


def _names_answers(path: str | os.PathLike) -> bool:
    """Whether the file's first MB of text holds a name for the chosen and one for the rejected column: a check
    before the real one, because `iter_tables` reads a JSON array whole (seconds for a 200 MB SFT file, and the Data
    tab asks about every file). A header, a first line or a first object longer than 1 MB is ~never."""
    p = Path(path)
    if p.suffix.lower() in (".parquet", ".pq"):
        return True  # iter_tables reads one batch: the real check is cheap
    try:
        with open(p, "rb") as f:
            head = f.read(_PEEK)
    except OSError:
        return False
    text = head.decode("utf-16" if head[:2] in (b"\xff\xfe", b"\xfe\xff") else "utf-8", errors="ignore")
    text = (text[:-1] if len(head) == _PEEK else text).lower()  # a character may be cut in two at the end
    return all(any(n in text for n in SYNONYMS[part]) for part in ("chosen", "rejected"))


def is_preference_file(path: str | os.PathLike) -> bool:
    """Whether the file has a chosen and a rejected column (or their synonyms), from its first rows only. False for
    a file that cannot be read: the SFT check reports it."""
    if not _names_answers(path):
        return False
    df = _first_rows(path)
    return df is not None and _find_columns(list(df.columns)) is not None


def _first_rows(path: str | os.PathLike) -> pd.DataFrame | None:
    """The file's first rows (columns are what detection looks at); None when it cannot be read."""
    try:
        chunks = iter_tables(path, rows_per_chunk=_DETECT_ROWS)
        try:
            return next(chunks)[0]
        finally:
            chunks.close()
    except (DataError, OSError, StopIteration):
        return None


def is_feedback_file(path: str | os.PathLike) -> bool:
    """Whether the file's first rows have prompt, completion and label columns: answers rated one at a time (the KTO
    stage's data), which as SFT data would teach the bad answers too."""
    df = _first_rows(path)
    return df is not None and {"prompt", "completion", "label"} <= {str(c).strip().lower() for c in df.columns}


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


def _cell(v: Any, column: str, part: str, warns: list[Issue]) -> str | list[dict]:
    """A cell as text or as turns ("" / [] when empty); _Bad for what is neither."""
    if isinstance(v, str):
        s = v.strip()
        if s.startswith("[") and s.endswith("]"):
            turns = _json_turns(s)
            if turns is not None:
                return _turns(turns, column, part, warns)
        return _text(v, column, part, warns, required=False)
    v = _as_list(v)
    if isinstance(v, list):
        return _turns(v, column, part, warns)
    if isinstance(v, dict) and {"role", "from"} & v.keys():  # a single turn
        return _turns([v], column, part, warns)
    return _text(v, column, part, warns, required=False)  # None -> "", a number -> text (warned), else not text


def _turns(v: list, column: str, part: str, warns: list[Issue]) -> list[dict]:
    out = []
    for n, t in enumerate(v, 1):
        norm, content = _turn(t, n, column, f"{part}: ")
        text = _text(content, column, f"{part} turn {n} ({norm})", warns, required=False)  # _Bad "not text"
        if not text:
            raise _Bad(f"empty {part}", column, f"{part}: turn {n} ({norm}) is empty",
                       "fill in the message, or delete the row")
        out.append({"role": norm, "content": text})
    return out


def _hh_turns(text: str) -> list[dict] | None:
    """'Human: q  Assistant: a ...' -> turns; None when the text has no such markers."""
    marks = list(_HH.finditer(text))
    if not marks or text[:marks[0].start()].strip():
        return None
    out = []
    for m, nxt in zip(marks, marks[1:] + [None]):
        content = text[m.end():nxt.start() if nxt else len(text)].strip()
        out.append({"role": "user" if m.group(1) == "Human" else "assistant", "content": content})
    return out


def _same(a: dict, b: dict) -> bool:
    return a["role"] == b["role"] and a["content"] == b["content"]


def _shared(a: list[dict], b: list[dict]) -> int:
    """How many leading turns a and b share (TRL's extract_prompt does the same on whole turns)."""
    k = 0
    while k < min(len(a), len(b)) and _same(a[k], b[k]):
        k += 1
    return k


# --- one row -> one pair ------------------------------------------------------------------------

def _side(v: Any, column: str, part: str, hh: bool, warns: list[Issue]) -> list[dict]:
    got = _cell(v, column, part, warns)
    if not got:
        raise _Bad(f"empty {part}", column, f"{part} is empty",
                   f"fill in the {part} answer, or delete the row ({_ANSWER_FIX})")
    if isinstance(got, str):
        turns = _hh_turns(got) if hh else None
        if hh and turns is None:
            raise _Bad("missing prompt", column, f"there is no prompt: the file has no prompt column, and {part} is "
                                                 f"plain text, not a conversation",
                       "add a prompt column (the question both answers reply to), or write chosen and rejected as "
                       "conversations ('Human: ... Assistant: ...', or a list of turns)")
        if turns is not None and any(not t["content"] for t in turns):
            raise _Bad(f"empty {part}", column, f"{part} has an empty turn", "fill it in, or delete the row")
        return turns or [{"role": "assistant", "content": got}]
    return got


def _prompt(cells: dict, cols: dict, warns: list[Issue]) -> list[dict] | None:
    """The prompt column's turns (with the system and input columns folded in), or None without a prompt column."""
    system = _text(cells["system"], cols["system"], "system", warns, required=False) if "system" in cols else ""
    if "prompt" not in cols:
        return [{"role": "system", "content": system}] if system else None
    got = _cell(cells["prompt"], cols["prompt"], "prompt", warns)
    if not got:
        raise _Bad("empty prompt", cols["prompt"], "prompt is empty",
                   "write the question or instruction both answers reply to, or delete the row")
    if isinstance(got, str):
        extra = _text(cells["input"], cols["input"], "input", warns, required=False) if "input" in cols else ""
        got = [{"role": "user", "content": f"{got}\n\n{extra}" if extra else got}]
    if system and got[0]["role"] != "system":
        got = [{"role": "system", "content": system}, *got]
    return got


def _pair(cells: dict, cols: dict, warns: list[Issue]) -> dict:
    prompt = _prompt(cells, cols, warns)
    has_prompt = "prompt" in cols
    pcol = cols.get("prompt", cols["chosen"])  # implicit prompts come out of the chosen column
    hh = not has_prompt  # text answers without a prompt column can only be HH text
    chosen = _side(cells["chosen"], cols["chosen"], "chosen", hh, warns)
    rejected = _side(cells["rejected"], cols["rejected"], "rejected", hh, warns)
    if len(chosen) == len(rejected) and _shared(chosen, rejected) == len(chosen):
        raise _Bad("same answer", cols["rejected"], "chosen and rejected are the same answer",
                   "a pair needs two different answers: change one, or delete the row")
    conv_c, conv_r = chosen[0]["role"] != "assistant", rejected[0]["role"] != "assistant"
    if conv_c or conv_r:  # whole conversations: the prompt is inside
        sys_turn = prompt[:1] if prompt and prompt[0]["role"] == "system" else []
        k = 0
        for cand in ((prompt, prompt[len(sys_turn):]) if has_prompt else ()):  # UltraFeedback: cut the prompt column
            if cand and all(_shared(side, cand) == len(cand) for side, conv in ((chosen, conv_c), (rejected, conv_r))
                            if conv):
                k = len(cand)
                break
        if k:
            chosen, rejected = chosen[k:] if conv_c else chosen, rejected[k:] if conv_r else rejected
        elif conv_c and conv_r:  # the start both share is the prompt (TRL's extract_prompt)
            k = _shared(chosen, rejected)
            if k == 0:
                raise _Bad("missing prompt", cols["chosen"],
                           "chosen and rejected are conversations that start differently, so there is no shared "
                           "prompt" + (" (and neither starts with the prompt column)" if has_prompt else ""),
                           "start both with the same user turn(s), or give the prompt its own column and the "
                           "answers only in chosen and rejected")
            if has_prompt:
                warns.append(Issue(None, cols["prompt"], "the prompt column differs from the start the two "
                                                         "conversations share; their start was used as the prompt",
                                   "check the row: the prompt should be the conversation's user turn(s)",
                                   "warning", kind="prompt differs"))
            # a system column the conversations lack goes in front of them
            prompt = (sys_turn if chosen[0]["role"] != "system" else []) + chosen[:k]
            chosen, rejected = chosen[k:], rejected[k:]
        # else one side is only an answer and the other does not start with the prompt: its roles are checked below
        for part, side in (("chosen", chosen), ("rejected", rejected)):
            if not side:
                raise _Bad(f"empty {part}", cols[part], f"{part} has no answer after the prompt",
                           f"add the {part} answer, or delete the row ({_ANSWER_FIX})")
        if chosen == rejected:
            raise _Bad("same answer", cols["rejected"], "chosen and rejected give the same answer to the prompt",
                       "a pair needs two different answers: change one, or delete the row")
    if has_prompt and all(t["role"] == "system" for t in prompt):
        raise _Bad("missing prompt", pcol, "the prompt holds only a system turn",
                   "add the user's turn the two answers reply to, or delete the row")
    if prompt is None or all(t["role"] == "system" for t in prompt):
        raise _Bad("missing prompt", cols["chosen"], "there is no prompt: the file has no prompt column, and chosen "
                                                     "and rejected are not conversations that start with one",
                   "add a prompt column (the question both answers reply to), or write chosen and rejected as "
                   "whole conversations that start with it")
    _check_prompt(prompt, pcol)
    _check_answer(chosen, cols["chosen"], "chosen")
    _check_answer(rejected, cols["rejected"], "rejected")
    if sum(len(t["content"]) for t in prompt + chosen + rejected) > MAX_ROW_CHARS:
        raise _Bad("row too long", None, f"row is over {MAX_ROW_CHARS:,} characters",
                   "split it or delete it; it would be cut at the max length anyway")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def _check_prompt(prompt: list[dict], column: str) -> None:
    roles = [t["role"] for t in prompt]
    lead = 1 if roles[0] == "system" else 0
    for j, role in enumerate(roles[lead:]):
        want = "user" if j % 2 == 0 else "assistant"
        if role != want:
            raise _Bad("wrong roles", column, f"prompt turn {lead + j + 1} is {role} where {want} was expected",
                       "after an optional first system turn, the prompt's turns alternate user, assistant, user")
    if roles[-1] != "user":
        raise _Bad("wrong roles", column, f"the prompt ends with a{'n' if roles[-1] == 'assistant' else ''} "
                                          f"{roles[-1]} turn, not the user's",
                   "end the prompt with the user's turn; the answers go in chosen and rejected")


def _check_answer(turns: list[dict], column: str, part: str) -> None:
    for j, t in enumerate(turns):
        want = "assistant" if j % 2 == 0 else "user"
        if t["role"] != want:
            where = "starts with" if j == 0 else f"has at turn {j + 1}"
            raise _Bad("wrong roles", column, f"{part} {where} a {t['role']} turn where {want} was expected",
                       f"{part} holds the assistant's answer (after the prompt)")
    if turns[-1]["role"] != "assistant":
        raise _Bad("wrong roles", column, f"{part}'s last turn is from the {turns[-1]['role']}, not the assistant",
                   f"end {part} with the assistant's answer")


def _digest(ex: dict) -> bytes:
    return hashlib.blake2b(json.dumps(ex, ensure_ascii=False, sort_keys=True).encode("utf-8"),
                           digest_size=16).digest()


def _read_rows(rows: list[int], cells: dict[str, list], tally: _Tally, make, what: str) -> tuple[list, list[int]]:
    """Each row through `make(row, warns)` -> an example (None: a row that is not one, and not a problem; _Bad: a
    problem). Problems and warnings get the file's row number; a second copy of an example is refused. Returns
    (examples, the row number of each)."""
    examples, used_rows, seen = [], [], {}
    for i, rownum in enumerate(rows):
        row = {part: vals[i] for part, vals in cells.items()}
        warns: list[Issue] = []
        try:
            ex = make(row, warns)
        except _Bad as bad:
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


# --- the file -----------------------------------------------------------------------------------

def read_preferences(path: str | os.PathLike, skip_invalid: bool = True) -> PreferenceReport:
    """Read, detect the shape, normalise and validate a preference file. With skip_invalid=False any bad row
    (duplicates aside) raises DataError naming the file, row and column; otherwise bad rows are skipped and
    reported. Ties and both-bad votes are counted in `not_pairs`, never reported as problems."""
    name = Path(path).name
    df = read_table(path)
    rows, file_issues = df.attrs["rows"], list(df.attrs["issues"])
    cols = _find_columns(list(df.columns))
    if cols is None:
        raise _not_preferences(name, list(df.columns))
    shape = _shape(df, cols)
    cells = {part: df[c].tolist() for part, c in cols.items()}
    tally = _Tally(file_issues, keep=None)
    not_pairs: Counter = Counter()

    def pair(row: dict, warns: list[Issue]) -> dict | None:
        if "vote" in row:
            vote = row["vote"]
            vote = str(vote).strip().lower() if isinstance(vote, str) else vote
            if vote in NOT_PAIRS:
                not_pairs[vote] += 1
                return None
            if vote not in ("a", "b") and not _missing(vote):
                raise _Bad("unknown vote", cols["vote"], f"vote is '{_show(str(vote))}'",
                           "use a, b, tie or both_bad, as the Chat tab writes them")
        return _pair(row, cols, warns)

    examples, used_rows = _read_rows(rows, cells, tally, pair, "pair")
    report = PreferenceReport(str(path), shape, cols, list(df.columns), len(rows), examples, used_rows, tally.issues,
                              not_pairs, df)
    if not examples and not tally.n_errors and not_pairs:
        votes = ", ".join(f"{n} {k.replace('_', '-')}" for k, n in not_pairs.most_common())
        raise DataError(f"{name}: no preference pairs: all {_n(len(rows), 'row')} are votes that prefer neither "
                        f"answer ({votes}). Vote A or B in the Chat tab (or edit an answer and vote for it) to make "
                        f"pairs DPO can learn from.")
    tally.check(name, len(rows), skip_invalid)
    return report


def write_pairs(examples: list[dict], path: str | os.PathLike) -> Path:
    """One {"prompt", "chosen", "rejected"} per line (TRL's conversational preference format, what the DPO stage
    reads back with read_preferences or datasets' json loader); a temp file renamed, as read.write_jsonl does."""
    return _write_lines(examples, ("prompt", "chosen", "rejected"), path)


def _write_lines(examples: list[dict], keys: tuple[str, ...], path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
        for ex in examples:
            f.write(json.dumps({k: ex[k] for k in keys}, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


# --- single answers rated good or bad (KTO's unpaired format) ------------------------------------

_LABEL_WORDS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False, "up": True,
                "down": False, "good": True, "bad": False, "👍": True, "👎": False}


@dataclass
class FeedbackReport(_Counts):
    """Answers rated one at a time: {"prompt": [...], "completion": [{"role": "assistant", ...}], "label": bool}."""
    path: str
    n_rows: int
    examples: list[dict]
    rows: list[int]
    issues: list[Issue]

    @property
    def n_desirable(self) -> int:
        return sum(e["label"] for e in self.examples)

    def summary(self) -> str:
        n = self.n_used
        text = (f"{_n(self.n_rows, 'row')} read as rated answers; {n} used: {self.n_desirable} good, "
                f"{n - self.n_desirable} bad")
        return text + (f"; {_n(self.n_skipped, 'row')} skipped" if self.n_skipped else "") + "."


def _label(v: Any, column: str) -> bool:
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, float, np.integer, np.floating)) and not _missing(v) and float(v) in (0.0, 1.0):
        return bool(v)
    word = str(v).strip().lower() if isinstance(v, str) else None
    if word in _LABEL_WORDS:
        return _LABEL_WORDS[word]
    raise _Bad("bad label", column, f"label is '{_show(str(v))}'",
               "write true for a good answer and false for a bad one (1/0, yes/no, 👍/👎 work too)")


def read_feedback(path: str | os.PathLike, skip_invalid: bool = True) -> FeedbackReport:
    """Read answers rated one at a time (the Chat tab's feedback.jsonl, or any file with prompt, completion and
    label columns; prompt and completion as text or chat turns), validated row by row as read_preferences does."""
    name = Path(path).name
    df = read_table(path)
    rows, file_issues = df.attrs["rows"], list(df.attrs["issues"])
    lower = {str(c).strip().lower(): c for c in df.columns}
    cols = {part: lower[part] for part in ("prompt", "completion", "label", "system") if part in lower}
    missing = [p for p in ("prompt", "completion", "label") if p not in cols]
    if missing:
        raise DataError(f"{name} is not a file of rated answers: its columns are {', '.join(map(str, df.columns))}, "
                        f"and it has no {' and no '.join(missing)} column. It needs prompt, completion and label "
                        f"(true for a good answer, false for a bad one), as the Chat tab's 👍/👎 file has.")
    cells = {part: df[c].tolist() for part, c in cols.items()}
    tally = _Tally(file_issues, keep=None)
    def rated(row: dict, warns: list[Issue]) -> dict:
        prompt = _prompt(row, cols, warns)
        completion = _side(row["completion"], cols["completion"], "completion", False, warns)
        _check_prompt(prompt, cols["prompt"])
        _check_answer(completion, cols["completion"], "completion")
        return {"prompt": prompt, "completion": completion, "label": _label(row["label"], cols["label"])}

    examples, used_rows = _read_rows(rows, cells, tally, rated, "rated answer")
    tally.check(name, len(rows), skip_invalid)
    return FeedbackReport(str(path), len(rows), examples, used_rows, tally.issues)


def write_unpaired(examples: list[dict], path: str | os.PathLike) -> Path:
    """One {"prompt", "completion", "label"} per line (TRL's unpaired preference format, what the KTO stage reads)."""
    return _write_lines(examples, ("prompt", "completion", "label"), path)


def normalise_to(path_in: str | os.PathLike, path_out: str | os.PathLike, skip_invalid: bool = True
                 ) -> PreferenceReport:
    """read_preferences(path_in), then its pairs written to path_out by write_pairs. The user's file is only read."""
    report = read_preferences(path_in, skip_invalid)
    write_pairs(report.examples, path_out)
    return report


# --- tokens -------------------------------------------------------------------------------------

@dataclass
class PreferenceTokenStats:
    """tokens.TokenStats of prompt + chosen and of prompt + rejected under the chat template (the two sequences
    DPO scores for each pair; each is cut at max_length)."""
    chosen: tokens.TokenStats
    rejected: tokens.TokenStats
    max_length: int

    @property
    def n(self) -> int:
        return len(self.chosen.lengths)

    @property
    def n_over(self) -> int:
        """Pairs with either side longer than max_length."""
        return sum(max(a, b) > self.max_length for a, b in zip(self.chosen.lengths, self.rejected.lengths))

    @property
    def pair_lengths(self) -> list[int]:
        """The longer side of each pair."""
        return [max(a, b) for a, b in zip(self.chosen.lengths, self.rejected.lengths)]

    @property
    def issues(self) -> list[Issue]:
        return self.chosen.issues + self.rejected.issues

    @staticmethod
    def side(s: tokens.TokenStats) -> dict:
        """count, mean, median, p95, max and how many exceed max_length, of one side."""
        return {"n": len(s.lengths), "mean": float(np.mean(s.lengths)) if s.lengths else 0.0, "p50": s.p50,
                "p95": s.p95, "max": s.max, "n_over": s.n_over}


def preference_token_stats(examples: list[dict], tokenizer: Any, max_length: int, rows: list[int] | None = None
                           ) -> PreferenceTokenStats:
    """Token lengths of prompt + chosen and prompt + rejected, as tokens.token_stats measures SFT examples (the
    chat template rendered by tokens.render_chat); `rows` name the file's rows in the issues."""
    chosen = tokens.token_stats([e["prompt"] + e["chosen"] for e in examples], tokenizer, max_length, rows)
    rejected = tokens.token_stats([e["prompt"] + e["rejected"] for e in examples], tokenizer, max_length, rows)
    return PreferenceTokenStats(chosen, rejected, max_length)
