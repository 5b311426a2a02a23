"""The one user-input error type: every problem a user can fix is located for them."""

from __future__ import annotations

from typing import Any


class InputError(ValueError):
    """Bad user input, located well enough to fix without a debugger.

    `source` is the file or URL, `job` the record name, `field` the path in AF3 JSON
    terms (0-based, e.g. ``sequences[2].protein.sequence``) or ``line 14`` for text files.
    """

    # what a parser could still build despite the problem (af3_json.PartialJob: the job
    # without its bad entities), so `foldray validate` can check the rest; not pickled
    partial: Any = None

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
        copy = InputError(self.message, source=self.source or (source or ""),
                          job=self.job or (job or ""), field=field)
        copy.partial = self.partial
        return copy

    def __str__(self) -> str:
        where = [self.source, self.job and f"job {self.job!r}", self.field]
        return ": ".join([part for part in where if part] + [self.message])

    def __reduce__(self):  # keep the location when Ray pickles the error between processes
        return (_rebuild_input_error, (self.message, self.source, self.job, self.field))


MAX_ERRORS_PER_JOB = 20   # problems of one job `foldray validate` lists; the rest are counted


class InputErrors(InputError):
    """Several problems of one job, found in one pass (`foldray validate` prints each).

    It reads as its first problem, so one-line reporters (predict, batch result rows) are
    unchanged; the message says how many more there are. `errors` holds at most
    MAX_ERRORS_PER_JOB, `more` counts the rest. Made by `combine_errors`.
    """

    def __init__(self, errors: list[InputError], *, more: int = 0, partial: Any = None) -> None:
        if not errors:
            raise ValueError("InputErrors needs at least one error")
        first, extra = errors[0], len(errors) - 1 + more
        message = first.message + (f" (and {extra} more problem{'s' if extra > 1 else ''}: "
                                   "`foldray validate` lists them)" if extra else "")
        super().__init__(message, source=first.source, job=first.job, field=first.field)
        self.errors, self.more, self.partial = list(errors), more, partial

    def located(self, *, source: str | None = None, job: str | None = None,
                field_prefix: str | None = None) -> InputErrors:
        return InputErrors([err.located(source=source, job=job, field_prefix=field_prefix)
                            for err in self.errors], more=self.more, partial=self.partial)

    def __reduce__(self):
        return (_rebuild_input_errors, (self.errors, self.more))


def combine_errors(errors: list[InputError], *, partial: Any = None) -> InputError:
    """One error for a job's problems: the error itself when there is one, else an
    InputErrors (nested ones unpacked, cut to MAX_ERRORS_PER_JOB)."""
    flat: list[InputError] = []
    more = 0
    for err in errors:
        if isinstance(err, InputErrors):
            flat.extend(err.errors)
            more += err.more
        else:
            flat.append(err)
    more += max(0, len(flat) - MAX_ERRORS_PER_JOB)
    if len(flat) == 1 and not more:
        flat[0].partial = partial if partial is not None else flat[0].partial
        return flat[0]
    return InputErrors(flat[:MAX_ERRORS_PER_JOB], more=more, partial=partial)


def _rebuild_input_errors(errors: list[InputError], more: int) -> InputErrors:
    return InputErrors(errors, more=more)


def all_errors(err: InputError) -> list[InputError]:
    """Every problem an error carries: an InputErrors' list, else the error itself."""
    return list(err.errors) if isinstance(err, InputErrors) else [err]


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
