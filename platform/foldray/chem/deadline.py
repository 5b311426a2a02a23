"""A wall-clock limit on one job's featurization, honoured by conformer generation.

    with featurization_deadline(120):
        featurized = featurize_job(job)

RDKit embedding is the one unbounded CPU cost of featurizing a job (a large flexible
ligand can take minutes), so `conformer.embed` reads the deadline: it does not start an
embedding after it, and kills an embedding child process when it passes. `check_deadline()`
is there for any other long step to call. Past the deadline an `InputError`
("featurization exceeded 120 s ...") is raised; the tokenizer adds the job and the field
of the entity being built. Nothing is cached from a job that ran out of time.

The deadline lives in a context variable: each thread and asyncio task has its own, and
code outside a `featurization_deadline` block has none. Nested blocks keep the earlier
deadline.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from foldray.errors import InputError


@dataclass(frozen=True)
class Deadline:
    at: float          # time.monotonic() value
    seconds: float     # the limit as given, for the message

    def remaining(self) -> float:
        return self.at - time.monotonic()

    def error(self) -> InputError:
        return InputError(f"featurization exceeded {self.seconds:g} s (the per-job time limit)")


_current: contextvars.ContextVar[Deadline | None] = contextvars.ContextVar(
    "foldray_featurization_deadline", default=None)


@contextmanager
def featurization_deadline(seconds: float | None) -> Iterator[Deadline | None]:
    """Limit the featurization inside the block to `seconds` (None: no limit)."""
    if seconds is None:
        yield _current.get()
        return
    if seconds <= 0:
        raise ValueError(f"seconds must be > 0 or None, got {seconds}")
    new = Deadline(time.monotonic() + seconds, seconds)
    outer = _current.get()
    token = _current.set(outer if outer is not None and outer.at <= new.at else new)
    try:
        yield _current.get()
    finally:
        _current.reset(token)


def current() -> Deadline | None:
    return _current.get()


def remaining() -> float | None:
    """Seconds left (may be <= 0), or None outside any deadline."""
    deadline = _current.get()
    return None if deadline is None else deadline.remaining()


def check_deadline() -> None:
    """Raise the deadline's InputError if it has passed."""
    deadline = _current.get()
    if deadline is not None and deadline.remaining() <= 0:
        raise deadline.error()
