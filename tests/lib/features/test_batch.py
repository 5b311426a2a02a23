"""foldray.features.batch: padding, masks, bucketing and collation of real featurized inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from foldray.features.batch import (
    DEFAULT_BUCKETS,
    FEATURE_AXES,
    MASKS,
    bucket_size,
    collate,
    feature_sizes,
    pad_features,
)
from foldray.residues import GAP
from tests.model_helpers import featurized_inputs

NAMES = ["102m.json", "2q2k.json", "tiny_protein_dna.json"]
INDEX_FEATURES = ("atom_to_token", "token_centre_atom", "token_rep_atom")


@pytest.fixture(scope="module")
def featurized() -> dict[str, dict[str, np.ndarray]]:
    return featurized_inputs(*NAMES)


def sizes_of(features):
    return features["restype"].shape[0], features["ref_pos"].shape[0], features["msa"].shape[0]


def expected_pad_value(name):
    return GAP if name == "msa" else 0


@pytest.mark.parametrize("name", NAMES)
def test_pad_keeps_real_region_and_fills_pad_values(featurized, name):
    features = featurized[name]
    n_token, n_atom, n_msa = sizes_of(features)
    target = {"N_token": bucket_size(n_token) + 5, "N_atom": bucket_size(n_atom),
              "N_msa": n_msa + 3, "N_templ": 2}
    padded = pad_features(features, n_token=target["N_token"], n_atom=target["N_atom"],
                          n_msa=target["N_msa"], n_templ=target["N_templ"])
    assert set(padded) == set(features) | set(MASKS)
    for key, original in features.items():
        out = padded[key]
        want_shape = tuple(size if label is None else target[label]
                           for label, size in zip(FEATURE_AXES[key], original.shape, strict=True))
        assert out.shape == want_shape, key
        assert out.dtype == original.dtype, key
        real = tuple(slice(0, size) for size in original.shape)
        np.testing.assert_array_equal(out[real], original, err_msg=key)
        rest = np.ones(out.shape, bool)
        rest[real] = False
        assert rest.any(), key   # every feature has at least one padded axis here
        assert (out[rest] == expected_pad_value(key)).all(), key
    assert (padded["msa"][n_msa:] == GAP).all() and (padded["msa"][:, n_token:] == GAP).all()


@pytest.mark.parametrize("name", NAMES)
def test_masks_count_real_entries(featurized, name):
    features = featurized[name]
    n_token, n_atom, n_msa = sizes_of(features)
    padded = pad_features(features, n_token=n_token + 17, n_atom=n_atom + 40,
                          n_msa=n_msa + 2, n_templ=3)
    for mask in MASKS:
        assert padded[mask].dtype == np.bool_, mask
    assert padded["token_mask"].sum() == n_token and padded["token_mask"][:n_token].all()
    assert padded["atom_mask"].sum() == n_atom and padded["atom_mask"][:n_atom].all()
    assert padded["msa_mask"].shape == (n_msa + 2, n_token + 17)
    assert padded["msa_mask"].sum() == n_msa * n_token and padded["msa_mask"][:n_msa, :n_token].all()
    assert padded["template_mask"].shape == (3,) and not padded["template_mask"].any()


@pytest.mark.parametrize("name", NAMES)
def test_index_features_stay_valid_and_gathers_unchanged(featurized, name):
    features = featurized[name]
    n_token, n_atom, _ = sizes_of(features)
    padded = pad_features(features, n_token=bucket_size(n_token), n_atom=bucket_size(n_atom))
    np.testing.assert_array_equal(padded["atom_to_token"][:n_atom], features["atom_to_token"])
    for key in INDEX_FEATURES:
        mask = padded["atom_mask" if key == "atom_to_token" else "token_mask"]
        assert (padded[key][~mask] == 0).all(), key
    # every index is in bounds, and real entries point at real entries
    assert padded["atom_to_token"].max() < len(padded["token_mask"])
    assert padded["token_mask"][padded["atom_to_token"][padded["atom_mask"]]].all()
    for key in ("token_centre_atom", "token_rep_atom"):
        assert padded["atom_mask"][padded[key][padded["token_mask"]]].all()
        np.testing.assert_array_equal(padded["ref_pos"][padded[key]][:n_token],
                                      features["ref_pos"][features[key]])


def test_padding_twice_keeps_masks(featurized):
    features = featurized["tiny_protein_dna.json"]
    n_token, n_atom, n_msa = sizes_of(features)
    once = pad_features(features, n_token=64, n_atom=700)
    twice = pad_features(once, n_token=128, n_atom=768, n_msa=n_msa + 1)
    assert twice["token_mask"].sum() == n_token and twice["atom_mask"].sum() == n_atom
    assert twice["msa_mask"].sum() == n_msa * n_token
    np.testing.assert_array_equal(twice["atom_to_token"][:n_atom], features["atom_to_token"])


def test_shrinking_raises(featurized):
    features = featurized["102m.json"]
    n_token, n_atom, n_msa = sizes_of(features)
    with pytest.raises(ValueError, match="N_token"):
        pad_features(features, n_token=n_token - 1, n_atom=n_atom)
    with pytest.raises(ValueError, match="N_atom"):
        pad_features(features, n_token=n_token, n_atom=n_atom - 1)
    with pytest.raises(ValueError, match="N_msa"):
        pad_features(features, n_token=n_token, n_atom=n_atom, n_msa=n_msa - 1)


def test_unknown_or_malformed_feature_raises(featurized):
    features = dict(featurized["tiny_protein_dna.json"])
    n_token, n_atom, _ = sizes_of(features)
    with pytest.raises(ValueError, match="'new_feature' has no entry"):
        pad_features({**features, "new_feature": np.zeros(n_token)}, n_token=128, n_atom=768)
    with pytest.raises(ValueError, match="'restype'"):
        pad_features({**features, "restype": features["restype"][..., None]}, n_token=128, n_atom=768)
    with pytest.raises(ValueError, match="N_token"):
        feature_sizes({**features, "asym_id": features["asym_id"][:-1]})
    with pytest.raises(ValueError, match="'new_feature' has no entry"):
        collate([{**features, "new_feature": np.zeros(n_atom)}])


def test_collate_different_sizes(featurized):
    samples = [featurized[name] for name in NAMES]
    batch = collate(samples)
    n_token = bucket_size(max(sizes_of(s)[0] for s in samples))
    n_atom = bucket_size(max(sizes_of(s)[1] for s in samples))
    n_msa = max(sizes_of(s)[2] for s in samples)
    assert (n_token, n_atom) == (256, 2048)   # 198 tokens, 1560 atoms
    assert batch["restype"].shape == (3, n_token, 32)
    assert batch["ref_atom_name_chars"].shape == (3, n_atom, 4, 64)
    assert batch["msa"].shape == (3, n_msa, n_token)
    assert batch["template_distogram"].shape == (3, 0, n_token, n_token, 39)
    assert batch["msa"].dtype == torch.int8 and batch["atom_to_token"].dtype == torch.int32
    assert batch["ref_pos"].dtype == torch.float32
    for mask in MASKS:
        assert batch[mask].dtype == torch.bool
    for i, sample in enumerate(samples):
        t, a, m = sizes_of(sample)
        assert batch["token_mask"][i].sum() == t and batch["atom_mask"][i].sum() == a
        assert batch["msa_mask"][i].sum() == m * t
        want = pad_features(sample, n_token=n_token, n_atom=n_atom, n_msa=n_msa, n_templ=0)
        for key, value in want.items():
            np.testing.assert_array_equal(batch[key][i].numpy(), value, err_msg=key)


def test_collate_bucketed_msa_rows(featurized):
    samples = [featurized["2q2k.json"], featurized["tiny_protein_dna.json"]]
    batch = collate(samples, token_buckets=None, atom_buckets=None, msa_buckets=(16, 32),
                    templ_buckets=(4,))
    assert batch["token_mask"].shape == (2, 198) and batch["atom_mask"].shape == (2, 1561)
    assert batch["msa"].shape == (2, 16, 198) and batch["template_mask"].shape == (2, 4)
    assert batch["msa_mask"][1].sum() == 2 * 44 and (batch["msa"][1, 2:] == GAP).all()


def test_bucket_size_properties():
    previous = 0
    for n in range(0, 20_000):
        b = bucket_size(n)
        assert b >= n and b >= previous
        assert b - n <= max(128, n / 2), n
        assert b in DEFAULT_BUCKETS or (b > DEFAULT_BUCKETS[-1] and b % 1024 == 0)
        previous = b
    for b in DEFAULT_BUCKETS:
        assert bucket_size(b) == b and bucket_size(b + 1) > b
    assert bucket_size(4097) == 5120 and bucket_size(10_000) == 10_240
    assert bucket_size(5, (8, 24)) == 8 and bucket_size(25, (8, 24)) == 40
    assert bucket_size(5, (8,)) == 8 and bucket_size(17, (8,)) == 24


@pytest.mark.parametrize("buckets", [(), (256, 128), (0, 128), (128, 128)])
def test_bucket_size_rejects_bad_buckets(buckets):
    with pytest.raises(ValueError):
        bucket_size(10, buckets)


def test_bucket_size_rejects_negative():
    with pytest.raises(ValueError):
        bucket_size(-1)
