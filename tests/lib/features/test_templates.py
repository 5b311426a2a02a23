"""Template features from user-given mmCIF templates (AF3 JSON `templates`, Table 5)."""

from __future__ import annotations

import json

import gemmi
import numpy as np
import pytest

from foldray.errors import InputError
from foldray.features.pipeline import featurize_job
from foldray.features.templates import DISTOGRAM_LOWER, template_features
from foldray.features.tokenize import tokenize
from foldray.inputs.af3_json import parse_af3_json
from tests.data_paths import STRUCTURES

UBQ = STRUCTURES / "1ubq.cif"


def _ubiquitin_sequence() -> str:
    st = gemmi.read_structure(str(UBQ))
    st.setup_entities()
    return gemmi.one_letter_code([r.name for r in st[0]["A"].get_polymer()])


def _moved_mmcif(seed: int) -> str:
    """1ubq rigidly rotated and shifted: template features must not change."""
    st = gemmi.read_structure(str(UBQ))
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q *= np.sign(np.linalg.det(q))
    tr = gemmi.Transform(gemmi.Mat33(q.tolist()), gemmi.Vec3(5.0, -3.0, 40.0))
    for model in st:
        model.transform_pos_and_adp(tr)
    st.setup_entities()
    return st.make_mmcif_document().as_string()


def _job(templates: list[dict], copies: tuple[str, ...] = ("A",)):
    body = {"dialect": "alphafold3", "version": 2, "name": "ubq", "modelSeeds": [1],
            "sequences": [{"protein": {"id": list(copies), "sequence": _ubiquitin_sequence(),
                                       "templates": templates, "unpairedMsa": "", "pairedMsa": ""}}]}
    return parse_af3_json(json.dumps(body), source="ubq.json")[0]


def _template(mmcif: str, query: list[int], target: list[int]) -> dict:
    return {"mmcif": mmcif, "queryIndices": query, "templateIndices": target}


def test_features_follow_the_template_geometry_and_ignore_its_frame():
    n = len(_ubiquitin_sequence())
    full = list(range(n))
    job = _job([_template(UBQ.read_text(), full, full)])
    f = template_features(job, tokenize(job))
    moved = template_features(_job([_template(_moved_mmcif(1), full, full)]), tokenize(job))
    for name in f:
        np.testing.assert_allclose(f[name], moved[name], atol=1e-4, err_msg=name)
    assert f["template_restype"].shape == (1, n)
    st = gemmi.read_structure(str(UBQ))
    residues = st[0]["A"].get_polymer()
    cb = [r.find_atom("CA" if r.name == "GLY" else "CB", "*").pos for r in residues]
    d = cb[10].dist(cb[40])
    assert f["template_distogram"][0, 10, 40].argmax() == np.searchsorted(DISTOGRAM_LOWER, d) - 1
    assert f["template_distogram"][0, 10, 10].sum() == 0          # nothing below 3.25 Å
    u = f["template_unit_vector"][0]
    np.testing.assert_allclose(np.linalg.norm(u[3, 50]), 1.0, atol=1e-5)
    # x axis along C - CA of residue i: CA_j on the C side has a positive x component
    ca = np.array([r["CA"][0].pos.tolist() for r in residues])
    c = np.array([r["C"][0].pos.tolist() for r in residues])
    i = 20
    assert np.sign(u[i, i + 1, 0]) == np.sign(np.dot(c[i] - ca[i], ca[i + 1] - ca[i]))


def test_partial_alignment_masks_uncovered_residues_and_pairs_go_per_chain():
    n = len(_ubiquitin_sequence())
    job = _job([_template(UBQ.read_text(), list(range(10, 40)), list(range(10, 40)))],
               copies=("A", "B"))
    f = featurize_job(job).features
    # one slot holding chain A's and chain B's template
    assert f["template_restype"].shape == (1, 2 * n)
    covered = np.zeros(n, bool)
    covered[10:40] = True
    np.testing.assert_array_equal(f["template_pseudo_beta_mask"][0], np.tile(covered, 2))
    assert (f["template_restype"][0, :10] == 31).all()             # gap where uncovered
    # distances within chain A's template and between A and B's copies are both filled here;
    # the template embedder keeps only same-chain pairs
    assert f["template_distogram"][0, 10, 30].sum() == 1


def test_training_draws_at_most_four_templates_and_inference_takes_the_first_four():
    n = len(_ubiquitin_sequence())
    full = list(range(n))
    job = _job([_template(UBQ.read_text(), full, full)] * 6)
    assert template_features(job, tokenize(job))["template_restype"].shape[0] == 4
    drawn = {template_features(job, tokenize(job), rng=np.random.default_rng(s))
             ["template_restype"].shape[0] for s in range(40)}
    assert drawn == {0, 1, 2, 3, 4}


def test_an_unreadable_template_names_its_field():
    job = _job([_template("data_x\n_this is not mmcif", [0], [0])])
    with pytest.raises(InputError, match=r"sequences\[0\]\.protein\.templates\[0\]\.mmcif"):
        featurize_job(job)


def test_the_model_reads_template_features_into_the_pair_representation():
    import torch

    from foldray.features.batch import collate
    from foldray.model.alphafold3 import AlphaFold3
    from foldray.model.config import ModelConfig

    n = len(_ubiquitin_sequence())
    full = list(range(n))
    with_template = featurize_job(_job([_template(UBQ.read_text(), full, full)])).features
    without = featurize_job(_job([])).features
    torch.manual_seed(0)
    model = AlphaFold3(ModelConfig.tiny()).eval()
    z = []
    for features in (with_template, without):
        batch = collate([features], token_buckets=None, atom_buckets=None)
        with torch.no_grad():
            z.append(model.run_trunk(batch, n_cycle=1).z)
    assert torch.isfinite(z[0]).all()
    assert (z[0] - z[1]).abs().mean() > 1e-3
