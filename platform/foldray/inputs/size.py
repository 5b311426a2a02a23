"""How big a job is, known before any conformer is made (SI 2.6 token rules).

Building a ligand's components means an RDKit embedding (seconds to minutes for a large
one), so the token budget is checked on these counts first: a job over budget is refused
in milliseconds. Standard residues are one token, every other residue and every ligand one
token per heavy atom (leaving atoms of polymer residues excluded), times the chain copies.
"""

from __future__ import annotations

from collections.abc import Mapping

from foldray.chem.ccd import component_heavy_atoms, glycan_with_o1
from foldray.chem.component import CcdEntry
from foldray.chem.smiles import smiles_heavy_atoms
from foldray.errors import InputError
from foldray.features.config import DEFAULT_FEATURIZATION, FeaturizationConfig
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


def count_tokens(job: Job, user_ccd: Mapping[str, CcdEntry] | None = None,
                 featurization: FeaturizationConfig = DEFAULT_FEATURIZATION) -> int:
    """Tokens of the whole job (every chain copy), without building conformers. With
    Protenix's "bonded" leaving atoms the atoms leaving at bondedAtomPairs are not subtracted
    (an upper bound by those few atoms)."""
    total = sum(entity_tokens(job, i, user_ccd) * len(entity.ids) for i, entity in enumerate(job.entities))
    if featurization.ligand_leaving_atoms == "glycan_o1":
        total -= _glycan_o1_dropped(job, user_ccd)
    return total


def _glycan_o1_dropped(job: Job, user_ccd: Mapping[str, CcdEntry] | None) -> int:
    """O1 atoms the tokenizer drops from ligand glycans (AF3), unless a bond names the O1."""
    named = {(ref.chain_id, ref.residue) for pair in job.bonded_atom_pairs for ref in pair
             if ref.atom_name == "O1"}
    dropped = 0
    for entity in job.entities:
        if not isinstance(entity, LigandChain) or not entity.ccd_codes:
            continue
        for number, code in enumerate(entity.ccd_codes, start=1):
            if glycan_with_o1(code, user_ccd=user_ccd):
                dropped += sum((chain_id, number) not in named for chain_id in entity.ids)
    return dropped


def check_token_budget(job: Job, max_tokens: int | None,
                       user_ccd: Mapping[str, CcdEntry] | None = None,
                       featurization: FeaturizationConfig = DEFAULT_FEATURIZATION) -> None:
    """InputError (the tokenizer's message) if the job is over `max_tokens` tokens."""
    if max_tokens is None:
        return
    n_tokens = count_tokens(job, user_ccd, featurization)
    if n_tokens > max_tokens:
        raise InputError(f"the job has {n_tokens} tokens, above the limit of {max_tokens} "
                         "(raise --max-tokens if the hardware allows)",
                         source=job.source, job=job.name, field="sequences")
