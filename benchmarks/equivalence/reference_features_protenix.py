"""Run Protenix's own inference featurizer on an AF3 JSON input and dump normalised features.

Runs INSIDE the reference virtual environment (protenix 2.0.0 from PyPI, no foldray). Protenix's
CCD files are built offline first (protenix_ccd.py: the job's components + standard residues,
from the CCD inside the biotite wheel) and PROTENIX_ROOT_DIR points at them.

Protenix reads its own JSON dialect, so the AF3 job is translated entity by entity (the only
harness-made step, kept literal):
  protein / dna / rna  -> proteinChain / dnaSequence / rnaSequence {sequence, count = len(ids),
                          id = the AF3 chain ids}; AF3 `modifications` -> `modifications` with
                          "CCD_<code>" (ptmType/ptmPosition, modificationType/basePosition);
                          unpairedMsa(Path) / pairedMsa(Path) -> the same keys (paths absolute);
  ligand ccdCodes      -> ligand {"ligand": "CCD_<c1>_<c2>..."} (ions too: Protenix's "ion"
                          entity is skipped by its MSA featurizer, json "ligand" CCD_ is the
                          same atoms); ligand smiles -> ligand {"ligand": <smiles>};
  bondedAtomPairs      -> covalent_bonds {entity1, copy1, position1, atom1, entity2, ...}
                          (entity = 1-based entity index, copy = 1-based index of the chain id
                          in that entity's ids, position = AF3 residue index).
Then `InferenceDataset.process_one` runs (protenix/data/inference/infer_dataloader.py:140) with
the inference defaults of configs/configs_inference.py: use_msa True, msa_pair_as_unpair True,
use_rna_msa False, use_template False, no ESM, no guidance. No shared input carries templates.

The output npz holds the normalised representation of reference_features_openfold3.py.

Usage: python reference_features_protenix.py INPUT.json OUT.npz [--max-msa-rows N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import types
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from protenix_ccd import CCD_ROOT, ensure_ccd  # noqa: E402

MOL_KEYS = ("protein", "rna", "dna", "ligand")
KINDS = {"protein": "proteinChain", "dna": "dnaSequence", "rna": "rnaSequence"}


def af3_to_protenix(doc: dict, base: Path) -> tuple[dict, set[str]]:
    """One Protenix job (its JSON dialect) for one AF3 job; the CCD codes it names."""
    sequences, codes, where = [], set(), {}
    for index, entry in enumerate(doc["sequences"]):
        (kind, body), = entry.items()
        ids = body["id"] if isinstance(body["id"], list) else [body["id"]]
        for copy, chain_id in enumerate(ids):
            where[chain_id] = (index + 1, copy + 1)
        if kind == "ligand":
            if "smiles" in body:
                ligand = body["smiles"]
            else:
                codes.update(body["ccdCodes"])
                ligand = "CCD_" + "_".join(body["ccdCodes"])
            sequences.append({"ligand": {"ligand": ligand, "count": len(ids), "id": list(ids)}})
            continue
        chain: dict = {"sequence": body["sequence"], "count": len(ids), "id": list(ids)}
        for key in ("unpairedMsa", "pairedMsa"):
            if body.get(key + "Path"):
                path = Path(body[key + "Path"])
                chain[key + "Path"] = str(path if path.is_absolute() else (base / path).resolve())
            elif body.get(key):
                chain[key] = body[key]
        mods = []
        for mod in body.get("modifications", []):
            if kind == "protein":
                mods.append({"ptmType": "CCD_" + mod["ptmType"], "ptmPosition": int(mod["ptmPosition"])})
                codes.add(mod["ptmType"])
            else:
                mods.append({"modificationType": "CCD_" + mod["modificationType"],
                             "basePosition": int(mod["basePosition"])})
                codes.add(mod["modificationType"])
        if mods:
            chain["modifications"] = mods
        sequences.append({KINDS[kind]: chain})
    job: dict = {"name": doc.get("name", "job"), "sequences": sequences}
    bonds = []
    for left, right in doc.get("bondedAtomPairs") or []:
        bond = {}
        for side, (chain_id, position, atom) in ((1, left), (2, right)):
            entity, copy = where[chain_id]
            bond.update({f"entity{side}": entity, f"copy{side}": copy,
                         f"position{side}": int(position), f"atom{side}": atom})
        bonds.append(bond)
    if bonds:
        job["covalent_bonds"] = bonds
    return job, codes


def _stub_esm() -> None:
    """protenix.data.esm imports fair-esm at module level; ESM is off at inference for the
    models compared here, so an empty stand-in satisfies the import (nothing calls it)."""
    try:
        import esm  # noqa: F401
    except ImportError:
        stub = types.ModuleType("esm")
        stub.FastaBatchedDataset = stub.pretrained = None
        sys.modules["esm"] = stub


def featurize(job: dict, seed: int):
    import random

    import torch
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    _stub_esm()
    from protenix.data.inference.infer_dataloader import InferenceDataset

    dataset = InferenceDataset.__new__(InferenceDataset)   # its process_one, without a runner config
    dataset.configs = types.SimpleNamespace(
        sample_diffusion=types.SimpleNamespace(guidance=types.SimpleNamespace(enable=False)))
    dataset.use_msa, dataset.msa_pair_as_unpair, dataset.use_rna_msa = True, True, False
    dataset.use_template, dataset.online_template_featurizer, dataset.esm_enable = False, None, False
    data, atom_array, _ = dataset.process_one(job)
    return data["input_feature_dict"], atom_array


def normalise(features: dict, atom_array, max_msa_rows: int | None) -> dict[str, np.ndarray]:
    from protenix.data.constants import STD_RESIDUES, STD_RESIDUES_WITH_GAP_ID_TO_NAME

    f = {k: (v.numpy() if hasattr(v, "numpy") else np.asarray(v)) for k, v in features.items()}
    names = np.array([STD_RESIDUES_WITH_GAP_ID_TO_NAME[i] for i in range(32)])
    centre = np.flatnonzero(np.asarray(atom_array.centre_atom_mask) == 1)
    out: dict[str, np.ndarray] = {}
    out["restype"] = names[f["restype"].argmax(-1)]
    out["residue_index"] = f["residue_index"].astype(np.int64)
    for key in ("asym_id", "entity_id", "sym_id"):
        out[key] = f[key].astype(np.int64)
    # the model's is_protein/rna/dna/ligand (atom-level, the chain's most frequent residue type,
    # protenix/data/core/parser.py:2574-2604) at each token's centre atom
    mol = np.stack([f[f"is_{k}"][centre] for k in MOL_KEYS], -1)
    out["mol_type"] = np.array(MOL_KEYS)[mol.argmax(-1)]
    # tokenizer.py:126-148: one token per atom unless a standard residue whose own CCD type
    # (residue-level mol_type, parser.py:2545-2571) is not ligand
    residue_type = np.asarray(atom_array.mol_type)[centre].astype(str)
    res_name = np.asarray(atom_array.res_name)[centre].astype(str)
    out["is_atomized"] = ~np.isin(res_name, list(STD_RESIDUES)) | (residue_type == "ligand")
    bonds = f["token_bonds"].astype(bool)
    out["token_bonds"] = np.argwhere(np.triu(bonds | bonds.T, k=1)).astype(np.int64).reshape(-1, 2)
    out["element"] = (f["ref_element"].argmax(-1) + 1).astype(np.int64)      # Protenix: index = Z - 1
    out["charge"] = f["ref_charge"].astype(np.float32)
    chars = f["ref_atom_name_chars"].reshape(len(out["element"]), 4, 64).argmax(-1) + 32
    out["atom_name"] = np.array(["".join(map(chr, row)).strip() for row in chars])
    out["atom_to_token"] = f["atom_to_token_idx"].astype(np.int64)
    out["ref_space_uid"] = f["ref_space_uid"].astype(np.int64)
    out["ref_mask"] = f["ref_mask"].astype(bool)
    out["ref_pos"] = f["ref_pos"].astype(np.float32)
    out["atom_res_name"] = np.asarray(atom_array.res_name).astype(str)
    out["atom_residue"] = np.asarray(atom_array.res_id).astype(np.int64)
    msa = f["msa"]
    msa = msa.argmax(-1) if msa.ndim == 3 else msa.astype(np.int64)
    rows = msa.shape[0] if max_msa_rows is None else min(max_msa_rows, msa.shape[0])
    out["msa"] = names[msa[:rows]]
    out["msa_rows_total"] = np.array(msa.shape[0])
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
    job, codes = af3_to_protenix(doc, args.input.resolve().parent)
    os.environ["PROTENIX_ROOT_DIR"] = str(ensure_ccd(codes, CCD_ROOT))   # read at protenix import
    features, atom_array = featurize(job, int(doc.get("modelSeeds", [1])[0]))
    out = normalise(features, atom_array, args.max_msa_rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **out)
    print(json.dumps({"tokens": int(out["restype"].shape[0]), "atoms": int(out["element"].shape[0]),
                      "msa_rows": int(out["msa_rows_total"])}))


if __name__ == "__main__":
    main()
