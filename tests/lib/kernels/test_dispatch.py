"""Which implementation runs: auto picks torch on CPU; FOLDRAY_KERNELS and RuntimeConfig force."""

from __future__ import annotations

import pytest
import torch

from foldray import kernels
from foldray.kernels import dispatch
from foldray.model.config import RuntimeConfig


def _inputs():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(2, 9, 16, generator=g) for _ in range(3)]


def test_auto_uses_the_reference_on_cpu():
    q, k, v = _inputs()
    assert dispatch.mode() == "auto"
    assert dispatch.kernel_for("attention", "attention_triton", [q, k, v]) is None
    assert torch.equal(kernels.attention(q, k, v), kernels.attention_reference(q, k, v))


def test_environment_variable_forces_either(monkeypatch):
    q, k, v = _inputs()
    monkeypatch.setenv(dispatch.ENV_VAR, "triton")
    assert dispatch.kernel_for("attention", "attention_triton", [q, k, v]).__name__ \
        == "foldray.kernels.attention_triton"
    with kernels.use("torch"):          # an explicit setting beats the environment
        assert dispatch.kernel_for("attention", "attention_triton", [q, k, v]) is None
    monkeypatch.setenv(dispatch.ENV_VAR, "torch")
    assert dispatch.kernel_for("layer_norm", "layer_norm_triton", [q]) is None
    monkeypatch.setenv(dispatch.ENV_VAR, "cuda")
    with pytest.raises(ValueError, match="FOLDRAY_KERNELS"):
        dispatch.mode()


def test_forced_triton_that_cannot_run_raises(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")      # CPU tensors and no interpreter: no kernel
    q, k, v = _inputs()
    with kernels.use("triton"), pytest.raises(dispatch.KernelUnavailable, match="not on CUDA"):
        kernels.attention(q, k, v)
    with kernels.use("auto"):                   # auto falls back quietly instead
        kernels.attention(q, k, v)


def test_runtime_config_reaches_the_ops_inside_a_model_call(monkeypatch):
    """`applies_runtime` (on AlphaFold3.run_trunk/sample/confidence/predict) sets the mode."""
    seen = []

    class Model:
        @kernels.applies_runtime
        def run(self, x, *, runtime: RuntimeConfig | None = None):
            seen.append(dispatch.mode())
            return x

    monkeypatch.setenv(dispatch.ENV_VAR, "torch")
    Model().run(1, runtime=RuntimeConfig(kernels="triton"))
    Model().run(1, runtime=RuntimeConfig())                 # "auto": the environment decides
    Model().run(1)
    assert seen == ["triton", "torch", "torch"]
    assert dispatch.mode() == "torch"


def test_alphafold3_run_trunk_applies_runtime_kernels(monkeypatch):
    from foldray.model.alphafold3 import AlphaFold3
    from foldray.model.config import ModelConfig

    monkeypatch.delenv("TRITON_INTERPRET")
    model = AlphaFold3(ModelConfig.tiny())
    # forced triton on CPU without the interpreter must reach the first op and raise there
    with pytest.raises(dispatch.KernelUnavailable):
        model.run_trunk(_tiny_features(), runtime=RuntimeConfig(kernels="triton"))


def _tiny_features():
    from foldray.features.batch import collate
    from tests.model_helpers import featurized_inputs

    name = "tiny_protein_ligand_smiles.json"
    return collate([featurized_inputs(name)[name]], token_buckets=None, atom_buckets=None)


# fp16 stands in for bf16 here: the Triton interpreter computes through NumPy, which has no
# bfloat16 (bf16 under the interpreter is garbage); compiled on a GPU both run (kernels.py).
HALF = torch.float16


def test_fused_ops_take_autocast_mixed_dtypes_on_the_kernel_path():
    """Under bf16/fp16 autocast the model hands the kernels bf16 activations and fp32 parameters.
    Before `autocast_operands`, kernels="triton" raised here (and "auto" fell back on every
    fused op of a bf16 run on an H200); now each op runs the kernel and agrees with the
    PyTorch reference under the same autocast."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, 6, 16, generator=g).to(HALF)       # an activation
    w_gate, w_proj = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)   # fp32 params
    z32 = torch.randn(2, 6, 6, 16, generator=g)                         # a LayerNorm output (fp32)
    a32, s = torch.randn(2, 5, 12, generator=g), torch.randn(2, 5, 6, generator=g).to(HALF)
    ada_weights = (torch.ones(6), torch.zeros(6), torch.randn(12, 6, generator=g), torch.zeros(12),
                   torch.randn(12, 6, generator=g), None)
    q = torch.randn(1, 2, 5, 8, generator=g).to(HALF)
    k32, v32 = torch.randn(1, 2, 5, 8, generator=g), torch.randn(1, 2, 5, 8, generator=g)
    ops = {
        "gated_linear": lambda: kernels.gated_linear(x, w_gate, w_proj, None, -3),
        "gated_norm_linear": lambda: kernels.gated_norm_linear(x[..., :8], z32, None, None,
                                                               torch.randn(16, 8, generator=g),
                                                               torch.randn(16, 16, generator=g)),
        "ada_layer_norm": lambda: kernels.ada_layer_norm(a32, s, *ada_weights),
        "attention": lambda: kernels.attention(q, k32, v32),
    }
    for name, op in ops.items():
        results = {}
        for mode in ("torch", "triton"):
            g.manual_seed(1)
            with torch.autocast("cpu", dtype=HALF), kernels.use(mode):
                results[mode] = op().float()
        torch.testing.assert_close(results["triton"], results["torch"], rtol=3e-2, atol=3e-2,
                                   msg=lambda m, name=name: f"{name}: {m}")
