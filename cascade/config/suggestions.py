"""Suggestions for a mistyped name: the nearest valid one, as messages name it."""

from __future__ import annotations

import difflib
from typing import Any


def did_you_mean(word: str, candidates: Any) -> str:
    close = difflib.get_close_matches(word, [str(name) for name in candidates], n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def unknown_key(full_key: str, valid: Any) -> str:
    """``unknown key a.b.filtres (did you mean a.b.filters?)``: the nearest of `valid`, the keys
    a.b may hold, or (a short list) all of them."""
    parent, _, name = full_key.rpartition(".")
    valid = sorted({str(key) for key in valid})
    close = difflib.get_close_matches(name, valid, n=1)
    if close:
        return f"unknown key {full_key} (did you mean {join_key(parent, close[0])}?)"
    if len(valid) <= _LISTED_AT_MOST:
        return f"unknown key {full_key} (valid keys: {', '.join(valid)})"
    return f"unknown key {full_key}"


_LISTED_AT_MOST = 12


def join_key(parent: str, key: Any) -> str:
    return f"{parent}[{key}]" if isinstance(key, int) else f"{parent}.{key}".lstrip(".")
