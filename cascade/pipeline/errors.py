"""The pipeline's own error: a stage that cannot run as asked."""


class StageError(RuntimeError):
    """A stage cannot run as asked; the message says why and what to do, in one line."""
