"""What data-parallel training needs around `train_step`: a module whose forward *is* the
step, and the choice of trainable parameters for fine-tuning.

Why `TrainStepModule`: DistributedDataParallel all-reduces gradients only for backward
passes that follow a call of the wrapper's own `forward` (its reducer is armed there).
`train_step` calls `run_trunk`, `diffusion_module`, `sample` ... directly, so wrapping the
bare AlphaFold3 in DDP would train every rank on its own gradients without an error. Wrapping
this module instead runs the whole step inside DDP's forward. Parameters that a step does not
use (the template embedder when a batch has no templates, frozen or zero-weighted heads) need
DDP's `find_unused_parameters=True`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from foldray.model.alphafold3 import AlphaFold3
from foldray.model.config import LossConfig, RuntimeConfig
from foldray.training.step import TrainBatch, train_step

# Top-level modules that are not the trunk (SI 3.1 Fig. 1): what `freeze_trunk` keeps training.
NON_TRUNK_MODULES = ("diffusion_module", "confidence_head", "distogram_head")


class TrainStepModule(nn.Module):
    """forward(batch, generator) = foldray.training.train_step(model, batch, ...)."""

    def __init__(self, model: AlphaFold3, *, runtime: RuntimeConfig, loss: LossConfig,
                 diffusion_batch: int, n_cycle: int | None = None, msa_rows: int | None = None) -> None:
        super().__init__()
        self.model = model
        self.runtime, self.loss, self.diffusion_batch = runtime, loss, diffusion_batch
        self.n_cycle, self.msa_rows = n_cycle, msa_rows

    def forward(self, batch: TrainBatch, generator: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        return train_step(self.model, batch, generator=generator, runtime=self.runtime,
                          n_cycle=self.n_cycle, diffusion_batch=self.diffusion_batch,
                          msa_rows=self.msa_rows, loss=self.loss)


def select_trainable(model: nn.Module, *, freeze_trunk: bool = False,
                     train_modules: Sequence[str] = ()) -> list[nn.Parameter]:
    """Set requires_grad per top-level module and return the trainable parameters.

    Default: everything. `freeze_trunk`: only NON_TRUNK_MODULES. `train_modules`: only the
    named top-level modules (e.g. ("confidence_head",) for a PAE / confidence fine-tune).
    """
    names = dict(model.named_children())
    if train_modules:
        unknown = sorted(set(train_modules) - set(names))
        if unknown:
            raise ValueError(f"finetune.train_modules: no modules {unknown}; the model has {sorted(names)}")
        keep = set(train_modules)
    elif freeze_trunk:
        keep = set(NON_TRUNK_MODULES)
    else:
        keep = set(names)
    for name, child in names.items():
        child.requires_grad_(name in keep)
    for param in model.parameters(recurse=False):     # parameters outside any child
        param.requires_grad_(not (train_modules or freeze_trunk))
    return [p for p in model.parameters() if p.requires_grad]
