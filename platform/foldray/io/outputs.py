"""Optional prediction outputs beside AlphaFold 3's layout: PDB, ligand SDF, PDE, trunk
embeddings and the distogram (the formats Boltz, OpenFold3 and AF3's flags write). All off by
default, so a default run writes AF3's layout and nothing else.

Files per sample, next to `<prefix>_model.cif` (`<prefix>` = `<name>_seed-<s>_sample-<i>`, or
`<name>` for the top-ranked sample at the job's top level):

    <prefix>_model.pdb       OutputOptions.structure_format "pdb" or "both" (gemmi; "pdb"
                             writes no mmCIF). SMILES ligands are `UNL` there: PDB residue
                             names have 3 characters, `LIG_<chain>` does not fit.
    <prefix>_ligands.sdf     `ligand_sdf`, jobs with ligands: one record per ligand residue:
                             bond orders and charges of the input (SMILES, CCD or userCCD),
                             coordinates of the model, mean pLDDT (`plddt`) and per-atom pLDDT
                             (`atom_plddts`) as SD properties.

`save_pde` adds `pde` [N_token, N_token] Å (the PDE head's expectation, 1 decimal like `pae`)
to `<prefix>_confidences.json`. Per seed (the trunk runs once per seed), as AF3 names them:

    seed-<s>_embeddings/<name>_seed-<s>_embeddings.npz   single_embeddings [N_token, c_s],
                                                          pair_embeddings [N_token, N_token, c_z]
    seed-<s>_distogram/<name>_seed-<s>_distogram.npz     distogram [N_token, N_token, n_bins]:
                                                          bin probabilities (float16)
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import gemmi
import numpy as np

from foldray.features.tokenize import TokenizedStructure
from foldray.inputs.job import Job, LigandChain

StructureFormat = Literal["mmcif", "pdb", "both"]
STRUCTURE_FORMATS: tuple[str, ...] = ("mmcif", "pdb", "both")
PDB_SMILES_NAME = "UNL"    # the PDB's "unknown ligand"
# per-seed arrays a SamplePrediction may carry (trunk outputs, distogram probabilities)
SEED_ARRAYS = ("single_embeddings", "pair_embeddings", "distogram")


@dataclass(frozen=True)
class OutputOptions:
    """What a prediction writes beyond AF3's files (module docstring)."""

    structure_format: StructureFormat = "mmcif"
    ligand_sdf: bool = False
    save_pde: bool = False
    save_embeddings: bool = False
    save_distogram: bool = False

    def __post_init__(self) -> None:
        if self.structure_format not in STRUCTURE_FORMATS:
            raise ValueError(f"structure_format must be one of {', '.join(STRUCTURE_FORMATS)}, "
                             f"got {self.structure_format!r}")

    @property
    def writes_mmcif(self) -> bool:
        return self.structure_format in ("mmcif", "both")

    @property
    def writes_pdb(self) -> bool:
        return self.structure_format in ("pdb", "both")


# --------------------------------------------------------------------------- PDB


def mmcif_to_pdb(cif: str) -> str:
    """PDB text of a model mmCIF (gemmi); SMILES ligands renamed PDB_SMILES_NAME."""
    st = gemmi.make_structure_from_block(gemmi.cif.read_string(cif).sole_block())
    st.setup_entities()
    for chain in st[0]:
        for residue in chain:
            if len(residue.name) > 3:
                residue.name = PDB_SMILES_NAME
    return st.make_pdb_string(gemmi.PdbWriteOptions(minimal=False))


# --------------------------------------------------------------------------- SDF


def _ligand_molecules(tokens: TokenizedStructure, job: Job) -> list[tuple[Any, str, np.ndarray]]:
    """(RDKit molecule without conformer, record name, atom indices into tokens) per ligand
    residue, atoms in the molecule's order."""
    from rdkit import Chem

    from foldray.chem.ccd import parse_user_ccd
    from foldray.features.tokenize import entity_components

    user_ccd = parse_user_ccd(job.user_ccd, source=job.source) if job.user_ccd else None
    lookup = tokens.atom_lookup()
    out = []
    for index, entity in enumerate(job.entities):
        if not isinstance(entity, LigandChain):
            continue
        components = entity_components(job, index, user_ccd)
        for chain_id in entity.ids:
            for number, component in enumerate(components, start=1):
                keep = [k for k, name in enumerate(component.atom_names)
                        if (chain_id, number, name) in lookup]
                if not keep:
                    continue          # a cropped structure
                if entity.smiles is not None:
                    mol = Chem.MolFromSmiles(entity.smiles)    # input bond orders, aromaticity
                else:
                    mol = _component_molecule(component, keep)
                atoms = np.array([lookup[(chain_id, number, component.atom_names[k])]
                                  for k in keep])
                if mol is None or mol.GetNumAtoms() != len(atoms):
                    continue
                out.append((mol, f"{chain_id}:{number}:{component.name}", atoms))
    return out


def _component_molecule(component: Any, keep: Sequence[int]) -> Any:
    """RDKit molecule of a CCD / userCCD component's kept atoms, with its bond orders and
    formal charges; None when RDKit cannot sanitize it."""
    from rdkit import Chem

    from foldray.chem.component import BOND_AROMATIC

    orders = {1: Chem.BondType.SINGLE, 2: Chem.BondType.DOUBLE, 3: Chem.BondType.TRIPLE,
              4: Chem.BondType.QUADRUPLE, BOND_AROMATIC: Chem.BondType.AROMATIC}
    position = {k: i for i, k in enumerate(keep)}
    mol = Chem.RWMol()
    for k in keep:
        atom = Chem.Atom(int(component.elements[k]))
        atom.SetFormalCharge(int(round(float(component.charges[k]))))
        atom.SetProp("_Name", component.atom_names[k])
        mol.AddAtom(atom)
    for (i, j), order in zip(component.bonds.tolist(), component.bond_orders.tolist(), strict=True):
        if i in position and j in position:
            mol.AddBond(position[i], position[j], orders.get(int(order), Chem.BondType.SINGLE))
    try:
        Chem.SanitizeMol(mol)
    except Exception:     # RDKit valence rules refuse some CCD entries (metal complexes)
        return None
    return mol.GetMol()


def ligand_sdf(tokens: TokenizedStructure, job: Job, coords: np.ndarray,
               atom_plddt: np.ndarray) -> str:
    """SDF text of every ligand residue of one sample ("" without ligands)."""
    from rdkit import Chem
    from rdkit.Geometry import Point3D

    buffer = io.StringIO()
    writer = Chem.SDWriter(buffer)
    for mol, name, atoms in _ligand_molecules(tokens, job):
        mol = Chem.Mol(mol)
        conformer = Chem.Conformer(mol.GetNumAtoms())
        for i, atom in enumerate(atoms.tolist()):
            conformer.SetAtomPosition(i, Point3D(*map(float, coords[atom])))
        conformer.Set3D(True)
        mol.RemoveAllConformers()
        mol.AddConformer(conformer, assignId=True)
        plddt = np.asarray(atom_plddt, np.float64)[atoms]
        mol.SetProp("_Name", name)
        mol.SetProp("chain_id", name.split(":", 1)[0])
        mol.SetProp("plddt", f"{plddt.mean():.2f}")
        mol.SetProp("atom_plddts", " ".join(f"{v:.2f}" for v in plddt.tolist()))
        writer.write(mol)
    writer.close()
    return buffer.getvalue()


# --------------------------------------------------------------------------- per seed arrays


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def seed_files(name: str, seed: int, arrays: dict[str, np.ndarray],
               options: OutputOptions) -> list[tuple[str, bytes]]:
    """(relative path, npz bytes) of one seed's embeddings and distogram, as asked."""
    files = []
    if options.save_embeddings and "single_embeddings" in arrays:
        files.append((f"seed-{seed}_embeddings/{name}_seed-{seed}_embeddings.npz", npz_bytes({
            "single_embeddings": arrays["single_embeddings"],
            "pair_embeddings": arrays["pair_embeddings"]})))
    if options.save_distogram and "distogram" in arrays:
        files.append((f"seed-{seed}_distogram/{name}_seed-{seed}_distogram.npz",
                      npz_bytes({"distogram": arrays["distogram"]})))
    return files
