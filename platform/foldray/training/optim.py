"""Optimizer, learning-rate schedule and parameter EMA of SI 5.4 / 5.6.

Adam(beta1 0.9, beta2 0.95, eps 1e-8); the LR rises linearly from 0 to 1.8e-3 over the first
1,000 steps, then is multiplied by 0.95 every 50,000 steps; gradients are clipped to a
global norm of 10; inference uses an exponential moving average of the weights (0.999).
`lr_at(step)` is a pure function of the optimizer step, so a resumed run has the LR of the
step it resumes at by construction (the LambdaLR state is saved as well).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from foldray.training.config import OptimizerConfig


def lr_factor(step: int, config: OptimizerConfig) -> float:
    """Multiplier of the base LR for the update made at optimizer step `step` (0-based)."""
    warmup = min(1.0, step / config.warmup_steps) if config.warmup_steps > 0 else 1.0
    return warmup * config.decay_factor ** (step // config.decay_every)


def lr_at(step: int, config: OptimizerConfig) -> float:
    return config.lr * lr_factor(step, config)


def make_optimizer(params: Iterable[nn.Parameter], config: OptimizerConfig
                   ) -> tuple[torch.optim.Adam, torch.optim.lr_scheduler.LambdaLR]:
    """Adam + the SI schedule; call `scheduler.step()` once after every `optimizer.step()`."""
    optimizer = torch.optim.Adam(list(params), lr=config.lr, betas=(config.beta1, config.beta2),
                                 eps=config.eps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, config))
    return optimizer, scheduler


def clip_gradients(params: Iterable[nn.Parameter], max_norm: float | None) -> float:
    """Global-norm clipping (SI 5.4); returns the norm before clipping (inf/nan if so)."""
    params = [p for p in params if p.grad is not None]
    if not params:
        return 0.0
    if max_norm is None:
        norms = torch.stack([p.grad.detach().float().norm() for p in params])
        return float(norms.norm())
    return float(torch.nn.utils.clip_grad_norm_(params, max_norm))


class Ema:
    """Exponential moving average of a model's floating-point parameters and buffers.

    shadow <- decay * shadow + (1 - decay) * value after every optimizer step (SI 5.6, [32]).
    Kept in fp32 on the model's device; `state_dict()` has the model's own key names, so
    the EMA weights load into a fresh model with `load_state_dict` (and predict directly).
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.shadow: dict[str, Tensor] = {k: v.detach().float().clone()
                                          for k, v in model.state_dict().items()
                                          if v.is_floating_point()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for key, value in model.state_dict().items():
            if key in self.shadow:
                self.shadow[key].lerp_(value.detach().float(), 1.0 - self.decay)

    def state_dict(self) -> dict[str, Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        missing = sorted(set(self.shadow) - set(state))
        if missing:
            raise KeyError(f"EMA state lacks {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        for key in self.shadow:
            self.shadow[key].copy_(state[key].float())

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Write the averaged weights into `model` (e.g. a separate evaluation copy)."""
        state = model.state_dict()
        for key, value in self.shadow.items():
            state[key].copy_(value.to(state[key].dtype))
