"""User YAML read without surprises, and user values quoted briefly: the one loader of every YAML a user gives the
studio (a run config, checks) and the one way a message quotes a user's value. A leaf: imports nothing of the
studio.

Both guard against the same file: a few hundred bytes of YAML aliases stand for 10^9 values (a "billion laughs"),
which a safe_load builds in full and an error message's `{v!r}` then formats (minutes and ~7 GB before).
"""
from __future__ import annotations

import reprlib

import yaml

MAX_YAML_BYTES = 1_000_000  # a run config with its checks is a few KB; 1 MB is ~200x that
MAX_YAML_DEPTH = 64  # a config nests 3 deep, a check's JSON schema rarely 10; Python's stack gives out near 1000

_SHORT = reprlib.Repr()
# at most 4 items per level, 3 levels: 4^3 = 64 leaves looked at, however many a value holds (an alias tree of
# 10^9 leaves quoted with !r took minutes and ~7 GB)
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxtuple, _SHORT.maxdict, _SHORT.maxset = 3, 4, 4, 4, 4
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlong = 60, 60, 40


def short(value, limit: int = 80) -> str:
    """repr(value) cut to about `limit` characters, without building the whole repr first: what every config and
    check message quotes of a user's value."""
    text = _SHORT.repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader without aliases (*name) and nested at most MAX_YAML_DEPTH deep."""
    depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _Refused(f"{{uses}} a YAML alias (*{event.anchor[:40]}) at line {event.start_mark.line + 1}: a "
                           f"config never needs one (a few hundred bytes of aliases can stand for billions of "
                           f"values), so they are refused; write the value out instead.")
        self.depth += 1
        if self.depth > MAX_YAML_DEPTH:
            mark = self.peek_event().start_mark
            raise _Refused(f"{{are}} not valid YAML for the studio: nested more than {MAX_YAML_DEPTH} levels deep "
                           f"at line {mark.line + 1}, column {mark.column + 1}; check the brackets.")
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


class _Refused(Exception):
    pass


def load_yaml(text: str, what: str):
    """The document in `text` (user YAML: a run config, checks), or ValueError with one sentence beginning with
    `what` ("The config", "The checks"): over MAX_YAML_BYTES, not YAML, an alias, too deep."""
    are, uses = ("are", "use") if what.endswith("s") else ("is", "uses")
    if len(text) > MAX_YAML_BYTES:
        raise ValueError(f"{what} {are} {len(text) / 1e6:.1f} MB of text; a config is a few KB, so over "
                         f"{MAX_YAML_BYTES // 1_000_000} MB is refused: choose the right file.")
    loader = _Loader(text)
    try:
        return loader.get_single_data()
    except _Refused as e:
        raise ValueError(f"{what} {str(e).replace('{are}', are).replace('{uses}', uses)}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or "it could not be read"
        raise ValueError(f"{what} {are} not valid YAML{at}: {problem}.") from None
    except RecursionError:  # a belt to MAX_YAML_DEPTH's braces
        raise ValueError(f"{what} {are} not valid YAML for the studio: nested more than {MAX_YAML_DEPTH} levels "
                         "deep; check the brackets.") from None
    finally:
        loader.dispose()
