"""Training (SI 5): the loss of one step on a batch with ground truth; no Ray here.

Ray train workers (foldray.actors.train_worker) call `train_step`; only checkpointing and
reporting are Ray's.
"""

from foldray.training.step import lddt, train_step, training_sample

__all__ = ["lddt", "train_step", "training_sample"]
