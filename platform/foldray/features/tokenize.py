"""Tokenization (SI 2.6): a `Job` -> atoms grouped into tokens, in input order.

One token per standard amino acid / nucleotide residue (Table 13); one token per heavy atom
for ligands, ions and modified residues. Atoms come from each residue's chemical component
(hydrogens dropped). Polymer residues lose their leaving atoms (they leave when the
backbone bond forms), except at the chain ends, as AlphaFold 3 does: the C-terminal OXT of a
protein chain and the 5' OP3 of a nucleic-acid chain stay (`FeaturizationConfig`
keep_terminal_leaving_atoms; OpenFold3 drops them).

Shapes: atoms [N_atom], tokens [N_token]. Ids: asym_id and entity_id start at 1 (0 is left
for padding), sym_id starts at 0 within each entity, token_index at 0, residue_index is the
1-based residue number in the input chain.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from foldray.chem.ccd import get_component, is_glycan_type, parse_user_ccd
from foldray.chem.component import Component
from foldray.chem.smiles import component_from_smiles, smiles_component_name
from foldray.errors import InputError
from foldray.features.config import DEFAULT_FEATURIZATION, FeaturizationConfig
from foldray.inputs.job import Entity, Job, LigandChain, PolymerChain
from foldray.inputs.size import check_token_budget
from foldray.limits import DEFAULT_MAX_TOKENS  # noqa: F401  (defined where `--help` can import it fast)
from foldray.residues import (
    CENTRE_ATOM,
    MOL_TYPES,
    ONE_TO_CCD,
    RESTYPE_INDEX,
    STANDARD_RESIDUES,
    UNKNOWN_RESTYPE,
    MolType,
    representative_atom,
)


@dataclass(frozen=True, kw_only=True, slots=True)
class ChainInfo:
    """One chain copy of an entity, with its token range [token_start, token_end)."""

    chain_id: str
    entity_index: int          # position of the entity in Job.entities
    entity_id: int
    sym_id: int
    mol_type: MolType
    token_start: int
    token_end: int
    residue_names: tuple[str, ...]   # CCD code per residue, in order


@dataclass(frozen=True, kw_only=True, slots=True)
class TokenizedStructure:
    """Atoms and tokens of a job, before features. All arrays are numpy."""

    chains: tuple[ChainInfo, ...]
    # atoms [N_atom]
    atom_name: np.ndarray        # <U4
    atom_element: np.ndarray     # int16 atomic number
    atom_charge: np.ndarray      # float32 formal charge
    atom_ref_pos: np.ndarray     # [N_atom, 3] float32, conformer frame of its residue
    atom_ref_mask: np.ndarray    # bool
    atom_space_uid: np.ndarray   # int32, one per (chain, residue)
    atom_to_token: np.ndarray    # int32
    atom_chain: np.ndarray       # int32 index into `chains`
    atom_residue: np.ndarray     # int32 1-based residue number
    atom_res_name: np.ndarray    # str: CCD code of the atom's residue (SMILES: LIG_<chain>)
    # tokens [N_token]
    residue_index: np.ndarray    # int32
    asym_id: np.ndarray          # int32
    entity_id: np.ndarray        # int32
    sym_id: np.ndarray           # int32
    restype: np.ndarray          # int8 class in residues.RESTYPES
    mol_type: np.ndarray         # int8 index in residues.MOL_TYPES
    is_standard: np.ndarray      # bool, one token for the whole residue
    centre_atom: np.ndarray      # int32 atom index (SI 2.6 token centre)
    rep_atom: np.ndarray         # int32 atom index (SI 4.4 distogram atom)
    # bonds that enter token_bonds, [N_bond, 2] atom indices: polymer-ligand and ligand-ligand
    # (Table 5), where atomized modified residues count as ligands (AF3 features.py:1723-1752)
    bonds: np.ndarray

    def __repr__(self) -> str:
        """A short summary, not the per-atom arrays (printed in notebooks)."""
        chains = ", ".join(f"{c.chain_id}:{c.mol_type}" for c in self.chains[:8])
        more = f", +{len(self.chains) - 8}" if len(self.chains) > 8 else ""
        return (f"TokenizedStructure(chains=[{chains}{more}], tokens={self.n_tokens}, "
                f"atoms={self.n_atoms}, bonds={len(self.bonds)})")

    @property
    def n_tokens(self) -> int:
        return int(self.residue_index.shape[0])

    @property
    def n_atoms(self) -> int:
        return int(self.atom_name.shape[0])

    @property
    def token_index(self) -> np.ndarray:
        return np.arange(self.n_tokens, dtype=np.int32)

    def atom_lookup(self) -> dict[tuple[str, int, str], int]:
        """(chain id, residue number, atom name) -> atom index."""
        chain_ids = [c.chain_id for c in self.chains]
        return {(chain_ids[c], int(r), str(n)): i for i, (c, r, n) in
                enumerate(zip(self.atom_chain, self.atom_residue, self.atom_name, strict=True))}


def _polymer_atoms_kept(component: Component, keep_leaving: frozenset[str]) -> np.ndarray:
    """Indices of a polymer residue's atoms: leaving atoms go, except those in `keep_leaving`
    (a chain end's OXT / OP3)."""
    leaving = component.leaving.copy()
    if keep_leaving:
        leaving &= np.array([name not in keep_leaving for name in component.atom_names])
    return np.flatnonzero(~leaving)


def terminal_leaving_atoms(mol_type: MolType, residue_number: int, n_residues: int,
                           featurization: FeaturizationConfig) -> frozenset[str]:
    """Leaving atoms a residue keeps because it ends its chain: OXT of a protein's last
    residue, OP3 of a nucleic acid's first (AF3 atom_layout.get_link_drop_atoms)."""
    if not featurization.keep_terminal_leaving_atoms:
        return frozenset()
    if mol_type == "protein" and residue_number == n_residues:
        return frozenset({"OXT"})
    if mol_type in ("rna", "dna") and residue_number == 1:
        return frozenset({"OP3"})
    return frozenset()


def entity_components(job: Job, entity_index: int, user_ccd: Mapping | None) -> list[Component]:
    """The chemical component of every residue of an entity, errors located in the job."""
    entity = job.entities[entity_index]
    kind = entity.mol_type
    base = f"sequences[{entity_index}].{kind}"
    try:
        if isinstance(entity, LigandChain) and entity.smiles is not None:
            try:
                return [component_from_smiles(entity.smiles,
                                              name=smiles_component_name(entity.ids[0]))]
            except InputError as err:
                raise err.located(field_prefix="smiles") from None
        if isinstance(entity, LigandChain):
            components = []
            for j, code in enumerate(entity.ccd_codes or ()):
                try:
                    components.append(get_component(code, user_ccd=user_ccd))
                except InputError as err:
                    raise err.located(field_prefix=f"ccdCodes[{j}]") from None
            return components
        mod_index = {m.position: k for k, m in enumerate(entity.modifications)}
        components = []
        mod_key = "ptmType" if kind == "protein" else "modificationType"
        for position, code in enumerate(entity.ccd_sequence(), start=1):
            try:
                components.append(get_component(code, user_ccd=user_ccd))
            except InputError as err:
                where = f"modifications[{mod_index[position]}].{mod_key}" \
                    if position in mod_index else "sequence"
                raise err.located(field_prefix=where) from None
        return components
    except InputError as err:
        raise err.located(source=job.source, job=job.name, field_prefix=base) from None


def is_glycan(component: Component) -> bool:
    """AF3's glycans (foldray.chem.ccd.is_glycan_type)."""
    return is_glycan_type(component.chem_type)


def leaving_groups(component: Component, atom: str) -> list[frozenset[str]]:
    """The CCD leaving groups hanging off `atom`: each leaving heavy atom bonded to it with
    the leaving atoms connected to that one (ptx:protenix/data/core/ccd.py:50-72)."""
    names = component.atom_names
    if atom not in names or not len(component.bonds):
        return []
    neighbours: dict[int, list[int]] = {}
    for i, j in component.bonds.tolist():
        neighbours.setdefault(i, []).append(j)
        neighbours.setdefault(j, []).append(i)
    centre = names.index(atom)
    groups = []
    for start in neighbours.get(centre, []):
        if not component.leaving[start]:
            continue
        group, todo = {start}, [start]
        while todo:
            for k in neighbours.get(todo.pop(), []):
                if k != centre and component.leaving[k] and k not in group:
                    group.add(k)
                    todo.append(k)
        groups.append(frozenset(names[k] for k in group))
    return groups


def bond_leaving_atoms(job: Job, components: list[list[Component]],
                       featurization: FeaturizationConfig) -> dict[tuple[str, int], frozenset[str]]:
    """Atoms that leave because of covalent bonds, per (chain id, residue number).

    "glycan_o1" (AF3): O1 of every glycan residue of a ligand chain, bonded or not, unless a
    bondedAtomPairs entry names that O1 (af3:src/alphafold3/model/pipeline/
    structure_cleaning.py:134-163 with fix_standalone_glycans=False, pipeline.py:151,159;
    atom_layout.py get_link_drop_atoms). "bonded" (Protenix): for each bondedAtomPairs atom,
    one CCD leaving group of that atom per bond, the first ones (Protenix draws them at
    random; a glycan C1 has one: O1) (ptx:protenix/data/inference/json_parser.py:181-234)."""
    mode = featurization.ligand_leaving_atoms
    chains = {chain_id: (entity, comps) for entity, comps in zip(job.entities, components, strict=True)
              for chain_id in entity.ids}
    bonded: dict[tuple[str, int], list[str]] = {}
    for pair in job.bonded_atom_pairs:
        for ref in pair:
            bonded.setdefault((ref.chain_id, ref.residue), []).append(ref.atom_name)
    dropped: dict[tuple[str, int], frozenset[str]] = {}
    if mode == "glycan_o1":
        for chain_id, (entity, comps) in chains.items():
            if entity.mol_type != "ligand":
                continue
            for number, component in enumerate(comps, start=1):
                if is_glycan(component) and "O1" in component.atom_names \
                        and "O1" not in bonded.get((chain_id, number), ()):
                    dropped[(chain_id, number)] = frozenset({"O1"})
    elif mode == "bonded":
        for (chain_id, number), atoms in bonded.items():
            comps = chains.get(chain_id, (None, []))[1]
            if not 1 <= number <= len(comps):
                continue                          # reported by add_user_bonds
            names: set[str] = set()
            for atom in set(atoms):
                groups = leaving_groups(comps[number - 1], atom)
                for group in groups[:atoms.count(atom)]:
                    names |= group
            if names:
                dropped[(chain_id, number)] = frozenset(names)
    return dropped


def _is_per_atom(mol_type: MolType, code: str) -> bool:
    return mol_type == "ligand" or code not in STANDARD_RESIDUES[mol_type]


def ccd_kind(chem_type: str) -> MolType:
    """Molecule kind of a CCD _chem_comp.type, as Protenix reads it
    (ptx:protenix/data/core/ccd.py:150-179 get_mol_type): peptide linking (not PEPTIDE-LIKE)
    is protein, then DNA, then RNA; anything else a ligand."""
    kind = chem_type.upper()
    if "PEPTIDE" in kind and kind != "PEPTIDE-LIKE":
        return "protein"
    if "DNA" in kind:
        return "dna"
    return "rna" if "RNA" in kind else "ligand"


def _restype_of(mol_type: MolType, component: Component,
                featurization: FeaturizationConfig = DEFAULT_FEATURIZATION) -> int:
    """Class of a token: the residue itself, else its standard parent, else unknown
    (AF3; OpenFold3 `protein_unknown`: the residue itself, else the protein UNK)."""
    if mol_type == "ligand":
        return UNKNOWN_RESTYPE["ligand"]
    by_ccd_type = featurization.modified_residue_restype == "ccd_type"
    if by_ccd_type and component.name not in STANDARD_RESIDUES[mol_type]:
        mol_type = ccd_kind(component.chem_type)        # Protenix: the residue's own CCD type decides
        if mol_type == "ligand":
            return UNKNOWN_RESTYPE["protein"]
    standard = STANDARD_RESIDUES[mol_type]
    if featurization.modified_residue_restype == "protein_unknown":
        return RESTYPE_INDEX[component.name] if component.name in standard else UNKNOWN_RESTYPE["protein"]
    for candidate in (component.name, component.parent):
        if candidate in standard:
            return RESTYPE_INDEX[candidate]
    if component.one_letter and component.one_letter in ONE_TO_CCD[mol_type]:
        return RESTYPE_INDEX[ONE_TO_CCD[mol_type][component.one_letter]]
    return UNKNOWN_RESTYPE[mol_type]


def entity_keys(entities: tuple[Entity, ...]) -> list[int]:
    """entity_id per entity: identical chemistry shares an id, as Table 5 asks."""
    keys: dict[tuple, int] = {}
    ids = []
    for entity in entities:
        if isinstance(entity, PolymerChain):
            key: tuple = (entity.mol_type, entity.ccd_sequence())
        else:
            key = ("ligand", entity.ccd_codes, entity.smiles)
        ids.append(keys.setdefault(key, len(keys) + 1))
    return ids


def tokenize(job: Job, *, max_tokens: int | None = DEFAULT_MAX_TOKENS,
             featurization: FeaturizationConfig = DEFAULT_FEATURIZATION) -> TokenizedStructure:
    """Build atoms and tokens of every chain copy, in the order the job lists them."""
    user_ccd = parse_user_ccd(job.user_ccd, source=job.source) if job.user_ccd else None
    check_token_budget(job, max_tokens, user_ccd, featurization)   # before any conformer is embedded
    components = [entity_components(job, i, user_ccd) for i in range(len(job.entities))]
    entity_ids = entity_keys(job.entities)
    builder = _Builder(featurization)
    builder.dropped = bond_leaving_atoms(job, components, featurization)
    sym_counter: dict[int, int] = {}
    for entity_index, (entity, comps) in enumerate(zip(job.entities, components, strict=True)):
        entity_id = entity_ids[entity_index]
        for chain_id in entity.ids:
            sym_id = sym_counter.get(entity_id, 0)
            sym_counter[entity_id] = sym_id + 1
            builder.add_chain(chain_id, entity_index, entity_id, sym_id, entity.mol_type, comps)
    builder.add_user_bonds(job)
    tokens = builder.build()
    if max_tokens is not None and tokens.n_tokens > max_tokens:
        raise InputError(f"the job has {tokens.n_tokens} tokens, above the limit of {max_tokens} "
                         "(raise --max-tokens if the hardware allows)",
                         source=job.source, job=job.name, field="sequences")
    return tokens


class _Builder:
    """Accumulates per-residue arrays; concatenated once at the end."""

    def __init__(self, featurization: FeaturizationConfig = DEFAULT_FEATURIZATION) -> None:
        self.featurization = featurization
        self.chains: list[ChainInfo] = []
        self.atom_parts: dict[str, list[np.ndarray]] = {k: [] for k in (
            "name", "element", "charge", "ref_pos", "ref_mask", "space_uid", "token", "chain",
            "residue", "res_name")}
        self.token_parts: dict[str, list] = {k: [] for k in (
            "residue_index", "asym_id", "entity_id", "sym_id", "restype", "mol_type",
            "is_standard", "centre_atom", "rep_atom")}
        self.bonds: list[np.ndarray] = []
        self.n_atoms = 0
        self.n_tokens = 0
        self.n_spaces = 0
        self.residue_atoms: dict[tuple[int, int], tuple[int, dict[str, int]]] = {}
        self.chain_index: dict[str, int] = {}
        self._kept: dict[tuple[int, frozenset[str]], np.ndarray] = {}  # per (id(component), kept)
        self.dropped: dict[tuple[str, int], frozenset[str]] = {}      # (chain, residue) -> atom names

    def add_chain(self, chain_id: str, entity_index: int, entity_id: int, sym_id: int,
                  mol_type: MolType, comps: list[Component]) -> None:
        chain_idx = len(self.chains)
        self.chain_index[chain_id] = chain_idx
        token_start = self.n_tokens
        mol_index = MOL_TYPES.index(mol_type)
        for residue_number, component in enumerate(comps, start=1):
            if mol_type == "ligand":
                keep = np.arange(len(component.atom_names))
            else:
                terminal = terminal_leaving_atoms(mol_type, residue_number, len(comps), self.featurization)
                key = (id(component), terminal)
                if key not in self._kept:
                    self._kept[key] = _polymer_atoms_kept(component, terminal)
                keep = self._kept[key]
            drop = self.dropped.get((chain_id, residue_number))
            if drop:
                keep = keep[[component.atom_names[i] not in drop for i in keep]]
            self._add_residue(chain_idx, chain_id, residue_number, mol_type, mol_index,
                              entity_id, sym_id, component, keep)
        self.chains.append(ChainInfo(
            chain_id=chain_id, entity_index=entity_index, entity_id=entity_id, sym_id=sym_id,
            mol_type=mol_type, token_start=token_start, token_end=self.n_tokens,
            residue_names=tuple(c.name for c in comps)))

    def _add_residue(self, chain_idx: int, chain_id: str, residue_number: int, mol_type: MolType,
                     mol_index: int, entity_id: int, sym_id: int, component: Component,
                     keep: np.ndarray) -> None:
        n = len(keep)
        if n == 0:
            return
        first_atom = self.n_atoms
        names = np.asarray(component.atom_names, dtype="<U4")[keep]
        a = self.atom_parts
        a["name"].append(names)
        a["element"].append(component.elements[keep].astype(np.int16))
        a["charge"].append(component.charges[keep].astype(np.float32))
        a["ref_pos"].append(component.ref_pos[keep].astype(np.float32))
        a["ref_mask"].append(component.ref_mask[keep])
        a["space_uid"].append(np.full(n, self.n_spaces, np.int32))
        a["chain"].append(np.full(n, chain_idx, np.int32))
        a["residue"].append(np.full(n, residue_number, np.int32))
        a["res_name"].append(np.full(n, component.name))   # CCD code or LIG_<chain>
        self.n_spaces += 1
        name_to_atom = {str(name): first_atom + i for i, name in enumerate(names)}
        self.residue_atoms[(chain_idx, residue_number)] = (first_atom, name_to_atom)

        restype = _restype_of(mol_type, component, self.featurization)
        per_atom = _is_per_atom(mol_type, component.name)
        mse = self.featurization.selenomethionine
        if mol_type == "protein" and component.name == "MSE" and mse != "atomize":
            per_atom = False                     # one token with restype MET (its parent)
            if mse == "as_met":                  # Protenix: SE renamed SD, element S
                renamed = names == "SE"
                names = np.where(renamed, "SD", names).astype("<U4")
                a["name"][-1] = names
                a["element"][-1] = np.where(renamed, 16, a["element"][-1]).astype(np.int16)
                a["res_name"][-1] = np.full(n, "MET")
                name_to_atom = {str(name): first_atom + i for i, name in enumerate(names)}
                self.residue_atoms[(chain_idx, residue_number)] = (first_atom, name_to_atom)
        if per_atom:
            tokens = np.arange(self.n_tokens, self.n_tokens + n, dtype=np.int32)
            centre = rep = np.arange(first_atom, first_atom + n, dtype=np.int32)
            count = n
        else:
            tokens = np.full(n, self.n_tokens, np.int32)
            centre = np.array([name_to_atom.get(CENTRE_ATOM[mol_type], first_atom)], np.int32)
            rep_name = representative_atom(mol_type, component.name)
            rep = np.array([name_to_atom.get(rep_name, int(centre[0]))], np.int32)
            count = 1
        a["token"].append(tokens)
        t = self.token_parts
        t["residue_index"].append(np.full(count, residue_number, np.int32))
        t["asym_id"].append(np.full(count, chain_idx + 1, np.int32))
        t["entity_id"].append(np.full(count, entity_id, np.int32))
        t["sym_id"].append(np.full(count, sym_id, np.int32))
        t["restype"].append(np.full(count, restype, np.int8))
        t["mol_type"].append(np.full(count, mol_index, np.int8))
        t["is_standard"].append(np.full(count, not per_atom))
        t["centre_atom"].append(centre)
        t["rep_atom"].append(rep)
        if per_atom and len(component.bonds):
            # intra-residue bonds of a ligand or an atomized modified residue (ligand-ligand
            # in AF3: features.py:1723-1752 adds every non-standard residue's CCD bond graph),
            # remapped to the kept atoms
            remap = np.full(len(component.atom_names), -1, np.int64)
            remap[keep] = np.arange(first_atom, first_atom + n)
            pairs = remap[component.bonds]
            self.bonds.append(pairs[(pairs >= 0).all(axis=1)])
        self.n_atoms += n
        self.n_tokens += count

    def add_user_bonds(self, job: Job) -> None:
        """bondedAtomPairs: kept when one side is a ligand (Table 5 token_bonds)."""
        pairs = []
        for i, pair in enumerate(job.bonded_atom_pairs):
            atoms = []
            for j, ref in enumerate(pair):
                chain_idx = self.chain_index[ref.chain_id]
                _, names = self.residue_atoms.get((chain_idx, ref.residue), (0, {}))
                if ref.atom_name not in names:
                    res_name = self.chains[chain_idx].residue_names[ref.residue - 1]
                    raise InputError(
                        f"atom {ref.atom_name!r} is not in residue {ref.residue} ({res_name}) of "
                        f"chain {ref.chain_id!r}; its atoms are {', '.join(sorted(names))}",
                        source=job.source, job=job.name, field=f"bondedAtomPairs[{i}][{j}]")
                atoms.append(names[ref.atom_name])
            if any(self.chains[self.chain_index[ref.chain_id]].mol_type == "ligand" for ref in pair):
                pairs.append(atoms)
        if pairs:
            self.bonds.append(np.asarray(pairs, np.int64))

    def build(self) -> TokenizedStructure:
        a = {k: np.concatenate(v) for k, v in self.atom_parts.items()}
        t = {k: np.concatenate(v) for k, v in self.token_parts.items()}
        bonds = np.concatenate(self.bonds).astype(np.int32) if self.bonds else \
            np.zeros((0, 2), np.int32)
        return TokenizedStructure(
            chains=tuple(self.chains), atom_name=a["name"], atom_element=a["element"],
            atom_charge=a["charge"], atom_ref_pos=a["ref_pos"], atom_ref_mask=a["ref_mask"],
            atom_space_uid=a["space_uid"], atom_to_token=a["token"], atom_chain=a["chain"],
            atom_residue=a["residue"], atom_res_name=a["res_name"],
            residue_index=t["residue_index"], asym_id=t["asym_id"], entity_id=t["entity_id"],
            sym_id=t["sym_id"], restype=t["restype"], mol_type=t["mol_type"],
            is_standard=t["is_standard"], centre_atom=t["centre_atom"], rep_atom=t["rep_atom"],
            bonds=bonds)


def select_tokens(tokens: TokenizedStructure, token_indices: np.ndarray) -> TokenizedStructure:
    """The structure restricted to `token_indices` (sorted), e.g. a training crop (SI 2.7).

    Atoms follow their tokens, ids (asym/entity/sym, residue_index) keep their values, and
    bonds survive when both atoms do.
    """
    token_indices = np.asarray(token_indices, np.int64)
    token_map = np.full(tokens.n_tokens, -1, np.int64)
    token_map[token_indices] = np.arange(len(token_indices))
    atom_keep = np.flatnonzero(token_map[tokens.atom_to_token] >= 0)
    atom_map = np.full(tokens.n_atoms, -1, np.int64)
    atom_map[atom_keep] = np.arange(len(atom_keep))

    kept_chains = [i for i, c in enumerate(tokens.chains)
                   if (token_map[c.token_start:c.token_end] >= 0).any()]
    chain_map = np.full(len(tokens.chains), -1, np.int64)
    chain_map[kept_chains] = np.arange(len(kept_chains))
    chains = []
    for i in kept_chains:
        chain = tokens.chains[i]
        inside = token_map[chain.token_start:chain.token_end]
        inside = inside[inside >= 0]
        chains.append(ChainInfo(
            chain_id=chain.chain_id, entity_index=chain.entity_index, entity_id=chain.entity_id,
            sym_id=chain.sym_id, mol_type=chain.mol_type, token_start=int(inside.min()),
            token_end=int(inside.max()) + 1, residue_names=chain.residue_names))

    bonds = atom_map[tokens.bonds] if len(tokens.bonds) else tokens.bonds
    if len(bonds):
        bonds = bonds[(bonds >= 0).all(axis=1)]
    t = token_indices
    return TokenizedStructure(
        chains=tuple(chains),
        atom_name=tokens.atom_name[atom_keep], atom_element=tokens.atom_element[atom_keep],
        atom_charge=tokens.atom_charge[atom_keep], atom_ref_pos=tokens.atom_ref_pos[atom_keep],
        atom_ref_mask=tokens.atom_ref_mask[atom_keep],
        atom_space_uid=tokens.atom_space_uid[atom_keep],
        atom_to_token=token_map[tokens.atom_to_token[atom_keep]].astype(np.int32),
        atom_chain=chain_map[tokens.atom_chain[atom_keep]].astype(np.int32),
        atom_residue=tokens.atom_residue[atom_keep], atom_res_name=tokens.atom_res_name[atom_keep],
        residue_index=tokens.residue_index[t], asym_id=tokens.asym_id[t],
        entity_id=tokens.entity_id[t], sym_id=tokens.sym_id[t], restype=tokens.restype[t],
        mol_type=tokens.mol_type[t], is_standard=tokens.is_standard[t],
        centre_atom=atom_map[tokens.centre_atom[t]].astype(np.int32),
        rep_atom=atom_map[tokens.rep_atom[t]].astype(np.int32),
        bonds=np.asarray(bonds, np.int32).reshape(-1, 2))
