"""Compute kernels behind stable functions. Model code calls `foldray.kernels.<op>` and never
imports triton; each op has a PyTorch reference that always works (CPU included), and
`dispatch` picks the Triton kernel on CUDA (see `RuntimeConfig.kernels`, $FOLDRAY_KERNELS)."""

from foldray.kernels.attention import attention, attention_reference, mask_to_bias
from foldray.kernels.dispatch import applies_runtime, use
from foldray.kernels.layer_norm import layer_norm, layer_norm_reference

__all__ = ["applies_runtime", "attention", "attention_reference", "layer_norm",
           "layer_norm_reference", "mask_to_bias", "use"]
