"""Files written whole or not at all, and JSON files read without trusting them.

- `atomic_write`: the one way a file the studio owns is (re)written: a temp file in the same folder, renamed over the
  name, so a reader sees the old file or the new one, never half of one (status.json, dataset copies, zips, caches).
- `read_json_lines`: the one tolerant reader of append-only JSON-lines files (metrics.jsonl, votes, ratings): a line
  torn by a crash mid-write, or one that is not an object, is skipped.
- `read_json_dict`: a small JSON file (status.json, run.json, a cache) as a dict, {} when missing or unreadable.
- `foreign_folder`: whether a folder the user named may be filled (new, empty or the studio's own), or why not.
- `folder_bytes` / `free_space`: what a folder holds, and what its disk has left, for messages.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator


@contextmanager
def atomic_write(path: str | os.PathLike, binary: bool = False, mkdir: bool = True) -> Iterator[IO]:
    """`with atomic_write(path) as f: f.write(...)`: f is a temp file beside `path` (its folder is made unless
    mkdir=False: then a missing folder raises, as a removed run folder must not come back); it takes
    `path`'s name when the block ends without an error, and is removed when it raises. The file gets the
    permissions of any new file (0o666 less the umask; not mkstemp's owner-only, and no umask read by setting it,
    which would race with the UI server's other threads). Threads and processes may write the same path at once:
    each has a temp name of its own (O_EXCL: never another's), and the last rename wins."""
    path = Path(path)
    if mkdir:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with (os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8", newline="\n")) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> Path:
    """`text` into `path` with atomic_write."""
    with atomic_write(path) as f:
        f.write(text)
    return Path(path)


def write_json_lines(path: str | os.PathLike, records) -> Path:
    """One JSON object per line (UTF-8, non-ASCII kept), with atomic_write."""
    with atomic_write(path) as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return Path(path)


def read_json_lines(path: str | os.PathLike) -> list[dict]:
    """The JSON objects of a JSON-lines file, in order ([] when it does not exist); a line that does not parse
    (torn by a crash mid-write, or a half-written last line) or is not an object is skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            out.append(obj)
    return out


def read_json_dict(path: str | os.PathLike) -> dict:
    """A JSON object file as a dict; {} when it is missing, unreadable, not JSON or not an object."""
    try:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return d if isinstance(d, dict) else {}


def foreign_folder(dest: Path, option: str, holds: str, kind: str, own) -> str | None:
    """Why `dest` (given with `option`) must not be written into, or None when it may: a new or empty folder, or
    one `own(dest)` recognises as the studio's own `kind` ("a run folder"). The one rule of every folder the
    studio fills (train --output, export --merged-out): a user's folder holding anything else is never replaced.
    `holds`: what the folder is for, in "give a folder for {holds}"."""
    if not dest.exists() or (dest.is_dir() and not any(dest.iterdir())):
        return None
    if not dest.is_dir():
        return f"{dest} is a file: give a folder for {holds} with {option}."
    if not own(dest):
        return f"{dest} is not empty and is not {kind}: give a new or empty folder with {option} (nothing was written)."
    return None


def folder_bytes(folder: str | os.PathLike) -> int:
    """Bytes of the files under `folder` (links followed: a hub snapshot links into blobs/); what cannot be read
    is left out."""
    total = 0
    for p in Path(folder).rglob("*"):
        try:
            if p.is_file():
                total += p.stat().st_size
        except OSError:
            continue
    return total


def free_space(folder: str | os.PathLike) -> str | None:
    """"N MB free in FOLDER", measured at the nearest folder that exists (the one named may not yet); None when
    even that cannot be read."""
    folder = Path(folder)
    existing = next((p for p in (folder, *folder.parents) if p.exists()), folder)
    try:
        return f"{shutil.disk_usage(existing).free / 2**20:.0f} MB free in {folder}"
    except OSError:
        return None
