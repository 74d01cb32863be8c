"""Dataset intake in three parts: `read` (files and encodings), `formats` (columns -> chat messages, per-row
issues), `tokens` (chat template, assistant-only mask, token statistics).

The trainer only ever sees normalised examples, `[{"role": "system"|"user"|"assistant", "content": str}, ...]`
ending with an assistant turn, written to `runs/<id>/dataset.jsonl` by `write_jsonl`. Every row that cannot
become one is reported as an `Issue` naming the row, the column and what to do; the user's file is only read.
Only `tokens` needs a tokenizer, and it takes one as an argument: nothing here imports transformers or torch.
`scan_examples` runs the same per-row rules over `iter_tables`' chunks for `studio data`: the counts, issues and a
reservoir sample of a file of any size, without holding it. `prefs` reads preference pairs (prompt, chosen, rejected)
for the DPO stage into TRL's conversational shape, and single rated answers (prompt, completion, label) for the
KTO stage, with the same Issues.
"""
from .kinds import CONVERSATIONS, KINDS, PAIRS, RATED, Kind, kind, kind_of_file
from .formats import (FORMATS, MAX_ROW_CHARS, DatasetReport, ScanReport, detect_format, from_config, read_examples,
                      scan_examples, split)
from .prefs import (SHAPES, FeedbackReport, PreferenceReport, PreferenceTokenStats, is_feedback_file,
                    is_preference_file, normalise_to, preference_token_stats, read_feedback, read_preferences,
                    write_pairs, write_unpaired)
from .read import (EXTENSIONS, MAX_DATA_BYTES, MAX_ROWS, DataError, Issue, iter_tables, read_jsonl, read_table,
                   write_jsonl)
from .tokens import TOKEN_SAMPLE, Reservoir, TokenStats, render_chat, sample_examples, token_stats, tokenize_messages

__all__ = ["CONVERSATIONS", "KINDS", "PAIRS", "RATED", "Kind", "kind", "kind_of_file", "DataError", "Issue", "DatasetReport", "ScanReport", "TokenStats", "Reservoir", "read_table", "iter_tables",
           "detect_format", "read_examples", "scan_examples", "from_config", "tokenize_messages", "render_chat",
           "token_stats", "split", "write_jsonl", "read_jsonl", "sample_examples", "EXTENSIONS", "FORMATS",
           "MAX_ROW_CHARS", "TOKEN_SAMPLE", "MAX_DATA_BYTES", "MAX_ROWS", "PreferenceReport", "PreferenceTokenStats",
           "read_preferences", "is_preference_file", "preference_token_stats", "normalise_to", "write_pairs", "SHAPES",
           "FeedbackReport", "read_feedback", "write_unpaired", "is_feedback_file"]
