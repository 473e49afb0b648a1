"""One error hierarchy; `cli.main` maps each to a one-line message and an exit status.

Exit statuses (a documented contract, see README):
  0  every row ok
  1  the run failed while running (model does not fit, crash)
  2  usage error, or an input file refused before any work
  3  finished, but some rows were rejected, errored or missed their deadline
  130 interrupted by SIGINT/SIGTERM after writing what was done (resume with --resume)
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3
EXIT_INTERRUPTED = 130


class UellmError(Exception):
    """An error meant for the user: one line, plus an optional hint."""

    exit_code = EXIT_FAILED
    code = "error"

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


class InputError(UellmError):
    """A job file that cannot be used at all (unreadable, empty, wrong format)."""

    exit_code = EXIT_USAGE
    code = "input"


class ConfigError(UellmError):
    """Options that contradict each other or name something that does not exist."""

    exit_code = EXIT_USAGE
    code = "config"


class ModelNotFoundError(UellmError):
    """A --model that is neither a folder, a .gguf file nor an alias with local weights."""

    exit_code = EXIT_USAGE
    code = "model_not_found"


class DoesNotFitError(UellmError):
    """The model (plus the KV reserve) fits on no device or device set."""

    exit_code = EXIT_FAILED
    code = "does_not_fit"


class ResumeMismatchError(UellmError):
    """--out holds a run of another input or other options."""

    exit_code = EXIT_USAGE
    code = "resume_mismatch"


class LockedError(UellmError):
    """Another live `uellm run` writes into the same --out."""

    exit_code = EXIT_USAGE
    code = "locked"


class ReplicasLostError(UellmError):
    """Every replica of a distributed run died (restarts used up) with rows still to run."""

    exit_code = EXIT_FAILED
    code = "replicas_lost"


class MissingExtraError(UellmError):
    """An optional dependency is not installed."""

    exit_code = EXIT_USAGE
    code = "missing_extra"

    @classmethod
    def unless_installed(cls, module: str, message: str) -> None:
        """Raise it with `message` when `module` cannot be imported; finds it without importing
        it (vLLM and Ray take seconds to import)."""
        import importlib.util

        try:
            missing = importlib.util.find_spec(module) is None
        except ValueError:  # sys.modules[module] is None: imports of it are blocked
            missing = True
        if missing:
            raise cls(message)
