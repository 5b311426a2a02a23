"""Reference checkpoints of any depth and width import: the config is read from the checkpoint.

The fixtures (tests/fixtures/import_shapes/*.json, written by
benchmarks/equivalence/variant_shapes.py inside the openfold3 0.5.0 / protenix 2.0.0 venvs from
the references' own config code) hold each published variant's tensor names and shapes. The
tests rebuild a checkpoint of exactly those names and shapes, saved as the reference saves
its own (torch zip), and import it: small variants with random weights through
`foldray import-weights` and then `foldray predict`; full-size ones as zero views of one
buffer (full names and shapes at the memory of the largest tensor) through the converter,
which checks every name and shape against the inferred config.
"""

import functools
import json
from pathlib import Path

import pytest

from foldray.io.import_weights import ImportMismatch, convert, import_checkpoint
from foldray.io.infer_config import infer_config
from foldray.io.weights import WeightsError, load_weights
from foldray.jobs.cli import main
from foldray.model.config import ModelConfig
from tests.data_paths import INPUTS, REPO
from tests.import_shapes import load_fixture, random_state, save_reference_checkpoint

SHAPES = REPO / "tests" / "fixtures" / "import_shapes"
# What each variant must come out as (sizes the shapes show, and presets recognised).
EXPECTED = {
    "openfold3_full": dict(matches="full-openfold3"),
    "openfold3_small": dict(c_s=32, c_z=16, c_s_inputs=89, atom=(24, 8, 1, None, 2),
                            pairformer=(1, 4, 8, 2, 4), msa=(1, 8), template=(1, 8),
                            diffusion=(1, 32, 4), confidence=1),
    "protenix_base_default_v1.0.0": dict(matches="full-protenix"),
    "protenix_base_20250630_v1.0.0": dict(matches="full-protenix"),
    "protenix-v2": dict(c_s=384, c_z=256, pairformer=(48, 16, 256, 8, 32), msa=(4, 128),
                        template=(2, 64), n_cycle=10),
    "protenix_mini_default_v0.5.0": dict(pairformer=(16, 16, 128, 4, 32), atom=(128, 16, 1, 3, 4),
                                         msa=(1, 64), diffusion=(8, 768, 16), n_cycle=4, n_step=5,
                                         matches="protenix_mini_default_v0.5.0 sizes"),
    "protenix_tiny_default_v0.5.0": dict(pairformer=(8, 16, 128, 4, 32), atom=(128, 16, 1, 3, 4),
                                         msa=(1, 64), diffusion=(8, 768, 16), n_cycle=4, n_step=5,
                                         matches="protenix_tiny_default_v0.5.0 sizes"),
}
REFUSED = {"protenix_base_constraint_v0.5.0": "ESM"}   # its constraint embedder imports (restraints)


@functools.cache
def fixture(name: str) -> dict:
    return load_fixture(SHAPES / f"{name}.json")


def check_sizes(config: ModelConfig, matches: str, expected: dict) -> None:
    for key, value in expected.items():
        if key == "matches":
            assert matches == value
        elif key == "atom":
            a = config.atom
            assert (a.c_atom, a.c_atompair, a.n_block, a.n_block_input, a.n_head) == value
        elif key == "pairformer":
            p = config.pairformer
            assert (p.n_block, p.n_head, p.c_hidden_mul, p.n_head_tri, p.c_hidden_tri_att) == value
        elif key == "msa":
            assert (config.msa.n_block, config.msa.c_m) == value
        elif key == "template":
            assert (config.template.n_block, config.template.c_t) == value
        elif key == "diffusion":
            d = config.diffusion
            assert (d.n_block, d.c_token, d.n_head) == value
        elif key == "confidence":
            assert config.confidence.n_block == value
        elif key == "n_step":
            assert config.diffusion.n_step == value
        else:
            assert getattr(config, key) == value, key


def test_every_published_variant_has_a_fixture():
    assert {p.stem for p in SHAPES.glob("*.json")} == set(EXPECTED) | set(REFUSED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_full_size_names_and_shapes_import(name):
    """Every tensor of the variant maps onto foldray's model of the inferred config, shapes
    included (convert raises ImportMismatch otherwise)."""
    data = fixture(name)
    ref = random_state(data, shared_buffer=True)
    config, matches = infer_config(data["reference"], ref)
    check_sizes(config, matches, EXPECTED[name])
    state = convert(data["reference"], ref, config)
    assert state and config.to_dict() == ModelConfig.from_dict(config.to_dict()).to_dict()


@pytest.mark.parametrize("name, what", sorted(REFUSED.items()))
def test_unsupported_modules_are_refused_by_name(name, what, tmp_path):
    data = fixture(name)
    ref = random_state(data, shared_buffer=True)
    with pytest.raises(WeightsError, match=what) as err:
        infer_config(data["reference"], ref)
    assert len(str(err.value)) < 400
    with pytest.raises(WeightsError, match=what):      # a forced config does not get past it
        convert(data["reference"], ref, ModelConfig.full_protenix())


@pytest.mark.parametrize("name", ["openfold3_small", "protenix_tiny_default_v0.5.0",
                                  "protenix_mini_default_v0.5.0"])
def test_random_checkpoint_imports_and_predicts(name, tmp_path, capsys):
    """A random-weight checkpoint of the variant, saved as the reference saves its own,
    imports with no --config and predicts with the imported checkpoint."""
    data = fixture(name)
    src, dst = tmp_path / f"{name}.pt", tmp_path / f"{name}.safetensors"
    save_reference_checkpoint(data["reference"], random_state(data, seed=1), src)
    assert main(["import-weights", "--from", data["reference"], str(src), "--out", str(dst)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["config"].startswith("inferred")
    src.unlink()
    _, config = load_weights(str(dst))
    check_sizes(config, summary["config"].removeprefix("inferred (").removesuffix(")"), EXPECTED[name])
    out = tmp_path / "out"
    assert main(["predict", str(INPUTS / "tiny_protein_ligand_smiles.json"), "--out", str(out),
                 "--checkpoint", str(dst), "--recycles", "1", "--steps", "2", "--samples", "1",
                 "--quiet"]) == 0
    job = out / "tiny_protein_ligand_smiles"
    assert (job / "tiny_protein_ligand_smiles_model.cif").exists()
    scores = json.loads(Path(job / "tiny_protein_ligand_smiles_summary_confidences.json").read_text())
    assert 0 <= scores["ptm"] <= 1


def test_mismatch_error_is_short_and_verbose_lists_every_tensor(tmp_path, capsys):
    """A full-size Protenix checkpoint forced into the tiny config: thousands of mismatched
    tensors give a few lines (counts, ten names, the sizes); --verbose lists them all. The
    checkpoint file holds zero views of one buffer, so it is a few MB."""
    data = fixture("protenix_base_default_v1.0.0")
    src = tmp_path / "base.pt"
    save_reference_checkpoint("protenix", random_state(data, shared_buffer=True), src)
    assert src.stat().st_size < 20e6
    args = ["import-weights", "--from", "protenix", str(src), "--out", str(tmp_path / "x.safetensors"),
            "--config", "tiny-protenix"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert len(err) < 3000 and err.count("\n") <= 6, err
    assert "missing" in err and "unexpected" in err and "misshaped" in err
    assert "c_s 48, c_z 24" in err and "--verbose" in err
    assert main([*args, "--verbose"]) == 2
    full = capsys.readouterr().err
    with pytest.raises(ImportMismatch) as mismatch:
        import_checkpoint("protenix", str(src), str(tmp_path / "x.safetensors"), "tiny-protenix")
    names = mismatch.value.missing + mismatch.value.unexpected + mismatch.value.misshaped
    assert len(names) > 1000 and all(n in full for n in names)
    assert not (tmp_path / "x.safetensors").exists()


def test_zero_block_template_stack_adds_nothing():
    """Protenix v0.5 (mini, tiny) has 0 template blocks, which it runs as "templates off":
    the imported model must add nothing for a job that has templates."""
    import dataclasses

    import torch

    from foldray.model.templates import TemplateEmbedder

    embedder = TemplateEmbedder(24, dataclasses.replace(ModelConfig.tiny().template, n_block=0))
    z = torch.randn(1, 5, 5, 24)
    update = embedder({"template_mask": torch.ones(1, 2)}, z, torch.ones(1, 5))
    assert torch.equal(update, torch.zeros_like(z))
