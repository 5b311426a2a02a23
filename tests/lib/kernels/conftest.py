"""Run the Triton kernels on CPU with the interpreter, for this folder's tests only.

Triton picks "compiled" or "interpreted" when a kernel module is imported, so the fixture
sets TRITON_INTERPRET=1 and drops the kernel modules on the way in and on the way out: other
test modules in the same pytest process see neither the variable nor interpreted kernels.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from foldray.kernels import dispatch


@pytest.fixture(autouse=True)
def triton_interpreter(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    dispatch.reset()
    yield
    monkeypatch.undo()
    dispatch.reset()
