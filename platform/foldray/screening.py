"""Library screens: one target (protein chains, MSAs) x many ligands.

A screen job is the target job plus one ligand chain. The target's parsed MSAs are the
part worth computing once (an a3m of thousands of rows parses in seconds, a ligand
featurizes in ~0.1 s), so `TargetCache` keeps them per target content hash and
`featurize_screen_job` reuses them; the result equals `featurize_job` of the same job and
seed (tested). Screen metrics (ligand pLDDT, target-ligand PAE) come from one sample.
"""

from __future__ import annotations

import dataclasses
import hashlib
import string
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import product

import numpy as np

from foldray.chem.ccd import is_known_ccd
from foldray.chem.smiles import parse_smiles
from foldray.errors import InputError
from foldray.features.config import FeaturizationConfig
from foldray.features.constraints import add_constraint_features
from foldray.features.featurize import featurize
from foldray.features.msa import build_msa
from foldray.features.pipeline import (
    MAX_MSA_ROWS,
    MAX_PAIRED_ROWS,
    FeaturizedJob,
    msa_inputs,
    parse_entity_msas,
)
from foldray.features.templates import template_features
from foldray.features.tokenize import DEFAULT_MAX_TOKENS, TokenizedStructure, tokenize
from foldray.inputs.a3m import A3m
from foldray.inputs.job import Job, LigandChain, sanitize_name
from foldray.inputs.restraints import (
    MAX_DISTANCE,
    MAX_POCKET_RESIDUES,
    PocketRestraint,
    ResidueRef,
    chain_lengths,
)
from foldray.io.confidences import SamplePrediction, token_chain_index

DEFAULT_POCKET_DISTANCE = 6.0   # Å, Boltz's default pocket distance (Protenix trained on 3-15 Å)


@dataclass(frozen=True, kw_only=True)
class LigandSpec:
    """One ligand of a screen: an id (row key) and a SMILES or a CCD code; `pocket`: target
    residues the ligand binds near (a pocket restraint with the ligand as the binder)."""

    id: str
    smiles: str | None = None
    ccd: str | None = None
    pocket: tuple[ResidueRef, ...] = ()
    pocket_distance: float = DEFAULT_POCKET_DISTANCE


def parse_pocket(specs: Sequence[str], target: Job, *, distance: float = DEFAULT_POCKET_DISTANCE,
                 field: str = "--pocket", distance_field: str | None = None) -> tuple[ResidueRef, ...]:
    """`CHAIN:RES[,RES...]` strings (e.g. `A:12,45,88`) -> the target's residues, checked
    against its chains (InputError naming `field`, or `distance_field`: `<field>-distance`)."""
    if not 0 < distance <= MAX_DISTANCE:
        raise InputError(f"the pocket distance must be in (0, {MAX_DISTANCE:g}] Å, got {distance:g}",
                         field=distance_field or f"{field}-distance")
    lengths = chain_lengths(target.entities)
    refs: list[ResidueRef] = []
    for spec in specs:
        chain, _, numbers = spec.partition(":")
        if chain not in lengths or not numbers:
            raise InputError(f"expected CHAIN:RES[,RES...] with a chain of the target "
                             f"({', '.join(sorted(lengths))}), got {spec[:40]!r}", field=field)
        for text in numbers.split(","):
            if not (text.isascii() and text.isdigit() and 1 <= int(text) <= lengths[chain]):
                raise InputError(f"residue {text[:12]!r} of chain {chain} is not in 1..{lengths[chain]}",
                                 field=field)
            ref = ResidueRef(chain_id=chain, residue=int(text))
            if ref not in refs:
                refs.append(ref)
    if len(refs) > MAX_POCKET_RESIDUES:
        raise InputError(f"{len(refs)} pocket residues; at most {MAX_POCKET_RESIDUES}", field=field)
    return tuple(refs)


def check_ligand(ligand: LigandSpec, *, field: str = "ligand") -> None:
    """Raise `InputError` (RDKit's reason, CCD lookup) before any featurization work."""
    if (ligand.smiles is None) == (ligand.ccd is None):
        raise InputError("give exactly one of smiles or ccd", job=ligand.id, field=field)
    try:
        if ligand.smiles is not None:
            parse_smiles(ligand.smiles)
        elif not is_known_ccd(str(ligand.ccd)):
            raise InputError(f"unknown CCD code {ligand.ccd!r}")
    except InputError as err:
        key = "smiles" if ligand.smiles is not None else "ccd"
        raise err.located(job=ligand.id, field_prefix=f"{field}.{key}") from None


def target_key(target: Job) -> str:
    """Content hash of what the model sees of a target (chains, MSAs, bonds, user CCD),
    not its name or seeds: two requests with the same target share one cache entry."""
    content = repr((target.entities, target.bonded_atom_pairs, target.user_ccd))
    return hashlib.sha256(content.encode()).hexdigest()


def _chain_ids() -> list[str]:
    letters = string.ascii_uppercase
    return list(letters) + ["".join(p) for p in product(letters, repeat=2)]


def ligand_job(target: Job, ligand: LigandSpec, *, seeds: Sequence[int] | None = None) -> Job:
    """The target plus the ligand as a new chain (the first free id), named after the ligand."""
    used = set(target.chain_ids)
    chain_id = next(c for c in _chain_ids() if c not in used)
    entity = LigandChain(ids=(chain_id,), smiles=ligand.smiles,
                         ccd_codes=(ligand.ccd,) if ligand.ccd else None)
    restraints = target.restraints
    if ligand.pocket:
        restraints += (PocketRestraint(binder=chain_id, residues=ligand.pocket,
                                       max_distance=ligand.pocket_distance),)
    return dataclasses.replace(target, name=sanitize_name(ligand.id), entities=target.entities + (entity,),
                               seeds=tuple(seeds) if seeds else target.seeds, restraints=restraints)


@dataclass(frozen=True)
class PreparedTarget:
    """Parsed MSAs of a target's entities (the expensive, ligand-independent part)."""

    key: str
    n_entities: int
    entity_msas: tuple[tuple[A3m | None, A3m | None], ...]


def prepare_target(target: Job, max_msa_rows: int = MAX_MSA_ROWS) -> PreparedTarget:
    return PreparedTarget(key=target_key(target), n_entities=len(target.entities),
                          entity_msas=tuple(parse_entity_msas(target, max_msa_rows)))


class TargetCache:
    """LRU of `PreparedTarget` by content hash; counts hits so tests can see the reuse."""

    def __init__(self, max_entries: int = 16) -> None:
        self._entries: OrderedDict[str, PreparedTarget] = OrderedDict()
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0

    def get(self, target: Job, max_msa_rows: int = MAX_MSA_ROWS) -> PreparedTarget:
        key = target_key(target)
        if key in self._entries:
            self.hits += 1
            self._entries.move_to_end(key)
            return self._entries[key]
        self.misses += 1
        prepared = prepare_target(target, max_msa_rows)
        self._entries[key] = prepared
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return prepared


def featurize_screen_job(job: Job, target: PreparedTarget, *, seed: int = 0,
                         max_tokens: int | None = DEFAULT_MAX_TOKENS,
                         max_msa_rows: int = MAX_MSA_ROWS,
                         featurization: FeaturizationConfig | None = None) -> FeaturizedJob:
    """`featurize_job(job, seed=seed, featurization=...)` for inference, with the target's MSAs
    already parsed.

    `job` must be `ligand_job(target_job, ...)`: its first entities are the target's.
    """
    featurization = featurization or FeaturizationConfig()
    if len(job.entities) < target.n_entities:
        raise ValueError(f"job {job.name!r} has fewer entities than its prepared target")
    rng = np.random.default_rng(seed)
    tokens = tokenize(job, max_tokens=max_tokens, featurization=featurization)
    extra = [(None, None)] * (len(job.entities) - target.n_entities)   # ligands: no MSA
    chain_msas, column = msa_inputs(job, tokens, max_msa_rows,
                                    entity_msas=list(target.entity_msas) + extra, featurization=featurization)
    msa = build_msa(chain_msas, max_rows=max_msa_rows,
                    max_paired_rows=min(MAX_PAIRED_ROWS, max_msa_rows // 2), featurization=featurization)
    templates = template_features(job, tokens, rng=None)
    features = featurize(tokens, msa, column, rng=rng, templates=templates)
    add_constraint_features(features, job, tokens)      # the target's restraints, as featurize_job
    return FeaturizedJob(job=job, tokens=tokens, features=features)


def screen_metrics(tokens: TokenizedStructure, sample: SamplePrediction,
                   ligand_chain: int = -1) -> dict[str, float]:
    """Scores of one sample for a screen row, the same for `foldray screen` and the Serve
    screen (the results table's column names): the ligand chain is the last one by default.

    ligand_plddt: mean pLDDT of the ligand's atoms; min_target_ligand_pae: the smallest
    PAE between a target token and a ligand token, either direction (Å). NaN: unknown.
    """
    chain_index = ligand_chain % len(tokens.chains)
    is_ligand_atom = np.asarray(tokens.atom_chain) == chain_index
    is_ligand_token = token_chain_index(tokens) == chain_index
    pae = np.asarray(sample.pae)
    cross = np.concatenate([pae[~is_ligand_token][:, is_ligand_token].ravel(),
                            pae[is_ligand_token][:, ~is_ligand_token].ravel()])
    return {"ranking_score": float(sample.score()), "iptm": float(sample.iptm),
            "ptm": float(sample.ptm),
            "ligand_plddt": float(np.mean(sample.atom_plddt[is_ligand_atom])),
            "min_target_ligand_pae": float(cross.min()) if cross.size else float("nan")}
