"""How big a job is, known before any conformer is made (SI 2.6 token rules).

Building a ligand's components means an RDKit embedding (seconds to minutes for a large
one), so the token budget is checked on these counts first: a job over budget is refused
in milliseconds. Standard residues are one token, every other residue and every ligand one
token per heavy atom (leaving atoms of polymer residues excluded), times the chain copies.
"""

from __future__ import annotations

from collections.abc import Mapping

from foldray.chem.ccd import component_heavy_atoms
from foldray.chem.component import CcdEntry
from foldray.chem.smiles import smiles_heavy_atoms
from foldray.errors import InputError
from foldray.inputs.job import Job, LigandChain
from foldray.residues import STANDARD_RESIDUES


def entity_tokens(job: Job, entity_index: int, user_ccd: Mapping[str, CcdEntry] | None) -> int:
    """Tokens of one copy of an entity; a lower bound when a residue is unknown (the
    tokenizer reports those) or a modified C-terminal residue keeps its OXT."""
    entity = job.entities[entity_index]
    if isinstance(entity, LigandChain) and entity.smiles is not None:
        try:
            return smiles_heavy_atoms(entity.smiles)
        except InputError as err:
            raise err.located(source=job.source, job=job.name,
                              field_prefix=f"sequences[{entity_index}].ligand.smiles") from None
    if isinstance(entity, LigandChain):
        counts = [component_heavy_atoms(code, user_ccd=user_ccd) for code in entity.ccd_codes or ()]
        return sum(c[0] for c in counts if c is not None)
    standard = STANDARD_RESIDUES[entity.mol_type]
    total = 0
    for code in entity.ccd_sequence():
        if code in standard:
            total += 1
        elif (counts := component_heavy_atoms(code, user_ccd=user_ccd)) is not None:
            total += counts[1]
    return total


def count_tokens(job: Job, user_ccd: Mapping[str, CcdEntry] | None = None) -> int:
    """Tokens of the whole job (every chain copy), without building conformers."""
    return sum(entity_tokens(job, i, user_ccd) * len(entity.ids)
               for i, entity in enumerate(job.entities))


def check_token_budget(job: Job, max_tokens: int | None,
                       user_ccd: Mapping[str, CcdEntry] | None = None) -> None:
    """InputError (the tokenizer's message) if the job is over `max_tokens` tokens."""
    if max_tokens is None:
        return
    n_tokens = count_tokens(job, user_ccd)
    if n_tokens > max_tokens:
        raise InputError(f"the job has {n_tokens} tokens, above the limit of {max_tokens} "
                         "(raise --max-tokens if the hardware allows)",
                         source=job.source, job=job.name, field="sequences")
