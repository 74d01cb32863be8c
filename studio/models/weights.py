"""Whether a safetensors file is one, from its header alone (a few bytes to a few hundred KB, never the tensors):
what a model or adapter folder is checked with before a loader opens it, so a wrong file (a link to /etc/passwd, a
download cut short) is named in a sentence instead of the loader's "header too large". Imports nothing of the
studio: studio.runs.layout's checkpoint check can use it too."""
from __future__ import annotations

import json
from pathlib import Path

# safetensors' own bound on the JSON header (MAX_HEADER_SIZE, 100,000,000 bytes); a 70B model's header is ~100 KB
MAX_HEADER = 100_000_000


def safetensors_problem(path: str | Path) -> str | None:
    """Why `path` is not a whole safetensors file, as a phrase ("its first 8 bytes ..."), or None when it is one:
    an 8-byte little-endian header length, a JSON object of that length naming each tensor's data_offsets, and
    the tensors' bytes all inside the file."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if size < 8 or n > MAX_HEADER or 8 + n > size:
                return (f"its first 8 bytes do not give the length of a header that fits in its {size:,} bytes "
                        "(a safetensors file starts with one)")
            header = json.loads(f.read(n))
    except OSError as e:
        return f"it cannot be read ({e.strerror or e})"
    except ValueError:  # json.JSONDecodeError and UnicodeDecodeError both are
        return "its header is not JSON"
    if not isinstance(header, dict):
        return "its header is not a JSON object"
    try:
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (KeyError, TypeError, IndexError, ValueError):
        return "its header does not give each tensor's data_offsets"
    if size < 8 + n + end:
        return f"it is cut short: {size:,} bytes where its header lists {8 + n + end:,}"
    return None
