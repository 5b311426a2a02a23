"""Run the Triton kernels on CPU with the interpreter.

tests/plugins/triton_mode.py sets TRITON_INTERPRET=1 for the whole session, before anything
imports triton (triton fixes the mode of its own standard library on first import; why it
is not scoped to this folder is written there). This fixture keeps the variable set for
each kernel test, clears FOLDRAY_KERNELS, and drops the kernel modules on the way in and out
so a test that switches modes never sees another test's choice.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest

from foldray.kernels import dispatch


def _triton_imported_compiled() -> bool:
    """True when triton.language was imported without the interpreter (too late to switch)."""
    standard = sys.modules.get("triton.language.standard")
    return standard is not None and type(standard.zeros).__name__ != "InterpretedFunction"


@pytest.fixture(autouse=True)
def triton_interpreter(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    if os.environ.get("TRITON_INTERPRET", "0") in ("", "0") or _triton_imported_compiled():
        pytest.fail("the kernel tests need TRITON_INTERPRET=1 set before triton is first imported "
                    "(tests/plugins/triton_mode.py does this; do not import triton before pytest starts)")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    dispatch.reset()
    yield
    monkeypatch.undo()
    dispatch.reset()
