"""foldray: AlphaFold 3-class structure prediction. The library never imports Ray.

The notebook API is importable from the top level (loaded on first use, so `import
foldray` stays cheap): `foldray.predict`, `foldray.load_prediction`, `foldray.Prediction`,
and `foldray.InputError`, the error bad inputs raise.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["InputError", "Prediction", "__version__", "load_prediction", "predict"]

_LAZY = {"predict": "foldray.api", "load_prediction": "foldray.api", "Prediction": "foldray.api",
         "InputError": "foldray.errors"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'foldray' has no attribute {name!r}")
