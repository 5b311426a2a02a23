"""Shrake-Rupley SASA (foldray.model.ranking.shrake_rupley_sasa) against a brute-force reference.

The reference is the textbook algorithm in float64 numpy: every dot of every atom tested
against every other atom, no neighbour lists, no chunks. Real structure: ubiquitin (1ubq)
with the DSSP radii that fraction_disordered uses.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from foldray.model.confidence import atom_name_is
from foldray.model.ranking import (
    DSSP_RADII,
    DSSP_SIDE_CHAIN_RADIUS,
    WATER_RADIUS,
    shrake_rupley_sasa,
)
from tests.model_helpers import structure_batch

N_POINTS = 200


def _golden_spiral(n: int) -> np.ndarray:
    k = np.arange(n) + 0.5
    polar, azimuth = np.arccos(1 - 2 * k / n), math.pi * (1 + math.sqrt(5)) * k
    return np.stack([np.cos(azimuth) * np.sin(polar), np.sin(azimuth) * np.sin(polar), np.cos(polar)], -1)


def brute_force_sasa(x: np.ndarray, radii: np.ndarray, n_points: int, probe: float) -> np.ndarray:
    """Per-atom SASA: dots on each expanded sphere, buried if inside any other expanded sphere."""
    r = radii + probe
    dots = _golden_spiral(n_points)
    area = np.empty(len(x))
    for i in range(len(x)):
        surface = x[i] + r[i] * dots                                        # [P, 3]
        dist2 = ((surface[:, None, :] - x[None, :, :]) ** 2).sum(-1)        # [P, N]
        inside = dist2 < r[None, :] ** 2
        inside[:, i] = False
        area[i] = (~inside.any(-1)).mean() * 4 * math.pi * r[i] ** 2
    return area


@pytest.fixture(scope="module")
def ubiquitin():
    batch, x, mask = structure_batch("1ubq")
    atoms = mask[0].nonzero().flatten()
    radii = torch.full((len(atoms),), DSSP_SIDE_CHAIN_RADIUS)
    for name, radius in DSSP_RADII.items():
        radii = torch.where(atom_name_is(batch["ref_atom_name_chars"][0, atoms], name), radius, radii)
    return x[0, atoms], radii


def test_sasa_matches_brute_force_on_a_real_protein(ubiquitin):
    x, radii = ubiquitin
    ours = shrake_rupley_sasa(x, radii, N_POINTS).double().numpy()
    reference = brute_force_sasa(x.double().numpy(), radii.double().numpy(), N_POINTS, WATER_RADIUS)
    dot_area = 4 * math.pi * (radii.double().numpy() + WATER_RADIUS) ** 2 / N_POINTS
    flipped = np.abs(ours - reference) / dot_area                           # dots decided differently
    assert flipped.max() < 0.01                                             # every dot decided alike
    np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-3)       # float32 rounding only
    assert (reference > 0).any() and (reference == 0).any()                 # buried and exposed atoms


def test_sasa_chunks_blocks_and_sample_dims_give_the_same_result(ubiquitin):
    x, radii = ubiquitin
    moved = x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    both = torch.stack([x, moved])                                          # [2, N, 3]
    full = shrake_rupley_sasa(both, radii)
    for chunk, block in [(37, 5000), (256, None), (None, 1 << 14), (len(x) + 5, None)]:
        torch.testing.assert_close(shrake_rupley_sasa(both, radii, chunk=chunk, block=block), full,
                                   rtol=1e-6, atol=1e-4)
    torch.testing.assert_close(shrake_rupley_sasa(moved, radii), full[1], rtol=1e-6, atol=1e-4)
    lone = shrake_rupley_sasa(x[:1], radii[:1])                             # no neighbour: whole sphere
    torch.testing.assert_close(lone, 4 * math.pi * (radii[:1] + WATER_RADIUS) ** 2)
