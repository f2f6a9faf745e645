"""Atomic file writes: a reader (or a killed run) never sees a half-written output.

Every temporary is a hidden sibling of its target named after the host and process writing it,
so that ``remove_stale_temporaries`` can delete what killed processes left without touching the
files of running ones.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

_TEMPORARY_PREFIX = ".tmp-"


def temporary_sibling(target: Path | str) -> Path:
    """A new hidden name beside `target` that ends in target's name, so writers that infer the
    format from the suffix (nibabel, numpy) still work."""
    target = Path(target)
    writer = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    return target.with_name(f"{_TEMPORARY_PREFIX}{writer}-{target.name}")


@contextlib.contextmanager
def atomic_path(target: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; it replaces ``target`` if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_sibling(target)
    try:
        yield temporary
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def write_text_atomic(target: Path | str, text: str) -> None:
    with atomic_path(target) as temporary:
        temporary.write_text(text)


def remove_stale_temporaries(folder: Path) -> None:
    """Delete the temporaries (files or folders) in `folder` that processes of this host which
    are no longer running left behind."""
    prefix = f"{_TEMPORARY_PREFIX}{socket.gethostname()}-"
    for path in folder.glob(f"{prefix}*"):
        pid = path.name[len(prefix) :].split("-", 1)[0]
        if not pid.isdigit() or _process_alive(int(pid)):
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True
