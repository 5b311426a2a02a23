"""Training (SI 5): the loss of one step on a batch with ground truth; no Ray here.

Ray train workers (foldray.actors.train_worker) call `train_step`; only checkpointing and
reporting are Ray's.
"""

from typing import Any

__all__ = ["lddt", "train_step", "training_sample"]


def __getattr__(name: str) -> Any:
    """The step's functions, imported on first use: `foldray.training.config` (what
    `foldray train --help` needs) then loads without torch."""
    if name in __all__:
        from foldray.training import step

        return getattr(step, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
