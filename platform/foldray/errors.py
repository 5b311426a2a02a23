"""The one user-input error type: every problem a user can fix is located for them."""

from __future__ import annotations


class InputError(ValueError):
    """Bad user input, located well enough to fix without a debugger.

    `source` is the file or URL, `job` the record name, `field` the path in AF3 JSON
    terms (0-based, e.g. ``sequences[2].protein.sequence``) or ``line 14`` for text files.
    """

    def __init__(self, message: str, *, source: str = "", job: str = "", field: str = "") -> None:
        super().__init__(message)
        self.message, self.source, self.job, self.field = message, source, job, field

    def located(self, *, source: str | None = None, job: str | None = None,
                field_prefix: str | None = None) -> InputError:
        """A copy with missing location parts filled in by an outer caller."""
        field = self.field
        if field_prefix and field.startswith("line "):   # a line inside an embedded file
            field = f"{field_prefix} ({field})"
        elif field_prefix:
            field = f"{field_prefix}.{field}" if field else field_prefix
        return InputError(self.message, source=self.source or (source or ""),
                          job=self.job or (job or ""), field=field)

    def __str__(self) -> str:
        where = [self.source, self.job and f"job {self.job!r}", self.field]
        return ": ".join([part for part in where if part] + [self.message])

    def __reduce__(self):  # keep the location when Ray pickles the error between processes
        return (_rebuild_input_error, (self.message, self.source, self.job, self.field))


def error_line(err: InputError) -> str:
    """`<file>: <job>: <field>: <message>`, '-' for a part not known: the report line of
    `foldray validate` (after "error: "), also stored in batch results tables."""
    return ": ".join([err.source or "-", err.job or "-", err.field or "-", err.message])


def _rebuild_input_error(message: str, source: str, job: str, field: str) -> InputError:
    return InputError(message, source=source, job=job, field=field)


MAX_MESSAGE_CHARS = 300   # of an unexpected exception's message shown to a user or stored


def short_message(err: BaseException) -> str:
    """`ExceptionClass: first line of its message`, bounded: what a user is told about an
    unexpected exception (never a traceback, never a whole file); the traceback goes to
    the log. A Ray task error is reported as the exception that caused it."""
    cause = getattr(err, "cause", None)
    if isinstance(cause, BaseException):
        err = cause
    lines = str(err).strip().splitlines()
    text = lines[0].strip() if lines else ""
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[:MAX_MESSAGE_CHARS] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def error_summary(err: BaseException) -> str:
    """An InputError's located line, anything else as `short_message`."""
    cause = getattr(err, "cause", None)
    if isinstance(cause, BaseException):
        err = cause
    return error_line(err) if isinstance(err, InputError) else short_message(err)
