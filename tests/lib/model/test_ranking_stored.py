"""SI 5.9.3 ranking metrics of one stored sample (foldray.model.ranking `*_np` entries), and
io/confidences.py only rounding what the model computed: one implementation of each metric.

Expected values follow AlphaFold 3's released confidences.py: get_ranking_score (0.8 ipTM +
0.2 pTM + 0.5 disorder - 100 clash, pTM alone for one chain), get_iptm_xchain (mean of the
row and column means off the diagonal, NaNs skipped) and chain_pair_pae min with AF3's
pae_single_mask (the frame mask on rows, every column).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from foldray.io import confidences as io_confidences
from foldray.model.confidence import token_frames
from foldray.model.ranking import (
    chain_iptm_np,
    chain_pair_pae_min_np,
    ranking_score_np,
    summary_confidences,
)
from tests.model_helpers import structure_batch


def test_ranking_score_is_af3_formula():
    assert ranking_score_np(ptm=0.5, iptm=0.8, fraction_disordered=0.1, has_clash=False) \
        == pytest.approx(0.8 * 0.8 + 0.2 * 0.5 + 0.5 * 0.1)
    assert ranking_score_np(ptm=0.5, iptm=math.nan, fraction_disordered=0.0,
                            has_clash=True) == pytest.approx(0.5 - 100)


def test_chain_pair_pae_min_uses_frame_rows_and_masks():
    pae = np.arange(25, dtype=float).reshape(5, 5)
    token_chain = np.array([0, 0, 1, 1, 2])
    out = chain_pair_pae_min_np(pae, token_chain, 3)
    assert out[0, 1] == 2.0 and out[1, 0] == 10.0 and out[2, 2] == 24.0 and out[1, 1] == 12.0
    masked = chain_pair_pae_min_np(pae, token_chain, 3, np.array([False, True, True, True, False]))
    assert masked[0, 1] == 7.0                       # row 0 is not a valid frame
    assert masked[1, 0] == 10.0                      # columns are never masked (AF3)
    assert np.isnan(masked[2]).all()                 # chain 2 has no valid frame (an ion)
    padded = np.pad(pae, ((0, 3), (0, 3)), constant_values=-1)
    np.testing.assert_array_equal(chain_pair_pae_min_np(padded, token_chain, 3), out)


def test_chain_iptm_is_mean_of_row_and_column_off_diagonal():
    pair = np.array([[0.9, 0.2, 0.4], [0.6, 0.8, 0.0], [0.3, 1.0, 0.7]])
    expected = [np.mean([np.mean([0.6, 0.3]), np.mean([0.2, 0.4])]),
                np.mean([np.mean([0.2, 1.0]), np.mean([0.6, 0.0])]),
                np.mean([np.mean([0.4, 0.0]), np.mean([0.3, 1.0])])]
    np.testing.assert_allclose(chain_iptm_np(pair), expected)
    assert np.isnan(chain_iptm_np(np.array([[0.5]]))).all()
    with_nan = pair.copy()
    with_nan[0, 2] = with_nan[2, 0] = np.nan          # a chain pair without frames: skipped
    np.testing.assert_allclose(chain_iptm_np(with_nan)[0], np.mean([0.6, 0.2]))


def test_io_defines_no_metric_of_its_own():
    for name in ("IPTM_WEIGHT", "FRACTION_DISORDERED_WEIGHT", "CLASH_PENALTY",
                 "compute_ranking_score", "chain_iptm", "chain_pair_pae_min"):
        assert not hasattr(io_confidences, name), name


def test_io_summary_rounds_what_the_model_computed():
    batch, x, _ = structure_batch("1ay7")
    tokens = {k: v[0] for k, v in batch.items()}
    _, frames = token_frames(batch)
    n, a = tokens["token_mask"].shape[0], x.shape[-2]
    generator = torch.Generator().manual_seed(5)
    out = summary_confidences(torch.randn(2, a, 50, generator=generator),
                              torch.randn(2, n, n, 64, generator=generator),
                              x[0].expand(2, a, 3), tokens, frames[0])
    token_chain = torch.unique(tokens["asym_id"], return_inverse=True)[1].numpy()
    for i in range(2):
        pae_min = chain_pair_pae_min_np(out["pae"][i].numpy(), token_chain, 2, frames[0].numpy())
        np.testing.assert_array_equal(pae_min, out["chain_pair_pae_min"][i].double().numpy())
        values = {"ptm": float(out["ptm"][i]), "iptm": float(out["iptm"][i]),
                  "fraction_disordered": float(out["fraction_disordered"][i]),
                  "has_clash": bool(out["has_clash"][i])}
        assert ranking_score_np(**values) == pytest.approx(float(out["ranking_score"][i]), abs=1e-6)
        summary = io_confidences.summary_confidences(
            **values, chain_pair_iptm=out["chain_pair_iptm"][i].numpy(), chain_pair_pae_min=pae_min,
            chain_ids=["A", "B"])
        assert summary["ranking_score"] == round(float(out["ranking_score"][i]), 2)
        assert summary["chain_iptm"] == [round(float(v), 2) for v in out["chain_iptm"][i]]
        assert summary["chain_ptm"] == [round(float(v), 2) for v in out["chain_ptm"][i]]
        assert summary["chain_pair_pae_min"] == [[round(float(v), 2) for v in row]
                                                 for row in out["chain_pair_pae_min"][i]]
