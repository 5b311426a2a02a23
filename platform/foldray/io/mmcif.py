"""Predicted structures as mmCIF, laid out like AlphaFold 3's `<job>_model.cif`.

Shapes: coords [N_atom, 3] Å, b_factors [N_atom] per-atom pLDDT (0-100); atoms in the
`TokenizedStructure` order (chain, residue, component atom order). Arrays may be padded past
N_atom (as the model returns them); the padding is sliced away here.

Layout, as AF3 writes it: one data block named after the job; chains are the input chain
ids (label_asym_id = auth_asym_id); residues are numbered 1..n along each chain as in the
input (label_seq_id for polymers, '.' for ligands; auth_seq_id always); entities carry
their full polymer sequence (_entity_poly_seq) and polymer type; atom names are those of
the input (CCD, or generated from the SMILES); B-factor = pLDDT, occupancy 1. Bonds the
user declared (bondedAtomPairs) become covalent `_struct_conn` rows. Metadata: `_entry`,
`_software`, and the ModelCIF pLDDT declaration (`_ma_qa_metric` with its global and
per-residue values). SMILES ligands are residues `LIG_<chain>` (AF3's names; never a CCD
code) whose chemistry is written as CCD-style `_chem_comp_atom` / `_chem_comp_bond` rows
(plus the SMILES in `_pdbx_chem_comp_descriptor`), so reading the file back
(`foldray.inputs.mmcif_input`) rebuilds the same molecule.
SI deviation: none in content; AF3's licence and citation blocks are AlphaFold-specific and
left out.
"""

from __future__ import annotations

import gemmi
import numpy as np

import foldray
from foldray.chem.component import CCD_BOND_ORDERS, Component
from foldray.chem.smiles import component_from_smiles, smiles_component_name
from foldray.features.tokenize import ChainInfo, TokenizedStructure
from foldray.inputs.job import Job, LigandChain
from foldray.residues import STANDARD_RESIDUES

DEFAULT_MODEL_VERSION = f"foldray {foldray.__version__}"

_POLYMER_TYPE = {"protein": gemmi.PolymerType.PeptideL, "rna": gemmi.PolymerType.Rna,
                 "dna": gemmi.PolymerType.Dna}
# _chem_comp.type per chain type (PDB vocabulary); gemmi writes '.' without a dictionary.
_BOND_ORDER_NAMES = {code: name for name, code in CCD_BOND_ORDERS.items()}
_CHEM_COMP_TYPE = {"protein": "L-peptide linking", "rna": "RNA linking", "dna": "DNA linking",
                   "ligand": "non-polymer"}


def structure_to_mmcif(tokens: TokenizedStructure, job: Job, coords: np.ndarray,
                       b_factors: np.ndarray, *, name: str,
                       model_version: str = DEFAULT_MODEL_VERSION) -> str:
    """mmCIF text of one predicted structure (readable by gemmi, biotite, PyMOL, ChimeraX).

    `name` becomes the data block name and `_entry.id` (use `job.safe_name`: no spaces).
    Coordinates are written with 3 decimals and pLDDT with 2, as AF3 does.
    """
    coords, b_factors = _atom_arrays(tokens, coords, b_factors)
    st = _build_structure(tokens, job, coords, b_factors, name)
    groups = gemmi.MmcifOutputGroups(True)
    groups.cell = groups.symmetry = False    # a prediction has no unit cell
    groups.software = groups.author = False   # written below
    groups.auth_all = True                     # auth_comp_id/auth_atom_id too (biotite reads them)
    doc = st.make_mmcif_document(groups)
    block = doc.sole_block()
    _add_chem_comp_types(block, tokens)
    _add_smiles_chemistry(block, tokens, job)
    _add_metadata(block, tokens, b_factors, model_version)
    return doc.as_string()


def _atom_arrays(tokens: TokenizedStructure, coords: np.ndarray,
                 b_factors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = tokens.n_atoms
    coords = np.asarray(coords, dtype=np.float64)
    b_factors = np.asarray(b_factors, dtype=np.float64)
    if coords.ndim != 2 or coords.shape[1] != 3 or coords.shape[0] < n:
        raise ValueError(f"coords must be [N_atom={n} (or padded), 3], got {coords.shape}")
    if b_factors.ndim != 1 or b_factors.shape[0] < n:
        raise ValueError(f"b_factors must be [N_atom={n} (or padded)], got {b_factors.shape}")
    coords, b_factors = coords[:n], b_factors[:n]
    if not np.isfinite(coords).all():
        bad = int(np.flatnonzero(~np.isfinite(coords).all(axis=1))[0])
        raise ValueError(f"coords of atom {bad} ({tokens.atom_name[bad]}) are not finite")
    # AF3 precision: 3 decimals for Å, 2 for pLDDT; NaN pLDDT (no head) written as 0
    return np.round(coords, 3), np.round(np.nan_to_num(b_factors, nan=0.0), 2)


def residue_starts(tokens: TokenizedStructure) -> np.ndarray:
    """[N_residue + 1] atom offsets: residue k holds atoms starts[k]:starts[k+1]."""
    change = (np.diff(tokens.atom_chain) != 0) | (np.diff(tokens.atom_residue) != 0)
    return np.concatenate([[0], np.flatnonzero(change) + 1, [tokens.n_atoms]])


def _is_hetero(chain: ChainInfo, code: str) -> bool:
    return chain.mol_type == "ligand" or code not in STANDARD_RESIDUES[chain.mol_type]


def _build_structure(tokens: TokenizedStructure, job: Job, coords: np.ndarray,
                     b_factors: np.ndarray, name: str) -> gemmi.Structure:
    st = gemmi.Structure()
    st.name = name
    model = gemmi.Model(1)
    starts = residue_starts(tokens)
    elements = [gemmi.Element(int(z)) for z in range(int(tokens.atom_element.max(initial=0)) + 1)]
    names = tokens.atom_name.tolist()
    element_of = tokens.atom_element.tolist()
    charge_of = np.rint(tokens.atom_charge).astype(int).tolist()
    xyz, plddt = coords.tolist(), b_factors.tolist()
    chain_objects: dict[int, gemmi.Chain] = {}
    for k in range(len(starts) - 1):
        first, end = int(starts[k]), int(starts[k + 1])
        chain_index = int(tokens.atom_chain[first])
        info = tokens.chains[chain_index]
        if chain_index not in chain_objects:
            chain_objects[chain_index] = gemmi.Chain(info.chain_id)
        number = int(tokens.atom_residue[first])
        residue = gemmi.Residue()
        residue.name = str(tokens.atom_res_name[first])
        residue.seqid = gemmi.SeqId(number, " ")
        residue.subchain = info.chain_id
        residue.entity_id = str(info.entity_id)
        if info.mol_type != "ligand":
            residue.label_seq = number
        residue.het_flag = "H" if _is_hetero(info, residue.name) else "A"
        for i in range(first, end):
            atom = gemmi.Atom()
            atom.name = names[i]
            atom.element = elements[element_of[i]]
            atom.charge = charge_of[i]
            atom.pos = gemmi.Position(*xyz[i])
            atom.occ = 1.0
            atom.b_iso = plddt[i]
            residue.add_atom(atom)
        chain_objects[chain_index].add_residue(residue)
    for chain_index in sorted(chain_objects):
        model.add_chain(chain_objects[chain_index])
    st.add_model(model)
    st.entities.extend(_entities(tokens))
    st.connections.extend(_connections(tokens, job))
    return st


def _entities(tokens: TokenizedStructure) -> list[gemmi.Entity]:
    """One mmCIF entity per foldray entity_id (identical chemistry shares it, as in Table 5)."""
    entities: dict[int, gemmi.Entity] = {}
    for chain in tokens.chains:
        entity = entities.get(chain.entity_id)
        if entity is None:
            entity = gemmi.Entity(str(chain.entity_id))
            if chain.mol_type == "ligand":
                # several CCD codes in one ligand chain = a glycan (AF3: branched)
                entity.entity_type = gemmi.EntityType.Branched if len(chain.residue_names) > 1 \
                    else gemmi.EntityType.NonPolymer
            else:
                entity.entity_type = gemmi.EntityType.Polymer
                entity.polymer_type = _POLYMER_TYPE[chain.mol_type]
                entity.full_sequence = list(chain.residue_names)
            entities[chain.entity_id] = entity
        entity.subchains = [*entity.subchains, chain.chain_id]
    return [entities[k] for k in sorted(entities)]


def _connections(tokens: TokenizedStructure, job: Job) -> list[gemmi.Connection]:
    """bondedAtomPairs as covalent _struct_conn rows (pairs whose atoms exist here)."""
    lookup = tokens.atom_lookup()
    connections = []
    for i, pair in enumerate(job.bonded_atom_pairs, start=1):
        if any((ref.chain_id, ref.residue, ref.atom_name) not in lookup for ref in pair):
            continue   # a cropped structure
        connection = gemmi.Connection()
        connection.name = f"covale{i}"
        connection.type = gemmi.ConnectionType.Covale
        addresses = []
        for ref in pair:
            atom = lookup[(ref.chain_id, ref.residue, ref.atom_name)]
            addresses.append(gemmi.AtomAddress(ref.chain_id, gemmi.SeqId(ref.residue, " "),
                                               str(tokens.atom_res_name[atom]), ref.atom_name))
        connection.partner1, connection.partner2 = addresses
        connections.append(connection)
    return connections


def _add_chem_comp_types(block: gemmi.cif.Block, tokens: TokenizedStructure) -> None:
    types: dict[str, str] = {}
    for chain in tokens.chains:
        for code in chain.residue_names:
            types.setdefault(code, _CHEM_COMP_TYPE[chain.mol_type])
    codes = sorted(types)
    block.set_mmcif_category("_chem_comp", {"id": codes, "type": [types[c] for c in codes]})


def smiles_components(tokens: TokenizedStructure, job: Job) -> list[tuple[Component, str]]:
    """(component, SMILES) of every SMILES ligand present in `tokens`, in entity order."""
    present = set(np.unique(tokens.atom_res_name).tolist()) if tokens.n_atoms else set()
    found = []
    for entity in job.entities:
        if isinstance(entity, LigandChain) and entity.smiles is not None:
            name = smiles_component_name(entity.ids[0])
            if name in present:
                found.append((component_from_smiles(entity.smiles, name=name), entity.smiles))
    return found


def _add_smiles_chemistry(block: gemmi.cif.Block, tokens: TokenizedStructure, job: Job) -> None:
    """`_chem_comp_atom` / `_chem_comp_bond` (CCD layout) of the SMILES ligands, so a reader
    rebuilds the same molecule (elements, charges, bond orders, reference conformer) from the
    file alone, and `_pdbx_chem_comp_descriptor` keeps the SMILES itself."""
    components = smiles_components(tokens, job)
    if not components:
        return
    atoms: dict[str, list] = {key: [] for key in (
        "comp_id", "atom_id", "type_symbol", "charge", "pdbx_leaving_atom_flag",
        "pdbx_model_Cartn_x_ideal", "pdbx_model_Cartn_y_ideal", "pdbx_model_Cartn_z_ideal",
        "pdbx_ordinal")}
    bonds: dict[str, list] = {key: [] for key in (
        "comp_id", "atom_id_1", "atom_id_2", "value_order", "pdbx_ordinal")}
    descriptors: dict[str, list] = {key: [] for key in (
        "comp_id", "type", "program", "program_version", "descriptor")}
    for component, smiles in components:
        for k, atom_name in enumerate(component.atom_names):
            xyz = component.ref_pos[k] if component.ref_mask[k] else (None, None, None)
            atoms["comp_id"].append(component.name)
            atoms["atom_id"].append(atom_name)
            atoms["type_symbol"].append(gemmi.Element(int(component.elements[k])).name.upper())
            atoms["charge"].append(str(int(round(float(component.charges[k])))))
            atoms["pdbx_leaving_atom_flag"].append("N")
            for axis, value in zip("xyz", xyz, strict=True):
                atoms[f"pdbx_model_Cartn_{axis}_ideal"].append(
                    None if value is None else f"{float(value):.3f}")
            atoms["pdbx_ordinal"].append(str(k + 1))
        for k, ((i, j), order) in enumerate(zip(component.bonds.tolist(),
                                                component.bond_orders.tolist(), strict=True)):
            bonds["comp_id"].append(component.name)
            bonds["atom_id_1"].append(component.atom_names[i])
            bonds["atom_id_2"].append(component.atom_names[j])
            bonds["value_order"].append(_BOND_ORDER_NAMES.get(int(order), "SING"))
            bonds["pdbx_ordinal"].append(str(k + 1))
        descriptors["comp_id"].append(component.name)
        descriptors["type"].append("SMILES")
        descriptors["program"].append("foldray")
        descriptors["program_version"].append(foldray.__version__)
        descriptors["descriptor"].append(smiles)
    block.set_mmcif_category("_chem_comp_atom", atoms)
    if bonds["comp_id"]:
        block.set_mmcif_category("_chem_comp_bond", bonds)
    block.set_mmcif_category("_pdbx_chem_comp_descriptor", descriptors)


def _add_metadata(block: gemmi.cif.Block, tokens: TokenizedStructure, b_factors: np.ndarray,
                  model_version: str) -> None:
    """_software and the ModelCIF pLDDT declaration (global mean and per residue)."""
    block.set_mmcif_category("_software", {
        "pdbx_ordinal": ["1"], "name": ["foldray"], "version": [model_version],
        "type": ["package"], "description": ["Structure prediction"],
        "classification": ["other"]})
    block.set_mmcif_category("_ma_software_group", {
        "ordinal_id": ["1"], "group_id": ["1"], "software_id": ["1"]})
    block.set_mmcif_category("_ma_qa_metric", {
        "id": ["1", "2"], "name": ["pLDDT", "pLDDT"], "type": ["pLDDT", "pLDDT"],
        "mode": ["global", "local"], "software_group_id": ["1", "1"]})
    global_plddt = float(b_factors.mean()) if len(b_factors) else 0.0
    block.set_mmcif_category("_ma_qa_metric_global", {
        "ordinal_id": ["1"], "model_id": ["1"], "metric_id": ["1"],
        "metric_value": [f"{global_plddt:.2f}"]})
    starts = residue_starts(tokens)
    first = starts[:-1]
    sums = np.add.reduceat(b_factors, first) if len(first) else np.zeros(0)
    means = sums / np.diff(starts)
    chain_ids = [tokens.chains[c].chain_id for c in tokens.atom_chain[first].tolist()]
    is_ligand = [tokens.chains[c].mol_type == "ligand" for c in tokens.atom_chain[first].tolist()]
    block.set_mmcif_category("_ma_qa_metric_local", {
        "ordinal_id": [str(k) for k in range(1, len(first) + 1)],
        "model_id": ["1"] * len(first),
        "label_asym_id": chain_ids,
        "label_seq_id": [False if lig else str(n) for lig, n in
                         zip(is_ligand, tokens.atom_residue[first].tolist(), strict=True)],
        "label_comp_id": tokens.atom_res_name[first].tolist(),
        "metric_id": ["2"] * len(first),
        "metric_value": [f"{v:.2f}" for v in means.tolist()]})
