"""`Job` -> AlphaFold 3 input JSON (dialect "alphafold3", version 4): the `<job>_data.json`.

The inverse of `af3_json.parse_job`: `parse_job(job_to_af3_json(job))` gives back an equal
job (entities, seeds, bonds, user CCD; `source` and `ground_truth` are not part of the
format). MSAs and templates are written inline, as AF3 writes its data JSON after the data
pipeline; None stays null ("not given") and "" stays "" ("explicitly none").
Keys follow AF3's `folding_input.Input.to_json`: `bondedAtomPairs` and `userCCD` are null
when absent; `description` only when set.
SI deviation: none (format only). AF3 merges identical chains into one entry; foldray keeps
the job's own entity list, which is already grouped by the input.
"""

from __future__ import annotations

import json
from typing import Any

from foldray.inputs.af3_json import DIALECT
from foldray.inputs.job import Entity, Job, LigandChain, PolymerChain, TemplateInput
from foldray.inputs.restraints import restraint_to_json

VERSION = 4
_MOD_KEYS = {"protein": ("ptmType", "ptmPosition"), "rna": ("modificationType", "basePosition"),
             "dna": ("modificationType", "basePosition")}


def job_to_af3_json(job: Job) -> dict[str, Any]:
    """The job as an AF3 JSON object (json.dumps-ready)."""
    bonds = [[[ref.chain_id, ref.residue, ref.atom_name] for ref in pair]
             for pair in job.bonded_atom_pairs]
    return {
        "dialect": DIALECT,
        "version": VERSION,
        "name": job.name,
        "sequences": [_entity(entity) for entity in job.entities],
        "modelSeeds": list(job.seeds),
        "bondedAtomPairs": bonds or None,
        "userCCD": job.user_ccd,
        **({"restraints": [restraint_to_json(r) for r in job.restraints]} if job.restraints else {}),
    }


def job_to_af3_json_text(job: Job) -> str:
    """The `<job>_data.json` text (2-space indent, like AF3)."""
    return json.dumps(job_to_af3_json(job), indent=2) + "\n"


def _ids(ids: tuple[str, ...]) -> str | list[str]:
    return ids[0] if len(ids) == 1 else list(ids)


def _entity(entity: Entity) -> dict[str, Any]:
    if isinstance(entity, LigandChain):
        body: dict[str, Any] = {"id": _ids(entity.ids)}
        if entity.smiles is not None:
            body["smiles"] = entity.smiles
        else:
            body["ccdCodes"] = list(entity.ccd_codes or ())
        if entity.description is not None:
            body["description"] = entity.description
        return {"ligand": body}
    return {entity.mol_type: _polymer(entity)}


def _polymer(chain: PolymerChain) -> dict[str, Any]:
    type_key, pos_key = _MOD_KEYS[chain.mol_type]
    body: dict[str, Any] = {
        "id": _ids(chain.ids),
        "sequence": chain.sequence,
        "modifications": [{type_key: m.ccd_code, pos_key: m.position}
                          for m in chain.modifications],
    }
    # AF3 accepts MSAs for protein (unpaired + paired) and RNA (unpaired), templates for
    # protein only; DNA has neither.
    if chain.mol_type in ("protein", "rna"):
        body["unpairedMsa"] = chain.unpaired_msa
    if chain.mol_type == "protein":
        body["pairedMsa"] = chain.paired_msa
        body["templates"] = None if chain.templates is None else \
            [_template(t) for t in chain.templates]
    if chain.description is not None:
        body["description"] = chain.description
    return body


def _template(template: TemplateInput) -> dict[str, Any]:
    return {"mmcif": template.mmcif, "queryIndices": list(template.query_indices),
            "templateIndices": list(template.template_indices)}
