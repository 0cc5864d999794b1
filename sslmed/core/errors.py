"""The error types a user can see.

Every error that reaches the command line is a :class:`SslmedError`. The CLI prints
its message as one line (no traceback unless ``--verbose``) and exits with
``exit_code``: 2 for a problem with what the user asked (recipe, names, options),
1 for a problem met while running (data, checkpoints, training), and 128 plus the
signal's number for a run stopped by a signal (130 for Ctrl-C, 143 for SIGTERM).
"""

from __future__ import annotations

#: a RecipeError's message lists at most this many problems (all are in ``problems``)
MAX_SHOWN_PROBLEMS = 20


class SslmedError(Exception):
    """Base class of every error sslmed reports to a user."""

    exit_code = 1


class UsageError(SslmedError):
    """The request itself is wrong: a bad recipe, an unknown name, a bad option."""

    exit_code = 2


class RecipeError(UsageError):
    """A recipe failed validation; ``problems`` lists every problem found at once."""

    def __init__(self, problems: list[str], source: str | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        head = f"{source}: " if source else ""
        count = len(self.problems)
        summary = f"{head}{count} problem{'s' if count != 1 else ''} in recipe"
        shown = self.problems[:MAX_SHOWN_PROBLEMS]  # a file that is not a recipe is not echoed whole
        more = len(self.problems) - len(shown)
        lines = [f"  {p}" for p in shown] + ([f"  ... and {more} more"] if more else [])
        super().__init__(summary + ":\n" + "\n".join(lines))


class UnknownComponentError(UsageError):
    """A component name that no loaded plugin registered."""


class DuplicateComponentError(SslmedError):
    """Two plugins registered a component of the same kind under the same name."""


class PluginError(SslmedError):
    """A plugin failed to load or to register its components."""


class DataError(SslmedError):
    """Data could not be found or read: a missing path, a bad CSV, an unreadable image."""


class ImageLoadError(DataError):
    """One image file could not be decoded; the message names the file and the reason."""


class CheckpointError(SslmedError):
    """A checkpoint or exported model is missing, corrupt, or from another model."""


class TrainingDiverged(SslmedError):
    """The loss or a gradient stopped being finite; training stopped there, before the
    weights were changed by it, and nothing of the step was exported."""


class RunInterrupted(SslmedError):
    """Training was stopped by a signal (Ctrl-C, SIGTERM from a scheduler); the step is
    not marked done and ``sslmed run ... --resume`` continues it."""

    def __init__(self, message: str, signal_number: int) -> None:
        super().__init__(message)
        self.signal_number = signal_number
        self.exit_code = 128 + signal_number  # the shell's convention for a signal's death
