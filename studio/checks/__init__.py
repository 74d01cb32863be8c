"""Checks: what a good answer is, each scoring one model answer in [0, 1]; declared as a `checks:` list in a run
config and used to score held-out answers. Pure Python (jsonschema for the json check's schema, PyYAML for the list);
nothing here imports the rest of the studio, torch or transformers.

The modules, each importing only those above it:
- `spec`: the `Check` record, TYPES (with help sentences), FIELDS and NORMALIZERS.
- `extract`: which part of an answer (and of the reference) is checked, and the number and JSON readers.
- `parse`: the YAML list -> validated Checks (ValueError naming the check), check_columns, from_yaml / to_yaml.
- `score`: one answer's score with each check, and why it fell short.
- `stats`: Wilson and normal intervals of pass rates and mean scores, and summarize.
"""
from __future__ import annotations

from .extract import extract
from .parse import check_columns, from_yaml, parse_checks, to_yaml
from .score import detail, score, score_all
from .spec import FIELDS, NORMALIZERS, TYPES, Check
from .stats import mean_ci, summarize, wilson

__all__ = ["Check", "FIELDS", "NORMALIZERS", "TYPES", "check_columns", "detail", "extract", "from_yaml", "mean_ci",
           "parse_checks", "score", "score_all", "summarize", "to_yaml", "wilson"]
