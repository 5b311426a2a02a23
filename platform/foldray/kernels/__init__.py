"""Compute kernels behind stable functions. Model code calls `foldray.kernels.<op>` and never
imports triton; each op has a PyTorch reference that always works (CPU included), and
`dispatch` picks the Triton kernel on CUDA (see `RuntimeConfig.kernels`, $FOLDRAY_KERNELS)."""

from foldray.kernels.ada_layer_norm import ada_layer_norm, ada_layer_norm_reference
from foldray.kernels.attention import attention, attention_reference, mask_to_bias
from foldray.kernels.dispatch import applies_runtime, use
from foldray.kernels.layer_norm import layer_norm, layer_norm_reference
from foldray.kernels.triangle_multiplication import (
    gated_linear,
    gated_linear_reference,
    gated_norm_linear,
    gated_norm_linear_reference,
)

__all__ = ["ada_layer_norm", "ada_layer_norm_reference", "applies_runtime", "attention",
           "attention_reference", "gated_linear", "gated_linear_reference", "gated_norm_linear",
           "gated_norm_linear_reference", "hide_attention_from_compiler", "layer_norm",
           "layer_norm_reference", "mask_to_bias", "use"]


def hide_attention_from_compiler() -> None:
    """Make torch.compile call `attention` as one opaque op: it already is one fused kernel,
    and tracing it only adds a recompile per mask layout. Done on demand (by
    AlphaFold3.compile_blocks), not at import: importing the compiler costs ~2 s per process."""
    global attention
    if not getattr(attention, "_foldray_opaque", False):
        import torch

        attention = torch.compiler.disable(attention)
        attention._foldray_opaque = True
