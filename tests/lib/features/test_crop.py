"""Tests for foldray.features.crop (SI 2.7) on real structures from shared/data.

Tokens are built here with gemmi, close to SI 2.6: one token per standard polymer residue
(centre CA / C1'), one token per heavy atom of ligands and modified residues (grouped per
residue), one unresolved token (centre_mask False, NaN position) per unmodelled SEQRES residue.
asym_id is the mmCIF label_asym_id (ligands are their own chains, as in AF3).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import gemmi
import numpy as np
import pytest

from foldray.features.crop import (
    CROP_STRATEGIES,
    CROP_WEIGHTS,
    INTERFACE_CUTOFF,
    contiguous_crop,
    crop_around_reference,
    crop_tokens,
    sample_crop_strategy,
    sample_interface_token,
    sample_reference_token,
    spatial_crop,
    spatial_interface_crop,
)

DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"
STANDARD = {
    "ALA", "ARG", "ASN", "ASP", "CYS", "GLN", "GLU", "GLY", "HIS", "ILE", "LEU", "LYS", "MET",
    "PHE", "PRO", "SER", "THR", "TRP", "TYR", "VAL", "UNK",
    "A", "G", "C", "U", "N", "DA", "DG", "DC", "DT", "DN",
}


@dataclass(frozen=True)
class Tokens:
    asym_id: np.ndarray      # [N_token] int
    centre_pos: np.ndarray   # [N_token, 3], NaN where unresolved
    centre_mask: np.ndarray  # [N_token] bool
    group_id: np.ndarray     # [N_token] int, one id per residue / ligand


@cache
def load_tokens(pdb_id: str) -> Tokens:
    st = gemmi.read_structure(str(DATA / "structures" / f"{pdb_id}.cif"))
    st.setup_entities()
    st.remove_hydrogens()
    st.remove_waters()
    st.remove_alternative_conformations()
    asym, pos, mask, group = [], [], [], []

    def add(chain: int, xyz: gemmi.Position | None) -> None:
        asym.append(chain)
        pos.append([xyz.x, xyz.y, xyz.z] if xyz is not None else [np.nan] * 3)
        mask.append(xyz is not None)

    for chain_index, sub in enumerate(st[0].subchains()):
        entity = st.get_entity_of(sub)
        residues = {r.label_seq: r for r in sub}
        if entity is not None and entity.entity_type == gemmi.EntityType.Polymer:
            names = [gemmi.Entity.first_mon(m) for m in entity.full_sequence]
            plan = [(residues.get(i + 1), name) for i, name in enumerate(names)]
        else:
            plan = [(r, r.name) for r in sub]
        for res, name in plan:
            gid = group[-1] + 1 if group else 0
            if res is not None and name not in STANDARD:      # per-atom tokens
                for atom in res:
                    add(chain_index, atom.pos)
                    group.append(gid)
                continue
            centre = None
            if res is not None:
                atom = res.find_atom("CA", "*") or res.find_atom("C1'", "*")
                centre = atom.pos if atom else None
            add(chain_index, centre)
            group.append(gid)
    return Tokens(np.array(asym), np.array(pos, dtype=np.float64), np.array(mask),
                  np.array(group))


def chain_runs(selected: np.ndarray, asym_id: np.ndarray) -> dict[int, int]:
    """Number of contiguous runs, per chain, of the selected tokens in that chain's token list."""
    runs = {}
    sel = np.zeros(len(asym_id), dtype=bool)
    sel[selected] = True
    for chain in np.unique(asym_id):
        s = sel[asym_id == chain].astype(int)
        runs[int(chain)] = int(np.sum(np.diff(np.concatenate([[0], s])) == 1))
    return runs


def interface_mask(t: Tokens, cutoff: float = INTERFACE_CUTOFF) -> np.ndarray:
    """Brute force SI 2.7.3: resolved centre < cutoff from another chain's resolved centre."""
    p = np.where(t.centre_mask[:, None], t.centre_pos, 0.0)
    d = np.linalg.norm(p[:, None] - p[None], axis=-1)
    ok = (t.centre_mask[:, None] & t.centre_mask[None] & (t.asym_id[:, None] != t.asym_id[None]))
    return (ok & (d < cutoff)).any(-1)


def distances(t: Tokens, reference: int) -> np.ndarray:
    d = np.linalg.norm(t.centre_pos - t.centre_pos[reference], axis=-1)
    return np.where(t.centre_mask, d, np.inf)


def check_crop(crop: np.ndarray, n_token: int, crop_size: int, exact: bool = True) -> None:
    assert crop.dtype == np.int64
    assert np.all(np.diff(crop) > 0), "sorted and unique"
    assert crop.min() >= 0 and crop.max() < n_token
    if exact:
        assert len(crop) == min(n_token, crop_size)
    else:
        assert len(crop) <= crop_size


def assert_groups_whole(crop: np.ndarray, group_id: np.ndarray) -> None:
    sel = np.zeros(len(group_id), dtype=bool)
    sel[crop] = True
    for g in np.unique(group_id[crop]):
        assert sel[group_id == g].all(), f"group {g} split by the crop"


STRUCTURES = ["1f2n", "2rtg", "1ay7", "5ugo"]


def test_token_builder_sanity():
    t = load_tokens("1f2n")
    assert len(np.unique(t.asym_id)) >= 6           # 3 protein chains + 3 Ca ions
    assert (~t.centre_mask).sum() >= 100             # 124 unmodelled residues
    assert np.isnan(t.centre_pos[~t.centre_mask]).all()
    t = load_tokens("2rtg")
    assert np.bincount(t.group_id).max() == 16       # biotin, per atom


@pytest.mark.parametrize("pdb_id", STRUCTURES)
@pytest.mark.parametrize("crop_size", [17, 128, 384, 100_000])
def test_sizes_all_strategies(pdb_id, crop_size):
    t = load_tokens(pdb_id)
    n = len(t.asym_id)
    for strategy in CROP_STRATEGIES:
        for seed in range(5):
            crop = crop_tokens(strategy, asym_id=t.asym_id, centre_pos=t.centre_pos,
                               centre_mask=t.centre_mask, crop_size=crop_size,
                               rng=np.random.default_rng(seed))
            check_crop(crop, n, crop_size)
            if n <= crop_size:
                np.testing.assert_array_equal(crop, np.arange(n))


@pytest.mark.parametrize("pdb_id", STRUCTURES)
def test_contiguous_one_run_per_chain(pdb_id):
    t = load_tokens(pdb_id)
    crop_size = len(t.asym_id) // 2
    per_chain = set()
    for seed in range(50):
        crop = contiguous_crop(t.asym_id, crop_size, np.random.default_rng(seed))
        check_crop(crop, len(t.asym_id), crop_size)
        assert max(chain_runs(crop, t.asym_id).values()) <= 1
        per_chain.add(tuple(np.bincount(t.asym_id[crop], minlength=t.asym_id.max() + 1)))
    assert len(per_chain) > 10                     # run lengths vary with the chain order


def test_contiguous_non_adjacent_chain_tokens():
    """A chain's tokens need not be adjacent in the token order (runs are per chain)."""
    asym = np.array([0, 1, 0, 1, 0, 1, 0, 1, 2, 2, 0, 1])
    for seed in range(100):
        crop = contiguous_crop(asym, 5, np.random.default_rng(seed))
        check_crop(crop, len(asym), 5)
        assert max(chain_runs(crop, asym).values()) <= 1


@pytest.mark.parametrize("pdb_id", STRUCTURES)
def test_spatial_crop_is_nearest_to_reference(pdb_id):
    t = load_tokens(pdb_id)
    crop_size = 150
    for seed in range(20):
        reference = sample_reference_token(t.centre_mask, np.random.default_rng(seed))
        crop = spatial_crop(t.centre_pos, t.centre_mask, crop_size, np.random.default_rng(seed))
        np.testing.assert_array_equal(
            crop, crop_around_reference(t.centre_pos, t.centre_mask, reference, crop_size))
        check_crop(crop, len(t.asym_id), crop_size)
        assert t.centre_mask[reference] and reference in crop
        d = distances(t, reference)
        outside = np.setdiff1d(np.flatnonzero(t.centre_mask), crop)
        assert d[crop].max() <= d[outside].min()
        assert t.centre_mask[crop].all()      # enough resolved tokens: none unresolved


def test_spatial_crop_ties_broken_by_index():
    pos = np.zeros((10, 3))
    pos[5:, 0] = 1.0                          # tokens 0-4 at the origin, 5-9 at 1 A
    crop = crop_around_reference(pos, np.ones(10, bool), 7, 3)
    np.testing.assert_array_equal(crop, [5, 6, 7])
    crop = crop_around_reference(pos, np.ones(10, bool), 0, 7)
    np.testing.assert_array_equal(crop, [0, 1, 2, 3, 4, 5, 6])


def test_unresolved_tokens_are_far_and_never_reference():
    t = load_tokens("1f2n")
    unresolved = np.flatnonzero(~t.centre_mask)
    refs = {sample_reference_token(t.centre_mask, np.random.default_rng(s)) for s in range(500)}
    assert not refs & set(unresolved.tolist())
    for seed in range(20):
        ref = sample_interface_token(t.centre_pos, t.centre_mask, t.asym_id,
                                     np.random.default_rng(seed))
        assert ref is not None and t.centre_mask[ref]
    # Crop larger than the resolved set: every resolved token, then unresolved by index.
    n_res = int(t.centre_mask.sum())
    crop = spatial_crop(t.centre_pos, t.centre_mask, n_res + 10, np.random.default_rng(0))
    assert t.centre_mask[crop].sum() == n_res
    np.testing.assert_array_equal(np.setdiff1d(crop, np.flatnonzero(t.centre_mask)),
                                  unresolved[:10])
    with pytest.raises(ValueError, match="resolved"):
        spatial_crop(t.centre_pos, np.zeros_like(t.centre_mask), 10, np.random.default_rng(0))


@pytest.mark.parametrize("pdb_id", ["1f2n", "2rtg", "1ay7"])
def test_interface_reference_is_interface_token(pdb_id):
    t = load_tokens(pdb_id)
    interface = interface_mask(t)
    assert interface.any()
    refs = set()
    for seed in range(40):
        ref = sample_interface_token(t.centre_pos, t.centre_mask, t.asym_id,
                                     np.random.default_rng(seed))
        assert interface[ref], f"token {ref} is not within 15 A of another chain"
        refs.add(ref)
        crop = spatial_interface_crop(t.centre_pos, t.centre_mask, t.asym_id, 100,
                                      np.random.default_rng(seed))
        np.testing.assert_array_equal(
            crop, crop_around_reference(t.centre_pos, t.centre_mask, ref, 100))
        assert t.asym_id[crop].min() != t.asym_id[crop].max()    # spans two chains
    assert len(refs) > 10                                        # a random draw, not a fixed one


def test_interface_reference_roughly_uniform():
    t = load_tokens("1ay7")
    interface = np.flatnonzero(interface_mask(t))
    draws = [sample_interface_token(t.centre_pos, t.centre_mask, t.asym_id,
                                    np.random.default_rng(s)) for s in range(4000)]
    counts = np.array([draws.count(i) for i in interface])
    expected = len(draws) / len(interface)
    assert counts.sum() == len(draws)
    assert counts.min() > 0.3 * expected and counts.max() < 2.5 * expected


def test_interface_falls_back_to_spatial():
    t = load_tokens("1ay7")
    single = np.zeros_like(t.asym_id)                 # one chain: no interface
    far = t.centre_pos.copy()
    far[t.asym_id == t.asym_id.max()] += 1000.0       # chains 1000 A apart: no interface
    for seed in range(5):
        expected = spatial_crop(t.centre_pos, t.centre_mask, 64, np.random.default_rng(seed))
        got = spatial_interface_crop(t.centre_pos, t.centre_mask, single, 64,
                                     np.random.default_rng(seed))
        np.testing.assert_array_equal(got, expected)
        assert sample_interface_token(far, t.centre_mask, t.asym_id,
                                      np.random.default_rng(seed)) is None
        crop = spatial_interface_crop(far, t.centre_mask, t.asym_id, 64, np.random.default_rng(seed))
        check_crop(crop, len(t.asym_id), 64)
        assert len(np.unique(t.asym_id[crop])) == 1


def test_interface_cutoff_respected():
    t = load_tokens("1f2n")
    for cutoff in (6.0, 10.0):
        interface = interface_mask(t, cutoff)
        for seed in range(20):
            ref = sample_interface_token(t.centre_pos, t.centre_mask, t.asym_id,
                                         np.random.default_rng(seed), interface_cutoff=cutoff)
            assert interface[ref]


def test_candidates_restrict_reference():
    t = load_tokens("1f2n")
    chains = np.unique(t.asym_id)
    preferred = t.asym_id == chains[1]                              # one protein chain
    pair = np.isin(t.asym_id, chains[:2])                           # an interface (2 chains)
    interface = interface_mask(t)
    for seed in range(30):
        ref = sample_reference_token(t.centre_mask, np.random.default_rng(seed), candidates=preferred)
        assert preferred[ref] and t.centre_mask[ref]
        crop = spatial_crop(t.centre_pos, t.centre_mask, 80, np.random.default_rng(seed),
                            candidates=preferred)
        assert ref in crop
        ref = sample_interface_token(t.centre_pos, t.centre_mask, t.asym_id,
                                     np.random.default_rng(seed), candidates=pair)
        assert pair[ref] and interface[ref]
        crop = spatial_interface_crop(t.centre_pos, t.centre_mask, t.asym_id, 80,
                                      np.random.default_rng(seed), candidates=pair)
        np.testing.assert_array_equal(
            crop, crop_around_reference(t.centre_pos, t.centre_mask, ref, 80))
    # Candidates with nothing resolved: every resolved token is a reference candidate.
    nothing = ~t.centre_mask
    ref = sample_reference_token(t.centre_mask, np.random.default_rng(0), candidates=nothing)
    assert t.centre_mask[ref]


def test_determinism_and_seed_dependence():
    t = load_tokens("1f2n")
    kw = dict(asym_id=t.asym_id, centre_pos=t.centre_pos, centre_mask=t.centre_mask,
              crop_size=120, group_id=t.group_id)
    for strategy in CROP_STRATEGIES:
        a = crop_tokens(strategy, rng=np.random.default_rng(7), **kw)
        b = crop_tokens(strategy, rng=np.random.default_rng(7), **kw)
        np.testing.assert_array_equal(a, b)
        crops = {tuple(crop_tokens(strategy, rng=np.random.default_rng(s), **kw)) for s in range(10)}
        assert len(crops) > 5, strategy


@pytest.mark.parametrize("pdb_id", ["2rtg", "5ugo", "1f2n"])
def test_spatial_groups_kept_whole_greedy(pdb_id):
    """Groups enter nearest-first, whole, and are skipped only when they do not fit."""
    t = load_tokens(pdb_id)
    group_ids = np.unique(t.group_id)
    size = np.bincount(t.group_id)
    for crop_size in (40, 200):
        for seed in range(15):
            rng = np.random.default_rng(seed)
            ref = sample_reference_token(t.centre_mask, np.random.default_rng(seed))
            crop = spatial_crop(t.centre_pos, t.centre_mask, crop_size, rng, group_id=t.group_id)
            np.testing.assert_array_equal(crop, crop_around_reference(
                t.centre_pos, t.centre_mask, ref, crop_size, group_id=t.group_id))
            check_crop(crop, len(t.asym_id), crop_size, exact=False)
            assert_groups_whole(crop, t.group_id)
            assert len(crop) > crop_size - size.max()
            # Greedy characterisation, groups ordered by (nearest member, its index).
            d = distances(t, ref)
            order = np.lexsort((np.arange(len(d)), d))
            first = {}
            for i in order:
                first.setdefault(int(t.group_id[i]), len(first))
            ranked = sorted(group_ids, key=lambda g: first[int(g)])
            selected = set(t.group_id[crop].tolist())
            taken = 0
            for g in ranked:
                if g in selected:
                    taken += size[g]
                else:
                    assert size[g] > crop_size - taken, "a fitting group was skipped"
            assert taken == len(crop)


def test_spatial_groups_split_without_group_id():
    """Sanity: without group_id, some crop cuts the biotin (so the group test is meaningful)."""
    t = load_tokens("2rtg")
    size = np.bincount(t.group_id)
    split = False
    for seed in range(40):
        crop = spatial_crop(t.centre_pos, t.centre_mask, 60, np.random.default_rng(seed))
        counts = np.bincount(t.group_id[crop], minlength=len(size))
        split |= bool(np.any((counts > 0) & (counts < size)))
    assert split


@pytest.mark.parametrize("pdb_id", ["2rtg", "5ugo", "1f2n"])
def test_contiguous_groups_kept_whole(pdb_id):
    t = load_tokens(pdb_id)
    lengths = []
    for crop_size in (30, 150):
        for seed in range(40):
            crop = contiguous_crop(t.asym_id, crop_size, np.random.default_rng(seed),
                                   group_id=t.group_id)
            check_crop(crop, len(t.asym_id), crop_size, exact=False)
            assert_groups_whole(crop, t.group_id)
            assert max(chain_runs(crop, t.asym_id).values()) <= 1
            lengths.append(len(crop) / crop_size)
    assert np.mean(lengths) > 0.9                  # shortfalls are rare and small


def test_contiguous_ligand_chain_sometimes_whole():
    """A per-atom ligand chain is either dropped or kept whole, and sometimes kept."""
    asym = np.array([0] * 50 + [1] * 20)
    group = np.concatenate([np.arange(50), np.full(20, 50)])
    kept = 0
    for seed in range(200):
        crop = contiguous_crop(asym, 40, np.random.default_rng(seed), group_id=group)
        n_lig = int(np.sum(crop >= 50))
        assert n_lig in (0, 20)
        assert len(crop) <= 40
        assert len(crop) == 40 or n_lig == 0        # only a dropped last ligand leaves a gap
        kept += n_lig == 20
    assert 20 < kept < 180


def test_contiguous_rejects_scattered_groups():
    with pytest.raises(ValueError, match="group_id"):
        contiguous_crop(np.zeros(6, int), 3, np.random.default_rng(0),
                        group_id=np.array([0, 1, 0, 2, 3, 4]))


def test_sample_crop_strategy_follows_table_4():
    assert set(CROP_WEIGHTS) == {"weighted_pdb", "disordered_protein_pdb", "monomer_distillation",
                                 "short_protein_distillation", "rna_distillation"}
    for weights in CROP_WEIGHTS.values():
        assert abs(sum(weights.values()) - 1.0) < 1e-9
    rng = np.random.default_rng(0)
    draws = [sample_crop_strategy(CROP_WEIGHTS["weighted_pdb"], rng) for _ in range(4000)]
    freq = {s: draws.count(s) / len(draws) for s in CROP_STRATEGIES}
    assert abs(freq["contiguous"] - 0.2) < 0.03 and abs(freq["spatial"] - 0.4) < 0.03
    draws = {sample_crop_strategy(CROP_WEIGHTS["monomer_distillation"], rng) for _ in range(500)}
    assert draws == {"contiguous", "spatial"}
    with pytest.raises(ValueError):
        sample_crop_strategy({"spatial": 0.0}, rng)
    with pytest.raises(ValueError):
        sample_crop_strategy({"random": 1.0}, rng)
    with pytest.raises(TypeError):
        CROP_WEIGHTS["weighted_pdb"]["spatial"] = 1.0  # type: ignore[index]


def test_argument_checks():
    t = load_tokens("1ay7")
    with pytest.raises(ValueError, match="crop_size"):
        contiguous_crop(t.asym_id, 0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="N_token"):
        spatial_crop(t.centre_pos, t.centre_mask[:-1], 10, np.random.default_rng(0))
    with pytest.raises(ValueError, match="strategy"):
        crop_tokens("random", asym_id=t.asym_id, centre_pos=t.centre_pos,  # type: ignore[arg-type]
                    centre_mask=t.centre_mask, crop_size=10, rng=np.random.default_rng(0))
