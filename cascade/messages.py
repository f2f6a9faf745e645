"""One line per message: Lightning's log records go through the run's logging (Hydra's console
and the job's log file, ``<run>/train.log``) instead of Lightning's own console handler as well,
its advertisements are dropped, and Python warnings land in the log file too."""

from __future__ import annotations

import logging
import sys

# Lightning's package loggers: importing `lightning` gives "lightning" a console handler of its
# own, and "lightning.pytorch" / "lightning.fabric" one each when nothing is configured yet
_LIGHTNING_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric")
# how Lightning's tips for its cloud products begin
_ADVERTISEMENT_MARK = "💡"


class _WithoutAdvertisements(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_ADVERTISEMENT_MARK)


class _CurrentStdout:
    """Writes to whatever `sys.stdout` is at the time: a progress bar in a terminal (Rich's live
    display) swaps in a proxy that prints above the bar, so log lines do not tear it."""

    def write(self, text: str) -> int:
        return sys.stdout.write(text)

    def flush(self) -> None:
        sys.stdout.flush()


def route_messages() -> None:
    """Send Lightning's records through the root logger's handlers only; call once logging is
    configured (Hydra does it before the job) and after `lightning` is imported."""
    import lightning  # noqa: F401  (its import adds the handlers removed here)

    for name in _LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.propagate = True
    for handler in logging.getLogger().handlers:
        handler.addFilter(_WithoutAdvertisements())
        stdout = isinstance(handler, logging.StreamHandler) and handler.stream in (
            sys.stdout,
            sys.__stdout__,
        )
        if stdout:
            handler.setStream(_CurrentStdout())
    logging.captureWarnings(True)
