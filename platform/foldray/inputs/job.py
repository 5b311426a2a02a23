"""The validated job: what a user asked to fold, independent of the file format it came in.

Frozen, keyword-only dataclasses in the spirit of AlphaFold 3's `folding_input`: every
instance was checked when it was built (see `af3_json.py` and `mmcif_input.py`), so the
tokenizer can trust it. MSA and template payloads are kept as text; they are parsed where
their features are built.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from foldray.inputs.restraints import Restraint
from foldray.residues import ONE_TO_CCD, MolType

PolymerType = Literal["protein", "rna", "dna"]


@dataclass(frozen=True, kw_only=True, slots=True)
class Modification:
    """A non-standard residue at a 1-based position of a polymer sequence."""

    ccd_code: str
    position: int


@dataclass(frozen=True, kw_only=True, slots=True)
class TemplateInput:
    """A user-given structural template of one protein chain (AF3 JSON `templates`)."""

    mmcif: str
    query_indices: tuple[int, ...]
    template_indices: tuple[int, ...]


@dataclass(frozen=True, kw_only=True, slots=True)
class PolymerChain:
    """One protein/RNA/DNA entity, present as `len(ids)` copies.

    `unpaired_msa`/`paired_msa` are a3m text; None means "not given" (the genetic search
    may fill it in), "" means "explicitly none" (single-sequence features).
    """

    mol_type: PolymerType
    ids: tuple[str, ...]
    sequence: str
    modifications: tuple[Modification, ...] = ()
    unpaired_msa: str | None = None
    paired_msa: str | None = None
    templates: tuple[TemplateInput, ...] | None = None
    description: str | None = None

    def ccd_sequence(self) -> tuple[str, ...]:
        """CCD code of every residue: standard codes from the letters, modifications applied."""
        table = ONE_TO_CCD[self.mol_type]
        codes = [table[letter] for letter in self.sequence]
        for mod in self.modifications:
            codes[mod.position - 1] = mod.ccd_code
        return tuple(codes)


@dataclass(frozen=True, kw_only=True, slots=True)
class LigandChain:
    """A ligand, ion or glycan: a sequence of CCD codes (bonded by the user) or one SMILES."""

    ids: tuple[str, ...]
    ccd_codes: tuple[str, ...] | None = None
    smiles: str | None = None
    description: str | None = None

    mol_type: MolType = field(default="ligand", init=False)


Entity = PolymerChain | LigandChain


@dataclass(frozen=True, kw_only=True, slots=True)
class AtomRef:
    """An atom by chain id, 1-based residue number within the chain, and atom name."""

    chain_id: str
    residue: int
    atom_name: str


@dataclass(frozen=True, kw_only=True, slots=True)
class GroundTruth:
    """Experimental coordinates keyed by (chain id, 1-based residue, atom name), from mmCIF."""

    coords: dict[tuple[str, int, str], np.ndarray]
    resolution: float | None = None
    release_date: str | None = None
    method: str | None = None
    # what file clean-up removed, e.g. "138 waters" (`foldray validate` prints it as a note)
    dropped: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True, slots=True)
class Job:
    """One prediction request (an AF3 "fold input")."""

    name: str
    seeds: tuple[int, ...]
    entities: tuple[Entity, ...]
    bonded_atom_pairs: tuple[tuple[AtomRef, AtomRef], ...] = ()
    restraints: tuple[Restraint, ...] = ()      # pocket / contact (inputs/restraints.py)
    user_ccd: str | None = None
    source: str = ""
    ground_truth: GroundTruth | None = None
    # foldray extension "maxTemplateDate" (YYYY-MM-DD): this job's template search cutoff,
    # overriding the run's (foldray.msa); None: the run's
    max_template_date: str | None = None

    @property
    def chain_ids(self) -> tuple[str, ...]:
        return tuple(chain_id for entity in self.entities for chain_id in entity.ids)

    @property
    def safe_name(self) -> str:
        return sanitize_name(self.name)


_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def sanitize_name(name: str) -> str:
    """A job name made safe as one path component: no separators, no dot-only names.

    Lower-cased like AlphaFold 3's output folders, so two names differing only in case
    collide here rather than on case-insensitive filesystems.
    """
    safe = _UNSAFE.sub("_", name.strip().lower()).strip("._")
    return safe[:128] or "job"
