"""Dataset intake. The trainer only ever sees normalised examples, `[{"role": "system"|"user"|"assistant", "content":
str}, ...]` ending with an assistant turn, written to `runs/<id>/dataset.jsonl` by `write_jsonl`. Every row that
cannot become one is reported as an `Issue` naming the row, the column and what to do; the user's file is only read.
Only `tokens` needs a tokenizer, and it takes one as an argument: nothing here imports transformers or torch.

The modules, each importing only those above it:
- `issues`: DataError (the file cannot be used) and Issue (one row's problem), and the words of their messages.
- `limits`: the caps on a file (size, rows, nesting, chunk size) and the checks before any row is read.
- `text`, `parquet`: the readers (CSV/TSV, JSON, JSON Lines and their encodings; Parquet), whole or in chunks.
- `read`: `read_table` and `iter_tables` (a file to raw cells, whole or streamed), and the run folder's own JSONL.
- `cells`: one row's cells to chat messages, or the Issue that skips it.
- `detect`: which columns hold what (`detect_format`: alpaca, messages, ShareGPT, prompt/completion, text).
- `tokens`: chat template, assistant-only mask, token statistics (of examples and of preference pairs).
- `formats`: `read_examples` (for training) and `scan_examples` (streamed over `iter_tables`, for `studio data`: the
  counts, issues and a reservoir sample of a file of any size, without holding it), the reports, `split`.
- `answers`: what the preference readers share (prompt and answer cells, the row loop, the first rows of a file).
- `pairs`: preference pairs (prompt, chosen, rejected) for the DPO stage, in TRL's conversational shape.
- `ratings`: single answers rated good or bad (prompt, completion, label) for the KTO stage.
- `kinds`: the kinds of rows a stage trains on, each with its reader and writer.
"""
from .kinds import CONVERSATIONS, KINDS, PAIRS, RATED, Kind, kind, kind_of_file
from .detect import FORMATS, detect_format
from .cells import MAX_ROW_CHARS
from .formats import DatasetReport, ScanReport, from_config, read_examples, scan_examples, split
from .pairs import SHAPES, PreferenceReport, is_preference_file, normalise_to, read_preferences, write_pairs
from .ratings import RatedReport, is_rated_file, read_rated_answers, write_rated
from .issues import DataError, Issue
from .limits import EXTENSIONS, MAX_DATA_BYTES, MAX_ROWS
from .read import iter_tables, read_jsonl, read_table, write_jsonl
from .tokens import (TOKEN_SAMPLE, PreferenceTokenStats, Reservoir, TokenStats, preference_token_stats, render_chat,
                     sample_examples, token_stats, tokenize_messages)

__all__ = ["CONVERSATIONS", "KINDS", "PAIRS", "RATED", "Kind", "kind", "kind_of_file", "DataError", "Issue",
           "DatasetReport", "ScanReport", "TokenStats", "Reservoir", "read_table", "iter_tables", "detect_format",
           "read_examples", "scan_examples", "from_config", "tokenize_messages", "render_chat", "token_stats", "split",
           "write_jsonl", "read_jsonl", "sample_examples", "EXTENSIONS", "FORMATS", "MAX_ROW_CHARS", "TOKEN_SAMPLE",
           "MAX_DATA_BYTES", "MAX_ROWS", "PreferenceReport", "PreferenceTokenStats", "read_preferences",
           "is_preference_file", "preference_token_stats", "normalise_to", "write_pairs", "SHAPES", "RatedReport",
           "read_rated_answers", "write_rated", "is_rated_file"]
