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
