"""Training examples: discovery, SI 2.5 weights, deterministic draws and crops, MSAs by name,
the prefetching DataLoader."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from foldray.errors import InputError
from foldray.training.config import DataSource
from foldray.training.data import (
    SourceData,
    TrainingDraws,
    attach_msas,
    discover_examples,
    draw,
    make_loader,
    read_structure,
    si_item_weight,
    validation_samples,
)
from tests.data_paths import MSAS, STRUCTURES

NAMES = ("1l2y", "1ubq", "102m", "2q2k")


def _source(**kwargs) -> SourceData:
    return SourceData.load(DataSource(path=str(STRUCTURES), msa_dir=str(MSAS), names=NAMES, **kwargs))


def test_folder_discovery_is_sorted_uniform_and_filtered():
    examples = discover_examples(DataSource(path=str(STRUCTURES), names=NAMES))
    assert [e.name for e in examples] == ["102m", "1l2y", "1ubq", "2q2k"]
    assert {e.weight for e in examples} == {1.0}
    assert len(discover_examples(DataSource(path=str(STRUCTURES)))) >= 20
    with pytest.raises(InputError, match="no training structures"):
        discover_examples(DataSource(path=str(STRUCTURES), names=("nope",)))


def test_si_eq1_weights():
    # protein chain in a cluster of 4: 0.5 / 4 * 3; protein-ligand interface alone: 1 * (3 + 1)
    assert si_item_weight(n_chains=1, cluster_size=4, n_prot=1) == pytest.approx(0.375)
    assert si_item_weight(n_chains=2, cluster_size=1, n_prot=1, n_ligand=1) == pytest.approx(4.0)
    assert si_item_weight(n_chains=1, cluster_size=1, n_nuc=1) == pytest.approx(1.5)


def test_manifest_weights_and_preferred_chains(tmp_path):
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "1l2y.cif").write_text((STRUCTURES / "1l2y.cif").read_text())
    none = {"chain_ids": None, "cluster_size": None, "n_prot": None, "n_ligand": None}
    rows = [
        {**none, "path": str(STRUCTURES / "102m.cif"), "chain_ids": "A", "cluster_size": 10, "n_prot": 1},
        {**none, "path": str(STRUCTURES / "102m.cif"), "chain_ids": "A,B", "cluster_size": 1,
         "n_prot": 1, "n_ligand": 1},
        {**none, "path": "files/1l2y.cif"},          # relative to the manifest; no metadata
    ]
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.Table.from_pylist(rows), manifest)
    source = SourceData.load(DataSource(path=str(manifest)))
    by_key = {(e.name, e.preferred_chains): e.weight for e in source.examples}
    assert by_key == {("102m", ("A",)): pytest.approx(0.15), ("102m", ("A", "B")): pytest.approx(4.0),
                      ("1l2y", ()): 1.0}
    # draws follow the weights
    counts = {}
    for i in range(2000):
        d = draw([source], seed=0, rank=0, index=i)
        key = source.examples[d.example_index].preferred_chains
        counts[key] = counts.get(key, 0) + 1
    total = 0.15 + 4.0 + 1.0
    assert counts[("A", "B")] / 2000 == pytest.approx(4.0 / total, abs=0.04)
    assert counts[("A",)] / 2000 == pytest.approx(0.15 / total, abs=0.02)


def test_source_weights_mix_datasets():
    a = SourceData.load(DataSource(path=str(STRUCTURES), names=("1l2y",), weight=0.9))
    b = SourceData.load(DataSource(path=str(STRUCTURES), names=("1ubq",), weight=0.1))
    picks = [draw([a, b], seed=3, rank=0, index=i).source_index for i in range(1000)]
    assert np.mean(picks) == pytest.approx(0.1, abs=0.03)


def test_draws_and_crops_are_deterministic_per_rank_and_index():
    source = _source()
    ds = TrainingDraws([source], crop_size=32, seed=7, rank=0, max_msa_rows=32)
    again = TrainingDraws([source], crop_size=32, seed=7, rank=0, max_msa_rows=32)
    other_rank = TrainingDraws([source], crop_size=32, seed=7, rank=1, max_msa_rows=32)
    samples = [ds[i] for i in range(6)]
    for i, sample in enumerate(samples):
        assert sample["restype"].shape[0] <= 32
        repeat = again[i]
        assert sample.keys() == repeat.keys()
        for key in sample:
            assert np.array_equal(sample[key], repeat[key]), (i, key)
    draws = [draw([source], seed=7, rank=r, index=i) for r in (0, 1) for i in range(12)]
    assert draws[:12] != draws[12:]                       # ranks read different streams
    assert any(not np.array_equal(other_rank[i]["gt_coords"], samples[i]["gt_coords"])
               for i in range(6))


def test_msas_are_matched_by_structure_and_chain_name():
    job = read_structure(str(STRUCTURES / "102m.cif"), "102m")
    files = {p.name.lower(): str(p) for p in MSAS.iterdir()}
    with_msa = attach_msas(job, "102m", files)
    protein = [e for e in with_msa.entities if getattr(e, "mol_type", "") == "protein"][0]
    assert protein.unpaired_msa == (MSAS / "102m_A.a3m").read_text()
    assert protein.paired_msa == (MSAS / "102m_A_paired.a3m").read_text()
    assert attach_msas(job, "1ubq", files) == job                     # no file, no change
    ds = TrainingDraws([_source()], crop_size=32, seed=0, rank=0, max_msa_rows=16)
    index = next(i for i in range(50)
                 if ds.sources[0].examples[draw(ds.sources, seed=0, rank=0, index=i).example_index].name
                 == "102m")
    assert ds[index]["msa"].shape[0] == 16                             # MSA rows, capped


def test_loader_prefetches_in_order_from_the_resume_point():
    ds = TrainingDraws([_source()], crop_size=24, seed=1, rank=0, max_msa_rows=8)
    loader = make_loader(ds, batch_size=2, start_draw=4, num_workers=1, prefetch_factor=2)
    batches = []
    for batch in loader:
        batches.append(batch)
        if len(batches) == 2:
            break
    assert batches[0]["token_mask"].shape[0] == 2 and batches[0]["token_mask"].dtype == torch.bool
    for b, first in ((0, 4), (1, 6)):
        for j in range(2):
            expected = ds[first + j]
            n = expected["gt_coords"].shape[0]
            assert torch.equal(batches[b]["gt_coords"][j, :n], torch.from_numpy(expected["gt_coords"]))


def test_validation_samples_are_fixed_and_cropped():
    source = SourceData.load(DataSource(path=str(STRUCTURES), names=("1l2y", "1ubq")))
    a = validation_samples([source], max_structures=2, max_tokens=40, max_msa_rows=8)
    b = validation_samples([source], max_structures=2, max_tokens=40, max_msa_rows=8)
    assert [s["restype"].shape[0] for s in a] == [20, 40]
    assert all(np.array_equal(x["gt_coords"], y["gt_coords"]) for x, y in zip(a, b, strict=True))
    assert len(validation_samples([source], max_structures=1, max_tokens=40, max_msa_rows=8)) == 1
