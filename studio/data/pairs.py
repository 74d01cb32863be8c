"""Preference data for the DPO stage: pairs of a better (chosen) and a worse (rejected) answer to one prompt.

Reads the shapes people have, through `read`'s readers and caps: TRL's standard format (prompt, chosen, rejected as
text), TRL's conversational format (prompt as turns, chosen/rejected as assistant turns), whole conversations with
the prompt inside (with a prompt column, UltraFeedback-style, or without: the shared start is the prompt), Anthropic
HH text ("Human: ... Assistant: ..."), the paired column names of StackExchange / Orca / LLaMA-Factory sets, and the
Chat tab's own preferences.jsonl. Every pair comes out in TRL's conversational shape,
`{"prompt": [turns ending with a user turn], "chosen": [assistant turn, ...], "rejected": [assistant turn, ...]}`;
every row that cannot become one is an Issue naming its row, column and what to do, as in `formats`.
The cells are read as `answers` reads them, for rated answers (`ratings`) too. No transformers, no torch.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .answers import (ANSWER_FIX, DETECT_ROWS, HH, answer_turns, check_answer, check_prompt, first_rows,
                      prompt_turns, read_rows, shared_turns, turns_or_text, write_lines)
from .cells import MAX_ROW_CHARS, Bad, is_missing
from .formats import Counts, Tally
from .issues import DataError, Issue, plural, show
from .read import read_table

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


@dataclass
class PreferenceReport(Counts):
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
        s = f"{plural(self.n_rows, 'row')} read as {self.shape_label}; "
        if self.n_skipped:
            why = ", ".join(f"{n} {k}" for k, n in self.skipped_reasons.most_common())
            s += f"{plural(self.n_used, 'pair')} used, {self.n_skipped} skipped: {why}."
        else:
            s += f"{plural(self.n_used, 'pair')} used, none skipped."
        if self.not_pairs:
            votes = ", ".join(f"{n} {k.replace('_', '-')}" for k, n in self.not_pairs.most_common())
            s += f" {plural(self.n_not_pairs, 'vote')} not a pair ({votes}): counted apart, not trained on."
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
    for v in df[cols["chosen"]].head(DETECT_ROWS).tolist():
        try:
            got = turns_or_text(v, cols["chosen"], "chosen", [])
        except Bad:
            continue
        if not got:
            continue
        if "prompt" not in cols:
            return "hh_text" if isinstance(got, str) and HH.search(got) else "implicit_prompt"
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
    df = first_rows(path)
    return df is not None and _find_columns(list(df.columns)) is not None


# --- one row -> one pair ------------------------------------------------------------------------

def _pair(cells: dict, cols: dict, warns: list[Issue]) -> dict:
    prompt = prompt_turns(cells, cols, warns)
    has_prompt = "prompt" in cols
    pcol = cols.get("prompt", cols["chosen"])  # implicit prompts come out of the chosen column
    hh = not has_prompt  # text answers without a prompt column can only be HH text
    chosen = answer_turns(cells["chosen"], cols["chosen"], "chosen", hh, warns)
    rejected = answer_turns(cells["rejected"], cols["rejected"], "rejected", hh, warns)
    if len(chosen) == len(rejected) and shared_turns(chosen, rejected) == len(chosen):
        raise Bad("same answer", cols["rejected"], "chosen and rejected are the same answer",
                  "a pair needs two different answers: change one, or delete the row")
    conv_c, conv_r = chosen[0]["role"] != "assistant", rejected[0]["role"] != "assistant"
    if conv_c or conv_r:  # whole conversations: the prompt is inside
        sys_turn = prompt[:1] if prompt and prompt[0]["role"] == "system" else []
        k = 0
        for cand in ((prompt, prompt[len(sys_turn):]) if has_prompt else ()):  # UltraFeedback: cut the prompt column
            if cand and all(shared_turns(side, cand) == len(cand)
                            for side, conv in ((chosen, conv_c), (rejected, conv_r)) if conv):
                k = len(cand)
                break
        if k:
            chosen, rejected = chosen[k:] if conv_c else chosen, rejected[k:] if conv_r else rejected
        elif conv_c and conv_r:  # the start both share is the prompt (TRL's extract_prompt)
            k = shared_turns(chosen, rejected)
            if k == 0:
                raise Bad("missing prompt", cols["chosen"],
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
                raise Bad(f"empty {part}", cols[part], f"{part} has no answer after the prompt",
                          f"add the {part} answer, or delete the row ({ANSWER_FIX})")
        if chosen == rejected:
            raise Bad("same answer", cols["rejected"], "chosen and rejected give the same answer to the prompt",
                      "a pair needs two different answers: change one, or delete the row")
    if has_prompt and all(t["role"] == "system" for t in prompt):
        raise Bad("missing prompt", pcol, "the prompt holds only a system turn",
                  "add the user's turn the two answers reply to, or delete the row")
    if prompt is None or all(t["role"] == "system" for t in prompt):
        raise Bad("missing prompt", cols["chosen"], "there is no prompt: the file has no prompt column, and chosen "
                                                    "and rejected are not conversations that start with one",
                  "add a prompt column (the question both answers reply to), or write chosen and rejected as "
                  "whole conversations that start with it")
    check_prompt(prompt, pcol)
    check_answer(chosen, cols["chosen"], "chosen")
    check_answer(rejected, cols["rejected"], "rejected")
    if sum(len(t["content"]) for t in prompt + chosen + rejected) > MAX_ROW_CHARS:
        raise Bad("row too long", None, f"row is over {MAX_ROW_CHARS:,} characters",
                  "split it or delete it; it would be cut at the max length anyway")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


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
    tally = Tally(file_issues, keep=None)
    not_pairs: Counter = Counter()

    def pair(row: dict, warns: list[Issue]) -> dict | None:
        if "vote" in row:
            vote = row["vote"]
            vote = str(vote).strip().lower() if isinstance(vote, str) else vote
            if vote in NOT_PAIRS:
                not_pairs[vote] += 1
                return None
            if vote not in ("a", "b") and not is_missing(vote):
                raise Bad("unknown vote", cols["vote"], f"vote is '{show(str(vote))}'",
                          "use a, b, tie or both_bad, as the Chat tab writes them")
        return _pair(row, cols, warns)

    examples, used_rows = read_rows(rows, cells, tally, pair, "pair")
    report = PreferenceReport(str(path), shape, cols, list(df.columns), len(rows), examples, used_rows, tally.issues,
                              not_pairs, df)
    if not examples and not tally.n_errors and not_pairs:
        votes = ", ".join(f"{n} {k.replace('_', '-')}" for k, n in not_pairs.most_common())
        raise DataError(f"{name}: no preference pairs: all {plural(len(rows), 'row')} are votes that prefer neither "
                        f"answer ({votes}). Vote A or B in the Chat tab (or edit an answer and vote for it) to make "
                        f"pairs DPO can learn from.")
    tally.check(name, len(rows), skip_invalid)
    return report


def write_pairs(examples: list[dict], path: str | os.PathLike) -> Path:
    """One {"prompt", "chosen", "rejected"} per line (TRL's conversational preference format, what the DPO stage
    reads back with read_preferences or datasets' json loader); a temp file renamed, as read.write_jsonl does."""
    return write_lines(examples, ("prompt", "chosen", "rejected"), path)


def normalise_to(path_in: str | os.PathLike, path_out: str | os.PathLike, skip_invalid: bool = True
                 ) -> PreferenceReport:
    """read_preferences(path_in), then its pairs written to path_out by write_pairs. The user's file is only read."""
    report = read_preferences(path_in, skip_invalid)
    write_pairs(report.examples, path_out)
    return report
