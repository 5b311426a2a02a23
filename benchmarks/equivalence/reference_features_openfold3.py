"""Run OpenFold3's own inference featurizer on an AF3 JSON input and dump normalised features.

Runs INSIDE the reference virtual environment (openfold3 0.5.0 from PyPI, no foldray). OpenFold3
reads its own query format, not AF3 JSON, so the input is translated chain by chain (the only
harness-made step, kept literal): sequences and copies as `chain_ids`, AF3 `modifications` as
`non_canonical_residues`, ligand `ccdCodes` / `smiles`, the unpaired MSA as a
`bfd_uniclust_hits.a3m` main alignment and the paired MSA as `colabfold_paired.a3m` (the names
OpenFold3's MSASettings orders and pairs by). `bondedAtomPairs` are dropped (OpenFold3 0.5.0
declares `covalent_bonds` but never reads it). Then the steps of
`InferenceDataset.create_all_features` run in order (structure + reference conformers, MSA);
templates are skipped (no shared input carries any).

The output npz holds a representation both sides can produce (feature_parity.py compares it):
token arrays, atom arrays (element Z, charge, name, atom->token, ref_space_uid, ref_mask,
ref_pos), token bonds as sorted atom-free token index pairs, and the MSA features.

Usage: python reference_features_openfold3.py INPUT.json OUT.npz [--max-msa-rows N]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

MOL_KEYS = ("protein", "rna", "dna", "ligand")


def _msa_file(text_or_path: str | None, base: Path, key: str, chain_dir: Path, name: str) -> list[str]:
    if text_or_path is None:
        return []
    target = chain_dir / f"{name}.a3m"
    if key.endswith("Path"):
        source = Path(text_or_path)
        source = source if source.is_absolute() else base / source
        shutil.copyfile(source, target)
    elif text_or_path.strip():
        target.write_text(text_or_path)
    else:
        return []
    return [str(target)]


def af3_to_query(doc: dict, base: Path, work: Path) -> dict:
    """One OpenFold3 query (its JSON format) for one AF3 job."""
    chains = []
    for entry in doc["sequences"]:
        (kind, body), = entry.items()
        ids = body["id"] if isinstance(body["id"], list) else [body["id"]]
        chain: dict = {"molecule_type": kind, "chain_ids": ids}
        if kind == "ligand":
            if "smiles" in body:
                chain["smiles"] = body["smiles"]
            else:
                chain["ccd_codes"] = list(body["ccdCodes"])
        else:
            chain["sequence"] = body["sequence"]
            mods = {}
            for mod in body.get("modifications", []):
                if kind == "protein":
                    mods[int(mod["ptmPosition"])] = mod["ptmType"]
                else:
                    mods[int(mod["basePosition"])] = mod["modificationType"]
            if mods:
                chain["non_canonical_residues"] = mods
            chain_dir = work / ids[0]
            chain_dir.mkdir(parents=True, exist_ok=True)
            main, paired = [], []
            for key in ("unpairedMsaPath", "unpairedMsa"):
                if key in body:
                    main = _msa_file(body[key], base, key, chain_dir, "bfd_uniclust_hits")
                    break
            for key in ("pairedMsaPath", "pairedMsa"):
                if key in body:
                    paired = _msa_file(body[key], base, key, chain_dir, "colabfold_paired")
                    break
            if main:
                chain["main_msa_file_paths"] = main
            if paired:
                chain["paired_msa_file_paths"] = paired
        chains.append(chain)
    # bondedAtomPairs are not passed: OpenFold3 0.5.0's Query declares covalent_bonds but its
    # inference pipeline never reads them (and rejects the multi-CCD glycans that carry them).
    query: dict = {"chains": chains}
    return {"seeds": [int(doc.get("modelSeeds", [1])[0])], "queries": {doc.get("name", "job"): query}}


def featurize(query_set_doc: dict, seed: int) -> tuple[dict, object]:
    import random

    import torch
    from openfold3.core.config.msa_pipeline_configs import MsaSampleProcessorInputInference
    from openfold3.core.data.framework.single_datasets.inference import InferenceDataset
    from openfold3.core.data.pipelines.featurization.msa import MsaFeaturizerOF3, MsaFeaturizerOF3Config
    from openfold3.core.data.pipelines.sample_processing.msa import MsaSampleProcessorInference
    from openfold3.core.data.primitives.structure.tokenization import get_token_count
    from openfold3.projects.of3_all_atom.config.dataset_configs import InferenceDatasetConfigKwargs
    from openfold3.projects.of3_all_atom.config.inference_query_format import InferenceQuerySet
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)

    query_set = InferenceQuerySet.model_validate(query_set_doc)
    (query,) = query_set.queries.values()
    msa_settings = InferenceDatasetConfigKwargs().msa   # what the inference runner uses
    dataset = InferenceDataset.__new__(InferenceDataset)  # its methods, without a full job config
    atom_array, ref_mols = InferenceDataset.get_structure_with_ref_mols(query)
    n_tokens = get_token_count(atom_array)
    features = dataset.create_structure_features(atom_array, ref_mols, n_tokens)
    processor = MsaSampleProcessorInference(config=msa_settings)
    featurizer = MsaFeaturizerOF3(config=MsaFeaturizerOF3Config(
        max_rows=msa_settings.max_rows, max_rows_paired=msa_settings.max_rows_paired,
        subsample_with_bands=msa_settings.subsample_with_bands))
    collection = processor(input=MsaSampleProcessorInputInference.create_from_inference_query_entry(
        inference_query=query))
    features.update(featurizer(atom_array=atom_array, msa_array_collection=collection, n_tokens=n_tokens))
    return features, atom_array


def normalise(features: dict, atom_array, max_msa_rows: int | None) -> dict[str, np.ndarray]:
    from openfold3.core.data.resources.residues import STANDARD_RESIDUES_WITH_GAP_3

    f = {k: (v.numpy() if hasattr(v, "numpy") else v) for k, v in features.items()}
    names = np.array(STANDARD_RESIDUES_WITH_GAP_3)
    out: dict[str, np.ndarray] = {}
    out["restype"] = names[f["restype"].argmax(-1)]
    out["residue_index"] = f["residue_index"].astype(np.int64)
    for key in ("asym_id", "entity_id", "sym_id"):
        out[key] = f[key].astype(np.int64)
    mol = np.stack([f[f"is_{k}"] for k in MOL_KEYS], -1)
    out["mol_type"] = np.array(MOL_KEYS)[mol.argmax(-1)]
    out["is_atomized"] = f["is_atomized"].astype(bool)
    bonds = np.argwhere(np.triu(f["token_bonds"].astype(bool) | f["token_bonds"].astype(bool).T))
    out["token_bonds"] = bonds.astype(np.int64).reshape(-1, 2)
    out["element"] = (f["ref_element"].argmax(-1) + 1).astype(np.int64)      # OpenFold3: index = Z - 1
    out["charge"] = f["ref_charge"].astype(np.float32)
    chars = f["ref_atom_name_chars"].argmax(-1) + 32
    out["atom_name"] = np.array(["".join(map(chr, row)).strip() for row in chars])
    out["atom_to_token"] = f["atom_to_token_index"].astype(np.int64)
    out["ref_space_uid"] = f["ref_space_uid"].astype(np.int64)
    out["ref_mask"] = f["ref_mask"].astype(bool)
    out["ref_pos"] = f["ref_pos"].astype(np.float32)
    out["atom_res_name"] = np.asarray(atom_array.res_name).astype(str)
    out["atom_residue"] = np.asarray(atom_array.res_id).astype(np.int64)
    rows = f["msa"].shape[0] if max_msa_rows is None else min(max_msa_rows, f["msa"].shape[0])
    out["msa"] = names[f["msa"][:rows].argmax(-1)]
    out["msa_rows_total"] = np.array(f["msa"].shape[0])
    out["has_deletion"] = f["has_deletion"][:rows].astype(np.float32)
    out["deletion_value"] = f["deletion_value"][:rows].astype(np.float32)
    out["profile"] = f["profile"].astype(np.float32)
    out["deletion_mean"] = f["deletion_mean"].astype(np.float32)
    out["profile_classes"] = names
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--max-msa-rows", type=int, default=None)
    args = parser.parse_args()
    doc = json.loads(args.input.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        query_set = af3_to_query(doc, args.input.resolve().parent, Path(tmp))
        features, atom_array = featurize(query_set, query_set["seeds"][0])
        out = normalise(features, atom_array, args.max_msa_rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **out)
    print(json.dumps({"tokens": int(out["restype"].shape[0]), "atoms": int(out["element"].shape[0]),
                      "msa_rows": int(out["msa_rows_total"])}))


if __name__ == "__main__":
    main()
