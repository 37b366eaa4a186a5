"""User-level errors: which exceptions are the user's to fix, and how they are logged.

A user-level error (bad input, missing weights, a cancelled job, out of memory after the
retries) already says what went wrong and what to do in its message, so the CLI, the
app and the server log show that one line; the traceback is only of interest when
debugging and goes to the DEBUG level. Anything else is a bug and keeps its traceback.

    from dynamictrl import errors
    try:
        ...
    except Exception as error:
        errors.log_job_error(log, error, "generate")  # one line, or the full traceback for a bug
"""

import logging
import sys

logger = logging.getLogger("dynamictrl")

_CLI_HANDLER_NAME = "dynamictrl-cli"


def is_user_error(error: BaseException) -> bool:
    """True for errors whose message is the whole story: invalid input and limits
    (ValueError and its subclasses), missing files and weights (FileNotFoundError,
    `WeightsNotFoundError`, `MissingModelsError`), a cancelled job, and running out of
    GPU memory after every memory tier was tried."""
    from .manager import OutOfMemory
    from .studio import Cancelled
    from .weights import DownloadCancelled

    return isinstance(error, (ValueError, FileNotFoundError, Cancelled, DownloadCancelled, OutOfMemory))


def user_message(error: BaseException) -> str:
    """The error's message on one line (class name when it has none)."""
    text = " ".join(str(error).split())
    return text or type(error).__name__


def log_user_error(log: logging.Logger, error: BaseException, what: str | None = None) -> None:
    """One ERROR line with the message; the traceback at DEBUG level only."""
    log.error("%s%s", f"{what}: " if what else "", user_message(error))
    log.debug("Traceback of the error above:", exc_info=(type(error), error, error.__traceback__))


def log_job_error(log: logging.Logger, error: BaseException, what: str | None = None) -> None:
    """For servers and the app: a user-level error as one line (cancelled jobs at INFO:
    nothing failed), anything else with its traceback."""
    from .studio import Cancelled
    from .weights import DownloadCancelled

    if isinstance(error, (Cancelled, DownloadCancelled)):
        log.info("%scancelled", f"{what}: " if what else "")
        log.debug("Where it was cancelled:", exc_info=(type(error), error, error.__traceback__))
    elif is_user_error(error):
        log_user_error(log, error, what)
    else:
        log.error(
            "%s%s", f"{what}: " if what else "", user_message(error), exc_info=(type(error), error, error.__traceback__)
        )


class _CurrentStderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is at the time (tests and tools swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


class _LevelPrefixFormatter(logging.Formatter):
    """`error: message`, `warning: message`, as command line tools print them."""

    def format(self, record: logging.LogRecord) -> str:
        record.levelprefix = record.levelname.lower()
        return super().format(record)


def configure_cli_logging(debug: bool = False) -> None:
    """Messages of the `dynamictrl` loggers on stderr: warnings and errors, plus DEBUG
    (and so the tracebacks of user-level errors) with `--debug`. Idempotent."""
    handler = next((h for h in logger.handlers if h.get_name() == _CLI_HANDLER_NAME), None)
    if handler is None:
        handler = _CurrentStderrHandler()
        handler.set_name(_CLI_HANDLER_NAME)
        handler.setFormatter(_LevelPrefixFormatter("%(levelprefix)s: %(message)s"))
        logger.addHandler(handler)
    handler.setLevel(logging.DEBUG if debug else logging.WARNING)
    if debug:
        logger.setLevel(logging.DEBUG)
