"""Compute kernels behind stable functions. Model code calls `foldray.kernels.<op>` and never
imports triton; each op has a PyTorch reference that always works (CPU included)."""

from foldray.kernels.attention import attention, mask_to_bias

__all__ = ["attention", "mask_to_bias"]
