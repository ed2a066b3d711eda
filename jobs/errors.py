"""The orchestrator's user-facing error type (one line; the CLI prints it and exits 2)."""


class SpecError(ValueError):
    """A user mistake in an experiment spec; the message is one line."""


class ImageError(SpecError):
    """The image cannot be built, pushed or pinned (no engine, never pushed, bad reference); one line."""
