"""foldray.features.msa: SI 2.3 pairing + dense stacking, Table 5 profile features, real MSAs."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from foldray.errors import InputError
from foldray.features.msa import ChainMsaInput, MsaFeatures, build_msa, check_query
from foldray.inputs.a3m import A3m, encode_letters, parse_a3m
from foldray.residues import GAP, NUM_RESTYPES, RESTYPE_INDEX

DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"
MSAS = DATA / "msas"


@cache
def load(name: str) -> A3m:
    return parse_a3m((MSAS / f"{name}.a3m").read_text(), "protein", source=name)


def protein(chain_id: str, entity_id: int, name: str, *, paired: bool = True,
            unpaired: bool = True) -> ChainMsaInput:
    return ChainMsaInput(chain_id=chain_id, entity_id=entity_id, mol_type="protein",
                         query=load(name).rows[0], unpaired=load(name) if unpaired else None,
                         paired=load(f"{name}_paired") if paired else None)


def taxid(header: str) -> str | None:
    """Independent reading of the Protenix header `UniRef100_<acc>_<taxid>/`."""
    match = re.match(r"UniRef100_\w+?_(\d+)/", header)
    return match.group(1) if match else None


def row_keys(rows: np.ndarray) -> list[bytes]:
    return [row.tobytes() for row in rows]


@pytest.fixture(scope="module")
def heteromer() -> MsaFeatures:
    """102m (myoglobin, 154) + 5zyh (CERT START, 237) as a synthetic heteromer."""
    return build_msa([protein("A", 1, "102m_A"), protein("B", 2, "5zyh_A")])


def test_heteromer_pairs_rows_of_the_same_species(heteromer):
    a_pair, b_pair = load("102m_A_paired"), load("5zyh_A_paired")
    a_tax = [taxid(h) for h in a_pair.headers]
    b_tax = [taxid(h) for h in b_pair.headers]
    shared = {t for t in a_tax[1:] if t} & {t for t in b_tax[1:] if t}
    expected = sum(min(a_tax.count(t), b_tax.count(t), 600) for t in shared)
    assert heteromer.n_paired_rows == expected > 100

    def species_of(a3m: A3m, tax: list, part: np.ndarray, dels: np.ndarray) -> set:
        hits = np.flatnonzero((a3m.rows == part).all(axis=1) & (a3m.deletions == dels).all(axis=1))
        return {tax[i] for i in hits}

    for i in range(1, 1 + heteromer.n_paired_rows):
        a_part, b_part = heteromer.msa[i, :154], heteromer.msa[i, 154:]
        a_dels, b_dels = heteromer.deletion_count[i, :154], heteromer.deletion_count[i, 154:]
        common = species_of(a_pair, a_tax, a_part, a_dels) & species_of(b_pair, b_tax, b_part, b_dels)
        assert common - {None}, f"paired row {i} has no species in common across chains"


def test_heteromer_row_order_and_dense_block(heteromer):
    a_main, b_main = load("102m_A"), load("5zyh_A")
    np.testing.assert_array_equal(heteromer.msa[0], np.concatenate([a_main.rows[0], b_main.rows[0]]))
    assert heteromer.deletion_count[0].sum() == 0
    start = 1 + heteromer.n_paired_rows
    for cols, main in ((slice(0, 154), a_main), (slice(154, 391), b_main)):
        used = set(row_keys(heteromer.msa[:start, cols]))
        expected, seen = [], set()
        for row, dels, key in zip(main.rows, main.deletions, row_keys(main.rows), strict=True):
            if key not in seen and key not in used:
                expected.append((row, dels))
            seen.add(key)
        block = heteromer.msa[start:, cols]
        n = len(expected)
        np.testing.assert_array_equal(block[:n], np.array([r for r, _ in expected]))
        np.testing.assert_array_equal(heteromer.deletion_count[start:start + n, cols],
                                      np.array([d for _, d in expected]))
        assert (block[n:] == GAP).all() and (heteromer.deletion_count[start + n:, cols] == 0).all()
    n_a = len(heteromer.msa) - start
    assert heteromer.msa.shape == (start + n_a, 154 + 237)
    # 5zyh_A has more unpaired rows, so 102m's columns end in gap padding
    assert (heteromer.msa[-1, :154] == GAP).all() and not (heteromer.msa[-1, 154:] == GAP).all()


def test_profile_and_deletion_mean_from_main_msa(heteromer):
    np.testing.assert_allclose(heteromer.profile.sum(axis=1), 1.0, atol=1e-5)
    assert heteromer.profile.shape == (391, NUM_RESTYPES) and heteromer.profile.dtype == np.float32
    main = load("102m_A")
    _, first = np.unique(main.rows, axis=0, return_index=True)
    rows = main.rows[np.sort(first)]
    one_hot = rows[..., None] == np.arange(NUM_RESTYPES)  # [N, L, 32]
    np.testing.assert_allclose(heteromer.profile[:154], one_hot.mean(axis=0), atol=1e-6)
    np.testing.assert_allclose(heteromer.deletion_mean[:154],
                               main.deletions[np.sort(first)].mean(axis=0), atol=1e-5)
    assert heteromer.deletion_mean[:154].max() > 0


def test_deletion_transforms(heteromer):
    d = heteromer.deletion_count
    assert heteromer.has_deletion.dtype == bool and heteromer.has_deletion.sum() == (d > 0).sum() > 0
    value = heteromer.deletion_value
    at_three = d == 3
    assert at_three.any()
    np.testing.assert_allclose(value[at_three], 0.5, atol=1e-6)
    assert (value[d == 0] == 0).all() and value.max() < 1


def test_homomer_is_not_paired_and_repeats_query_like_af3():
    feats = build_msa([protein("A", 1, "102m_A"), protein("B", 1, "102m_A")])
    main = load("102m_A")
    assert len(set(row_keys(main.rows))) == main.depth  # no duplicates to remove
    assert feats.n_paired_rows == 0
    assert feats.msa.shape == (1 + main.depth, 308)
    np.testing.assert_array_equal(feats.msa[1:, :154], main.rows)  # AF3 keeps the unpaired query
    np.testing.assert_array_equal(feats.msa[:, :154], feats.msa[:, 154:])


def test_chain_without_paired_msa_gets_no_pairing_partner():
    feats = build_msa([protein("A", 1, "102m_A"), protein("B", 2, "5zyh_A", paired=False)])
    assert feats.n_paired_rows == 0  # a species must occur in two chains
    # pairing mode: the unpaired query rows are dropped as duplicates of row 0
    assert not (feats.msa[1, :154] == feats.msa[0, :154]).all()
    assert not (feats.msa[1, 154:] == feats.msa[0, 154:]).all()


def test_copies_share_paired_rows_in_a2b():
    feats = build_msa([protein("A", 1, "102m_A"), protein("B", 1, "102m_A"),
                       protein("C", 2, "5zyh_A")])
    n = feats.n_paired_rows
    assert n > 0
    paired = feats.msa[1:1 + n]
    np.testing.assert_array_equal(paired[:, :154], paired[:, 154:308])
    assert (paired[:, 308:] != GAP).any(axis=1).mean() > 0.1


def test_ligand_dna_and_msa_less_chains_contribute_query_only():
    dna_query = encode_letters("CGCGAATTCGCG", "dna")
    ligand_query = np.full(6, RESTYPE_INDEX["UNK"])
    feats = build_msa([
        protein("A", 1, "102m_A"),
        ChainMsaInput(chain_id="B", entity_id=2, mol_type="dna", query=dna_query, unpaired=None, paired=None),
        ChainMsaInput(chain_id="C", entity_id=3, mol_type="ligand", query=ligand_query, unpaired=None,
                      paired=None),
    ])
    assert feats.msa.shape == (1 + load("102m_A").depth, 154 + 12 + 6)
    np.testing.assert_array_equal(feats.msa[0, 154:], np.concatenate([dna_query, ligand_query]))
    # one protein sequence -> no pairing; AF3 then repeats every query at row 1
    np.testing.assert_array_equal(feats.msa[1, 154:], feats.msa[0, 154:])
    assert (feats.msa[2:, 154:] == GAP).all() and (feats.deletion_count[:, 154:] == 0).all()
    one_hot = np.eye(NUM_RESTYPES)[np.concatenate([dna_query, ligand_query])]
    np.testing.assert_array_equal(feats.profile[154:], one_hot)
    assert (feats.deletion_mean[154:] == 0).all()


def test_row_caps():
    feats = build_msa([protein("A", 1, "102m_A"), protein("B", 2, "5zyh_A")],
                      max_rows=50, max_paired_rows=20)
    assert feats.n_paired_rows == 20 and feats.msa.shape == (50, 391)
    full = build_msa([protein("A", 1, "102m_A"), protein("B", 2, "5zyh_A")])
    np.testing.assert_array_equal(feats.msa[:21], full.msa[:21])
    np.testing.assert_array_equal(feats.profile, full.profile)  # profile is computed before cropping
    with pytest.raises(ValueError):
        build_msa([protein("A", 1, "102m_A")], max_rows=10, max_paired_rows=10)


def test_duplicate_unpaired_rows_are_removed():
    text = ">q\nACDEF\n>h1\nAC-EF\n>h2\nAcC-EF\n>h3\nGGGGG\n"
    a3m = parse_a3m(text, "protein")
    chain = ChainMsaInput(chain_id="A", entity_id=1, mol_type="protein", query=a3m.rows[0],
                          unpaired=a3m, paired=None)
    feats = build_msa([chain])
    # h2 equals h1 once the insertion is dropped (AF3 dedups on match columns); query repeats
    assert feats.msa.shape == (4, 5)
    np.testing.assert_array_equal(feats.msa[3], [RESTYPE_INDEX["GLY"]] * 5)


def test_query_mismatch_is_an_input_error():
    chain = ChainMsaInput(chain_id="A", entity_id=1, mol_type="protein", query=load("5zyh_A").rows[0],
                          unpaired=load("102m_A"), paired=None)
    with pytest.raises(InputError) as err:
        build_msa([chain])
    assert "chain A" in err.value.message and err.value.source == "102m_A"


def test_unknown_query_residue_matches_any_a3m_letter():
    query = load("102m_A").rows[0].copy()
    query[10] = RESTYPE_INDEX["UNK"]  # e.g. a modified residue without a standard parent
    chain = ChainMsaInput(chain_id="A", entity_id=1, mol_type="protein", query=query,
                          unpaired=load("102m_A"), paired=None)
    feats = build_msa([chain])
    assert feats.msa[0, 10] == RESTYPE_INDEX["UNK"] and feats.msa.shape[1] == 154
    query[11] = RESTYPE_INDEX["TRP"] if query[11] != RESTYPE_INDEX["TRP"] else RESTYPE_INDEX["ALA"]
    with pytest.raises(InputError, match="position 12"):
        build_msa([ChainMsaInput(chain_id="A", entity_id=1, mol_type="protein", query=query,
                                 unpaired=load("102m_A"), paired=None)])


def test_check_query_on_bad_input_names_position():
    path = DATA / "bad_inputs" / "a3m_query_mismatch.a3m"
    a3m = parse_a3m(path.read_text(), "protein", source=path.name)
    with pytest.raises(InputError) as err:
        check_query(a3m, "NLYIQWLKDGGPSSGRPPPS")
    assert "position 1 " in err.value.message and err.value.field == "line 1"
    check_query(a3m, "MKTAYIAKQRQISFVKSHFSRQ")  # its own query passes
