"""The kinds of rows a training stage trains on, each with how it is read from a user's file (checked row by row),
written as a run's own copy, and shown as conversations (what Chat's held-out comparison and the GGUF check read).
studio.stages names a stage's kind; nothing else branches on it.

- conversations: chat examples ending with an assistant answer (any SFT format: alpaca, messages, ShareGPT, ...)
- pairs: a prompt with a better (chosen) and a worse (rejected) answer (DPO)
- rated: a prompt with one answer rated good or bad (KTO)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .formats import from_config
from .pairs import is_preference_file, read_preferences, write_pairs
from .ratings import is_rated_file, read_rated_answers, write_rated
from .read import write_jsonl

CONVERSATIONS, PAIRS, RATED = "conversations", "pairs", "rated"


@dataclass(frozen=True)
class Kind:
    name: str
    label: str                                 # what train.log calls the report
    what: str                                  # what a file of them holds, in a sentence
    read: Callable[[Any], Any]                 # the config's data section -> a report with .examples
    write: Callable[[list, Path], Path]        # the run's own copy of the examples
    conversations: Callable[[list], list]      # the examples as chat conversations ([{role, content}, ...] each)
    run_format: str                            # data.format of the run's own copy
    is_file: Callable[[Any], bool] | None = None  # whether a file holds this kind (for refusing it as another)
    not_sft: str = ""                          # why it must not be read as instruction examples
    count: Callable[[list], str] = lambda ex: f"{len(ex)} examples"
    balance: Callable[[list], str | None] = lambda ex: None  # a warning on what the rows lack


def _rated_count(ex: list) -> str:
    return f"{len(ex)} answers ({sum(e['label'] for e in ex)} good)"


def _rated_balance(ex: list) -> str | None:
    good = sum(e["label"] for e in ex)
    if good in (0, len(ex)):
        return f"All {len(ex)} rated answers are {'good' if good else 'bad'}: KTO learns most from both kinds."
    return None


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind(CONVERSATIONS, "Data", "instruction examples", from_config, write_jsonl, lambda ex: ex, "messages"),
    Kind(PAIRS, "Preference data", "preference pairs (prompt, chosen, rejected)",
         lambda d: read_preferences(d.path, skip_invalid=d.skip_invalid), write_pairs,
         lambda ex: [e["prompt"] + e["chosen"] for e in ex], "auto", is_file=is_preference_file,
         count=lambda ex: f"{len(ex)} pairs"),
    Kind(RATED, "Rated answers", "answers rated good or bad (prompt, completion, label)",
         lambda d: read_rated_answers(d.path, skip_invalid=d.skip_invalid), write_rated,
         lambda ex: [e["prompt"] + e["completion"] for e in ex if e["label"]], "auto", is_file=is_rated_file,
         not_sft=" (as SFT data it would teach the bad answers too)", count=_rated_count, balance=_rated_balance),
)}


def kind(name: str) -> Kind:
    return KINDS[name]


def kind_of_file(path: str | Path) -> Kind | None:
    """The kind other than conversations a file holds (pairs, rated answers), or None."""
    return next((k for k in KINDS.values() if k.is_file is not None and k.is_file(path)), None)
