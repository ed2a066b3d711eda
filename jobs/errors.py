"""The orchestrator's user-facing error type (one line; the CLI prints it and exits 2)."""


class SpecError(ValueError):
    """A user mistake in an experiment spec; the message is one line."""
