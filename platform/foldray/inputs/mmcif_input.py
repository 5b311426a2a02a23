"""mmCIF / PDB file -> `Job` whose chains are the file's, with its coordinates as ground truth.

Clean-up follows SI 2.1 and 2.5.4: first model only, hydrogens and waters removed,
alternative locations resolved to the highest-occupancy conformer (per residue, so a side
chain never mixes conformers), microheterogeneity resolved to the highest-occupancy
residue, MSE converted to MET, arginine NH1/NH2 named so NH1 is closer to CD, and
crystallization aids (Table 9) removed from crystal structures.

Chains are mmCIF label_asym_ids (unique per polymer/ligand instance); residues are numbered
1..n along the entity sequence (label_seq_id) for polymers and in file order for ligands.
SI deviation: the asymmetric unit is used, not the first bioassembly, because a user who
hands us a file means the chains in it; `assembly=` expands a named assembly instead.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict

import gemmi
import numpy as np

from foldray.chem.ccd import get_component, is_known_ccd
from foldray.errors import InputError
from foldray.inputs.job import AtomRef, GroundTruth, Job, LigandChain, Modification, PolymerChain
from foldray.residues import CRYSTALLIZATION_AIDS, ONE_TO_CCD

_POLYMER_TYPES = {
    gemmi.PolymerType.PeptideL: "protein", gemmi.PolymerType.PeptideD: "protein",
    gemmi.PolymerType.Dna: "dna", gemmi.PolymerType.Rna: "rna",
    gemmi.PolymerType.DnaRnaHybrid: "dna",
}
_COVALENT = (gemmi.ConnectionType.Covale,)
_RELEASE_KEY = "_pdbx_audit_revision_history.revision_date"


def read_structure_file(data: str | bytes, *, source: str) -> gemmi.Structure:
    """Parse mmCIF or PDB text with gemmi; a broken file is an InputError, never a crash."""
    text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data
    if not text.strip():
        raise InputError("the file is empty", source=source)
    is_pdb = source.lower().endswith((".pdb", ".ent")) or not text.lstrip().startswith("data_")
    try:
        if is_pdb:
            st = gemmi.read_pdb_string(text)
            st.setup_entities()
        else:
            block = gemmi.cif.read_string(text).sole_block()
            _check_atom_site_complete(block, source)
            st = gemmi.make_structure_from_block(block)
            released = block.find_values("_pdbx_audit_revision_history.revision_date")
            if len(released):   # initial release = first revision (gemmi keeps only deposition)
                st.info[_RELEASE_KEY] = gemmi.cif.as_string(released[0])
    except (RuntimeError, ValueError) as err:
        field, message = parser_reason(err)
        hint = " (the file looks truncated)" if "number of values" in message else ""
        raise InputError(f"cannot parse the structure: {message}{hint}", source=source,
                         field=field) from None
    if len(st) == 0 or st[0].count_atom_sites() == 0:
        raise InputError("the structure has no atoms (truncated or not a coordinate file?)",
                         source=source)
    return st


_CIF_WHERE = re.compile(r"^\S*?:(\d+):\d+(?:\(\d+\))?:\s*")
_PDB_WHERE = re.compile(r"^Problem in line (\d+):\s*")


def parser_reason(err: BaseException) -> tuple[str, str]:
    """(field, message) of a gemmi parse error, without the file text it may quote.

    gemmi's CIF errors start ``string:LINE:COL(POS): reason``; its PDB errors read
    ``Problem in line N: reason:\n<the line>``. Only the line number and the reason are kept.
    """
    message = str(err)
    field = ""
    where = _CIF_WHERE.match(message) or _PDB_WHERE.match(message)
    if where:
        field, message = f"line {where.group(1)}", message[where.end():]
    message = message.split("\n", 1)[0].strip().rstrip(":")[:200]
    return field, message or err.__class__.__name__


def _check_atom_site_complete(block: gemmi.cif.Block, source: str) -> None:
    """A file cut inside the atom_site loop still parses; its ragged last row gives it away."""
    column = block.find_loop("_atom_site.id")
    loop = column.get_loop() if column else None
    if loop is None:
        raise InputError("no _atom_site loop: not a coordinate file", source=source)
    if len(loop.values) % loop.width() != 0:
        raise InputError(f"the atom_site loop ends mid-row ({len(loop.values) % loop.width()} of "
                         f"{loop.width()} values in the last row): the file looks truncated",
                         source=source)


def job_from_structure_file(data: str | bytes, *, source: str, name: str | None = None,
                            seeds: tuple[int, ...] = (1,), assembly: str | None = None) -> Job:
    """One job holding every polymer and ligand of the file's first model."""
    st = read_structure_file(data, source=source)
    if assembly is not None:
        st = _expand_assembly(st, assembly, source)
    info = dict(st.info)
    method = info.get("_exptl.method", "")
    is_crystal = "X-RAY" in method.upper() or "CRYSTAL" in method.upper() or \
        "DIFFRACTION" in method.upper()
    dropped = _dropped_by_cleanup(st, is_crystal)
    st.remove_hydrogens()
    st.remove_waters()
    for index in range(len(st) - 1, 0, -1):
        del st[index]
    name = name or info.get("_entry.id", "") or os.path.splitext(os.path.basename(source))[0]
    entities, truth = _chains(st, is_crystal)
    if not entities:
        raise InputError("no polymer or ligand chains left after removing waters and "
                         "crystallization aids", source=source)
    bonds = _covalent_ligand_bonds(st, truth.numbers, entities)
    if truth.altloc_atoms:
        dropped.append(_count(truth.altloc_atoms, "alternate-location atom"))
    ground_truth = GroundTruth(coords=truth.coords, resolution=st.resolution or None,
                               release_date=_release_date(info), method=method or None,
                               dropped=tuple(dropped))
    return Job(name=name, seeds=seeds, entities=tuple(entities), bonded_atom_pairs=bonds,
               source=source, ground_truth=ground_truth,
               user_ccd=file_components(data, used={c for e in entities if isinstance(e, LigandChain)
                                                    for c in e.ccd_codes or ()}))


def file_components(data: str | bytes, used: set[str]) -> str | None:
    """The components a file defines itself (`_chem_comp_atom` rows, e.g. the SMILES ligands
    foldray and AlphaFold 3 write as `LIG_<chain>`) that the CCD does not know, as user-CCD
    text (one block per component), so they read back as the molecule that was written."""
    text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data
    if "_chem_comp_atom." not in text or not text.lstrip().startswith("data_"):
        return None
    block = gemmi.cif.read_string(text).sole_block()
    atoms = block.get_mmcif_category("_chem_comp_atom.")
    bonds = block.get_mmcif_category("_chem_comp_bond.")
    codes = [c for c in dict.fromkeys(atoms.get("comp_id", []))
             if c in used and not is_known_ccd(c)]
    if not codes:
        return None
    doc = gemmi.cif.Document()
    for code in codes:
        out = doc.add_new_block(code)
        out.set_mmcif_category("_chem_comp", {"id": [code], "type": ["non-polymer"]})
        for prefix, table in (("_chem_comp_atom", atoms), ("_chem_comp_bond", bonds)):
            rows = [k for k, c in enumerate(table.get("comp_id", [])) if c == code]
            if rows:
                out.set_mmcif_category(prefix, {key: [values[k] for k in rows]
                                                for key, values in table.items()})
    return doc.as_string()


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def _dropped_by_cleanup(st: gemmi.Structure, is_crystal: bool) -> list[str]:
    """What the clean-up below removes from the file (for a note, not an error): extra
    models, waters, crystallization aids (by name) and hydrogens of the first model."""
    model = st[0]
    waters = sum(1 for chain in model for residue in chain if residue.is_water())
    hydrogens = sum(1 for chain in model for residue in chain for atom in residue if atom.is_hydrogen())
    polymer = {sub for ent in st.entities if ent.entity_type == gemmi.EntityType.Polymer
               for sub in ent.subchains}
    aids: dict[str, int] = defaultdict(int)
    if is_crystal:
        for chain in model:
            for residue in chain:
                if residue.name in CRYSTALLIZATION_AIDS and residue.subchain not in polymer:
                    aids[residue.name] += 1
    dropped = []
    if len(st) > 1:
        dropped.append(f"{_count(len(st) - 1, 'model')} after the first")
    if waters:
        dropped.append(_count(waters, "water"))
    if aids:
        names = ", ".join(f"{n} {name}" if n > 1 else name for name, n in sorted(aids.items()))
        dropped.append(f"{_count(sum(aids.values()), 'crystallization aid')} ({names})")
    if hydrogens:
        dropped.append(_count(hydrogens, "hydrogen"))
    return dropped


def _expand_assembly(st: gemmi.Structure, assembly: str, source: str) -> gemmi.Structure:
    names = [a.name for a in st.assemblies]
    if assembly not in names:
        raise InputError(f"no assembly {assembly!r} (the file has {names})", source=source)
    model = gemmi.make_assembly(st.assemblies[names.index(assembly)], st[0],
                                gemmi.HowToNameCopiedChain.AddNumber)
    out = gemmi.Structure()
    out.add_model(model)
    out.entities = st.entities
    out.info = st.info
    out.resolution = st.resolution
    out.setup_entities()
    return out


def _release_date(info: dict[str, str]) -> str | None:
    for key in (_RELEASE_KEY, "_pdbx_database_status.recvd_initial_deposition_date"):
        if info.get(key):
            return info[key]
    return None


def _best_conformer(residue: gemmi.Residue) -> dict[str, np.ndarray]:
    """Atom name -> coordinates, alternative locations resolved per residue (SI 2.1)."""
    altlocs: dict[str, float] = defaultdict(float)
    for atom in residue:
        if atom.altloc != "\0":
            altlocs[atom.altloc] += atom.occ
    best = max(altlocs, key=lambda a: (altlocs[a], -ord(a))) if altlocs else None
    atoms: dict[str, np.ndarray] = {}
    for atom in residue:
        if atom.altloc in ("\0", best) and atom.name not in atoms:
            atoms[atom.name] = np.array(atom.pos.tolist(), np.float32)
    return atoms


def _occupancy(residue: gemmi.Residue) -> float:
    return sum(atom.occ for atom in residue)


def _standardize(code: str, atoms: dict[str, np.ndarray]) -> tuple[str, dict[str, np.ndarray]]:
    """MSE -> MET and the arginine NH1/NH2 convention (SI 2.1)."""
    if code == "MSE":
        code = "MET"
        if "SE" in atoms:
            atoms["SD"] = atoms.pop("SE")
    if code == "ARG" and {"CD", "NH1", "NH2"} <= atoms.keys():
        d1 = np.linalg.norm(atoms["NH1"] - atoms["CD"])
        d2 = np.linalg.norm(atoms["NH2"] - atoms["CD"])
        if d2 < d1:
            atoms["NH1"], atoms["NH2"] = atoms["NH2"], atoms["NH1"]
    return code, atoms


def _letter_for(code: str, mol_type: str) -> tuple[str, bool]:
    """One-letter code of a residue and whether it is a modification (not a standard code).

    A modification takes its CCD parent's letter, else its CCD one-letter code, else the
    unknown letter (X for proteins, N for nucleic acids).
    """
    to_letter = {ccd: letter for letter, ccd in ONE_TO_CCD[mol_type].items()}
    if code in to_letter:
        return to_letter[code], False
    try:
        component = get_component(code)
    except InputError:   # reported with its location when the job is tokenized
        return ("X" if mol_type == "protein" else "N"), True
    if component.parent in to_letter:
        return to_letter[component.parent], True
    if component.one_letter and component.one_letter in ONE_TO_CCD[mol_type]:
        return component.one_letter, True
    return ("X" if mol_type == "protein" else "N"), True


class _Truth:
    """Coordinates collected while reading, keyed by (chain id, residue number, atom name),
    and where each file residue landed (for struct_conn links)."""

    def __init__(self) -> None:
        self.coords: dict[tuple[str, int, str], np.ndarray] = {}
        self.numbers: dict[tuple[str, str, str], tuple[str, int]] = {}
        self.altloc_atoms = 0    # atoms of the other alternative locations, dropped

    def record(self, chain_id: str, number: int, residue: gemmi.Residue) -> str:
        """Store a residue's cleaned atoms; returns its (possibly standardized) CCD code."""
        code, atoms = _standardize(residue.name, _best_conformer(residue))
        self.altloc_atoms += len(residue) - len(atoms)
        for atom_name, xyz in atoms.items():
            self.coords[(chain_id, number, atom_name)] = xyz
        self.numbers[(residue.subchain, str(residue.seqid), residue.name)] = (chain_id, number)
        return code


def _chains(st: gemmi.Structure, is_crystal: bool) -> tuple[list, _Truth]:
    """Entities in file order (copies grouped by mmCIF entity) and their coordinates."""
    entity_of = {sub: ent for ent in st.entities for sub in ent.subchains}
    truth = _Truth()
    grouped: dict[str, list[tuple[str, tuple[str, ...]]]] = defaultdict(list)
    kinds: dict[str, str] = {}
    for span in st[0].subchains():
        sub = span.subchain_id()
        entity = entity_of.get(sub)
        if entity is not None and entity.entity_type == gemmi.EntityType.Water:
            continue
        if entity is not None and entity.entity_type == gemmi.EntityType.Polymer \
                and entity.polymer_type in _POLYMER_TYPES:
            mol_type = _POLYMER_TYPES[entity.polymer_type]
            codes = _polymer_codes(span, entity, sub, truth)
        else:
            residues = [r for r in span if not (is_crystal and r.name in CRYSTALLIZATION_AIDS)]
            if not residues:
                continue
            mol_type = "ligand"
            codes = [truth.record(sub, number, residue)
                     for number, residue in enumerate(residues, start=1)]
        key = entity.name if entity is not None else f"_{sub}_{span[0].name}"
        kinds[key] = mol_type
        grouped[key].append((sub, tuple(codes)))

    entities = []
    for key, copies in grouped.items():
        # copies of one entity share a sequence; split if the modelled chemistry differs
        by_codes: dict[tuple[str, ...], list[str]] = defaultdict(list)
        for chain_id, codes in copies:
            by_codes[codes].append(chain_id)
        for codes, chain_ids in by_codes.items():
            entities.append(_make_entity(kinds[key], tuple(chain_ids), codes))
    return entities, truth


def _polymer_codes(span: gemmi.ResidueSpan, entity: gemmi.Entity, sub: str,
                   truth: _Truth) -> list[str]:
    """Full SEQRES codes of a polymer chain (microheterogeneity: most occupied residue)."""
    sequence = [gemmi.Entity.first_mon(item) for item in entity.full_sequence]
    chosen: dict[int, gemmi.Residue] = {}
    for residue in span:
        if residue.label_seq is None:
            continue
        current = chosen.get(residue.label_seq)
        if current is None or _occupancy(residue) > _occupancy(current):
            chosen[residue.label_seq] = residue
    if not sequence:  # no entity_poly_seq: the modelled residues are the sequence
        chosen = {i + 1: chosen[k] for i, k in enumerate(sorted(chosen))}
        sequence = [residue.name for residue in chosen.values()]
    codes = list(sequence)
    for number, residue in chosen.items():
        if 1 <= number <= len(codes):
            codes[number - 1] = truth.record(sub, number, residue)
    return ["MET" if c == "MSE" else c for c in codes]


def _make_entity(mol_type: str, ids: tuple[str, ...], codes: tuple[str, ...]):
    if mol_type == "ligand":
        return LigandChain(ids=ids, ccd_codes=codes)
    letters, mods = [], []
    for position, code in enumerate(codes, start=1):
        letter, is_mod = _letter_for(code, mol_type)
        letters.append(letter)
        if is_mod:
            mods.append(Modification(ccd_code=code, position=position))
    return PolymerChain(mol_type=mol_type, ids=ids, sequence="".join(letters),
                        modifications=tuple(mods), unpaired_msa="", paired_msa="", templates=())


def _covalent_ligand_bonds(st: gemmi.Structure, residue_numbers, entities):
    """struct_conn covalent links with a ligand on at least one side (polymer-ligand,
    ligand-ligand); links between polymer residues are implied by the sequence."""
    ligand_chains = {cid for e in entities if isinstance(e, LigandChain) for cid in e.ids}
    model = st[0]
    bonds = []
    for conn in st.connections:
        if conn.type not in _COVALENT:
            continue
        refs = []
        for partner in (conn.partner1, conn.partner2):
            cra = model.find_cra(partner, ignore_segment=True)
            if cra.residue is None or cra.atom is None:
                break
            key = (cra.residue.subchain, str(cra.residue.seqid), cra.residue.name)
            if key not in residue_numbers:
                break
            chain_id, number = residue_numbers[key]
            atom_name = "SD" if (cra.residue.name, cra.atom.name) == ("MSE", "SE") else cra.atom.name
            refs.append(AtomRef(chain_id=chain_id, residue=number, atom_name=atom_name))
        if len(refs) == 2 and refs[0] != refs[1] and \
                (refs[0].chain_id in ligand_chains or refs[1].chain_id in ligand_chains):
            pair = (refs[0], refs[1])
            if pair not in bonds and (pair[1], pair[0]) not in bonds:
                bonds.append(pair)
    return tuple(bonds)
