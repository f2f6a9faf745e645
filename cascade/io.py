"""Atomic file writes: a reader (or a killed run) never sees a half-written output."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(target: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; it replaces ``target`` if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # keep the real suffix(es) so writers that infer the format from the name (nibabel) still work
    handle, temporary = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.", suffix="".join(target.suffixes)
    )
    os.close(handle)
    temporary = Path(temporary)
    # mkstemp creates 0600; outputs get the permissions a plain open() would give them
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)
    try:
        yield temporary
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def write_text_atomic(target: Path | str, text: str) -> None:
    with atomic_path(target) as temporary:
        temporary.write_text(text)
