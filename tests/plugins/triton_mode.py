"""TRITON_INTERPRET=1 for the whole test session, set when this plugin is imported.

Why session-wide and not scoped to tests/lib/kernels: Triton fixes "compiled" or
"interpreted" for its own standard library (tl.zeros, tl.sum, ...) when triton.language is
first imported, and it cannot be switched later in the process. Any earlier test that runs
``torch.compile`` (tests/lib/model/test_compile.py and others; inductor imports
triton.language even for CPU code) fixes it first, and the interpreted kernels then fail
inside those helpers. So the mode is decided here, the first plugin tests/conftest.py
registers, before any test module is imported. Model code only runs interpreted kernels
when kernels='triton' is forced on CPU tensors; the rest of the suite is unaffected.
``setdefault``: an explicit TRITON_INTERPRET from the caller wins (the kernel tests then
fail with a message saying so, see tests/lib/kernels/conftest.py).
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
