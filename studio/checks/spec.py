"""What a check is: the `Check` record, the known types with their help sentences and allowed fields, and the
normalize steps of the exact check. `parse` turns the YAML mapping into a `Check` (and refuses a bad one); `score`
turns a `Check` and one answer into a score in [0, 1].
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

# type name -> one sentence for the UI's help text
TYPES: dict[str, str] = {
    "exact": "The answer equals the reference after the normalize steps (default: strip spaces at both ends).",
    "numeric": "The answer's number equals the reference's number, within tolerance (absolute) or relative "
               "(a fraction of the reference).",
    "regex": "The answer matches the regular expression in pattern (. also matches new lines unless dotall: "
             "false); expect: false passes when it does not match.",
    "json": "The answer is JSON or holds a JSON object, with the required keys, valid under schema, or equal "
            "to the reference's JSON (same_as_reference: true).",
    "contains": "The answer contains every string in all and at least one string in any.",
    "not_contains": "The answer contains none of the strings in all and any.",
    "length": "The answer's words or characters stay within max_/min_ limits; past a limit the score falls "
              "gradually (to 0 at twice a max_ limit).",
}

# type name -> its own fields, besides the ones every check has (COMMON)
FIELDS: dict[str, tuple[str, ...]] = {
    "exact": ("normalize", "compare_to"),
    "numeric": ("tolerance", "relative", "compare_to"),
    "regex": ("pattern", "mode", "ignore_case", "dotall", "expect"),
    "json": ("required", "schema", "same_as_reference", "compare_to"),
    "contains": ("all", "any", "ignore_case"),
    "not_contains": ("all", "any", "ignore_case"),
    "length": ("max_words", "max_chars", "min_words", "min_chars"),
}

COMMON: tuple[str, ...] = ("name", "type", "weight", "extract")

# the exact check's normalize steps, applied in the order given
NORMALIZERS: tuple[str, ...] = ("strip", "lower", "collapse_spaces", "remove_commas", "remove_punctuation")

# the extract forms, for messages
EXTRACT_FORMS = "whole, last_number, {between: [START, END]}, {regex: PATTERN} or {json: PATH}"


def _plain(value: Any) -> Any:
    """A deep copy with tuples as lists, so that yaml.safe_dump can write it."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return copy.deepcopy(value)


@dataclass(frozen=True)
class Check:
    """One check, validated: `fields` holds the type's own fields as the user gave them (defaults not filled in),
    `extract` the extract spec as given (None = the whole answer)."""
    name: str
    type: str
    weight: float = 1.0
    extract: Any = None
    fields: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The YAML mapping again: parse_checks([c.to_dict()]) == [c]. weight 1 and a missing extract are left out."""
        out: dict = {"name": self.name, "type": self.type}
        if self.weight != 1:
            out["weight"] = self.weight
        if self.extract is not None:
            out["extract"] = _plain(self.extract)
        out.update(_plain(self.fields))
        return out

    @property
    def column(self) -> str | None:
        """The data column this check compares to (compare_to), or None for the row's own reference."""
        return self.fields.get("compare_to")

    def __hash__(self) -> int:  # fields and extract may be dicts: hash their JSON
        return hash((self.name, self.type, self.weight,
                     json.dumps([self.extract, self.fields], sort_keys=True, default=str)))
