"""Which implementation runs an op: the Triton kernel or its PyTorch reference.

The mode comes from, in order: an explicit `use("triton" | "torch")` around a forward pass
(the model applies `RuntimeConfig.kernels` this way), the environment variable
`FOLDRAY_KERNELS=auto|triton|torch`, else "auto". "auto" takes the kernel when the tensors
are on CUDA, triton imports and the shape is supported, and otherwise the reference, logging
the reason once. An explicit "triton" that cannot run raises instead of falling back.
Forcing "triton" on CPU tensors works under TRITON_INTERPRET=1 (how the kernel tests run).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from types import ModuleType
from typing import Any, Literal, TypeVar

import torch
from torch import Tensor

Mode = Literal["auto", "triton", "torch"]
MODES: tuple[str, ...] = ("auto", "triton", "torch")
ENV_VAR = "FOLDRAY_KERNELS"

_mode: ContextVar[str | None] = ContextVar("foldray_kernels_mode", default=None)
_logged: set[str] = set()
log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])


class KernelUnavailable(RuntimeError):
    """`kernels="triton"` was asked for but the Triton kernel cannot run here."""


def mode() -> str:
    """The mode in force now: `use(...)` if not "auto", else $FOLDRAY_KERNELS, else "auto"."""
    chosen = _mode.get()
    if chosen is not None and chosen != "auto":
        return chosen
    env = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if env not in MODES:
        raise ValueError(f"{ENV_VAR}={env!r}: expected one of {MODES}")
    return env


@contextlib.contextmanager
def use(kernels: str | None) -> Iterator[None]:
    """Run the enclosed ops with `kernels` ("auto" | "triton" | "torch"; None keeps the mode)."""
    if kernels is not None and kernels not in MODES:
        raise ValueError(f"kernels={kernels!r}: expected one of {MODES}")
    token = _mode.set(kernels if kernels is not None else _mode.get())
    try:
        yield
    finally:
        _mode.reset(token)


def applies_runtime(method: F) -> F:
    """Decorator for model entry points taking `runtime: RuntimeConfig | None`: runs the call
    under `use(runtime.kernels)`, so the one setting reaches every op inside."""
    signature = inspect.signature(method)

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        runtime = signature.bind_partial(*args, **kwargs).arguments.get("runtime")
        with use(getattr(runtime, "kernels", None)):
            return method(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


@functools.cache
def _triton_module(name: str) -> ModuleType | str:
    """The kernel module `foldray.kernels.<name>`, or why it cannot be imported."""
    try:
        return importlib.import_module(f"foldray.kernels.{name}")
    except Exception as err:  # noqa: BLE001  (any import failure means "no triton here")
        return f"triton unavailable ({type(err).__name__}: {err})"


KERNEL_MODULES = ("attention_triton", "layer_norm_triton", "triangle_multiplication_triton",
                  "ada_layer_norm_triton")


def reset() -> None:
    """Forget imported kernel modules and logged reasons. Triton decides compiled vs
    interpreted when a kernel module is imported, so tests that switch TRITON_INTERPRET
    call this on the way in and out."""
    _triton_module.cache_clear()
    _logged.clear()
    for name in KERNEL_MODULES:
        sys.modules.pop(f"foldray.kernels.{name}", None)


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def autocast_operands(*tensors: Tensor) -> tuple[Tensor, ...]:
    """`tensors` in autocast's dtype when autocast is on for their device, else unchanged.

    A kernel takes one dtype, but under bf16 autocast the model hands it bf16 activations
    with fp32 parameters (and LayerNorm outputs in fp32): without this cast every fused op
    fell back to PyTorch in exactly the mixed-precision runs the kernels exist for (seen on
    an H200). Casting like autocast casts a matmul's operands keeps the numerics autocast
    would give; `.to` is differentiable, so gradients still reach fp32 parameters.
    """
    device_type = tensors[0].device.type
    if not torch.is_autocast_enabled(device_type):
        return tensors
    dtype = torch.get_autocast_dtype(device_type)
    return tuple(t.to(dtype) if t.is_floating_point() else t for t in tensors)


def kernel_for(op: str, module: str, tensors: list[Tensor], unsupported: str | None = None
               ) -> ModuleType | None:
    """The Triton module to run `op` with, or None for the reference.

    `unsupported` is the caller's reason the shape/dtype cannot use the kernel (None = fine).
    """
    chosen = mode()
    if chosen == "torch":
        return None
    reason = unsupported
    if reason is None:
        on_cuda = all(t.is_cuda for t in tensors)
        if not on_cuda and not (chosen == "triton" and interpreting()):
            reason = "tensors are not on CUDA"
    if reason is None:
        found = _triton_module(module)
        if isinstance(found, ModuleType):
            return found
        reason = found
    if chosen == "triton":
        raise KernelUnavailable(f"kernels='triton' but {op} cannot use it: {reason}")
    if op + reason not in _logged:
        _logged.add(op + reason)
        log.info("foldray.kernels.%s: using the PyTorch reference (%s)", op, reason)
    return None
