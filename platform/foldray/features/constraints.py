"""Restraints -> Protenix's constraint features (token-pair, raw distances in Å).

Why: Protenix's constraint model was trained on exactly these encodings, so its imported
embedder (model/constraint_embedder.py) reads them as they are. Protenix 2.0.0
(`ConstraintFeatureGenerator.generate_from_json`, "continuous" encoding, pad 0):

  constraint_pocket        [N_token, N_token, 1]  [binder token, pocket token, 0] = max distance,
                                                  for every token of the binder chain (not symmetric)
  constraint_contact       [N_token, N_token, 2]  [i, j] = [j, i] = (min distance 0, max distance)
  constraint_contact_atom  [N_token, N_token, 2]  the same for atom-atom contacts, at the tokens
                                                  of the two atoms (min distance 0)

A residue with several tokens (a ligand or modified residue) is represented by its first
token where Protenix draws one at random; a named atom picks the token holding it. Protenix
splits a standard residue into per-atom tokens for an atom-atom contact; foldray does not
re-tokenize, so such a contact must name at least one side as a whole residue (refused
otherwise). Substructure constraints are not an input: their feature is all "none", which
the embedder turns into its constant (see `ConstraintEmbedder`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from foldray.errors import InputError
from foldray.features.tokenize import TokenizedStructure
from foldray.inputs.job import Job
from foldray.inputs.restraints import ContactRestraint, PocketRestraint, ResidueRef

# name -> channels of the [N_token, N_token, c] float32 feature; the model's embedder reads these
CONSTRAINT_FEATURES = {"constraint_pocket": 1, "constraint_contact": 2, "constraint_contact_atom": 2}


def empty_constraint_features(n_token: int) -> dict[str, np.ndarray]:
    """All-zero features: "no restraint" in Protenix's encoding."""
    return {name: np.zeros((n_token, n_token, c), np.float32) for name, c in CONSTRAINT_FEATURES.items()}


class _Locator:
    """Token look-ups by (chain, residue[, atom]) on one tokenized job."""

    def __init__(self, job: Job, tokens: TokenizedStructure) -> None:
        self.job, self.tokens = job, tokens
        chain_ids = np.array([c.chain_id for c in tokens.chains])
        self.atom_chain_id = chain_ids[tokens.atom_chain] if len(chain_ids) else np.array([], str)

    def error(self, field: str, message: str) -> InputError:
        return InputError(message, source=self.job.source, job=self.job.name, field=field)

    def chain_tokens(self, chain_id: str) -> np.ndarray:
        return np.unique(self.tokens.atom_to_token[self.atom_chain_id == chain_id])

    def atom(self, ref: ResidueRef, field: str) -> int:
        t = self.tokens
        found = np.flatnonzero((self.atom_chain_id == ref.chain_id) & (t.atom_residue == ref.residue)
                               & (t.atom_name == ref.atom_name))
        if len(found) != 1:
            raise self.error(field, f"residue {ref.residue} of chain {ref.chain_id!r} has no atom "
                                    f"{ref.atom_name!r} (hydrogens and leaving atoms are not modelled)")
        return int(found[0])

    def token(self, ref: ResidueRef, field: str) -> int:
        """The token of the named atom, else the residue's first token."""
        if ref.atom_name is not None:
            return int(self.tokens.atom_to_token[self.atom(ref, field)])
        found = self.tokens.atom_to_token[(self.atom_chain_id == ref.chain_id)
                                          & (self.tokens.atom_residue == ref.residue)]
        if not len(found):
            raise self.error(field, f"residue {ref.residue} of chain {ref.chain_id!r} has no atoms "
                                    "in the model input (cropped away?)")
        return int(found.min())


def constraint_features(job: Job, tokens: TokenizedStructure) -> dict[str, np.ndarray]:
    """The job's restraints as Protenix's constraint features (all zero without restraints)."""
    out = empty_constraint_features(tokens.n_tokens)
    where = _Locator(job, tokens)
    pocket, contact, contact_atom = (out[n] for n in CONSTRAINT_FEATURES)
    for i, restraint in enumerate(job.restraints):
        field = f"restraints[{i}]"
        d = np.float32(restraint.max_distance)
        if isinstance(restraint, PocketRestraint):
            binder = where.chain_tokens(restraint.binder)
            for j, ref in enumerate(restraint.residues):
                pocket[binder, where.token(ref, f"{field}.residues[{j}]"), 0] = d
        elif isinstance(restraint, ContactRestraint):
            refs = (restraint.first, restraint.second)
            fields = [f"{field}.residues[{j}]" for j in range(2)]
            if all(r.atom_name is not None for r in refs):
                for ref, f in zip(refs, fields, strict=True):
                    token = tokens.atom_to_token[where.atom(ref, f)]
                    if tokens.is_standard[token]:
                        raise where.error(f, "an atom-atom contact needs atoms of ligands or modified "
                                             "residues; name this standard residue without its atom")
                target = contact_atom
            else:
                target = contact
            a, b = (where.token(r, f) for r, f in zip(refs, fields, strict=True))
            target[a, b, 1] = target[b, a, 1] = d
    return out


def add_constraint_features(features: dict[str, np.ndarray], job: Job, tokens: TokenizedStructure) -> None:
    """Adds the features in place when the job has restraints (else the dict stays as it was:
    a model with the embedder reads absent features as zeros, see `fill_missing`)."""
    if job.restraints:
        features.update(constraint_features(job, tokens))


def fill_missing(samples: Sequence[Mapping[str, np.ndarray]]) -> list[Mapping[str, np.ndarray]]:
    """Samples to batch together: where some carry constraint features, zeros for the others."""
    if not any(name in s for s in samples for name in CONSTRAINT_FEATURES):
        return list(samples)
    out: list[Mapping[str, np.ndarray]] = []
    for sample in samples:
        if all(name in sample for name in CONSTRAINT_FEATURES):
            out.append(sample)
        else:
            n_token = sample["restype"].shape[0]
            out.append({**empty_constraint_features(n_token), **sample})
    return out


def require_constraint_embedder(job: Job, config: Any, weights: str) -> None:
    """InputError naming the job and the weights when a job with restraints meets a model
    without the constraint embedder: restraints are never silently ignored."""
    if job.restraints and not getattr(config, "constraint_embedder", False):
        raise InputError(f"the job has {len(job.restraints)} restraint(s) but the model ({weights}) has no "
                         "constraint embedder; use a checkpoint imported from a Protenix constraint "
                         "model (docs/restraints.md) or remove the restraints",
                         source=job.source, job=job.name, field="restraints")
