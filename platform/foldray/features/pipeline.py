"""Job -> model features: tokenize (2.6), MSAs (2.3), optional crop (2.7), featurize (2.8).

This is the one entry point the CLI, Ray Data stages, Serve and training call, so a job
is featurized the same way everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from foldray.errors import InputError
from foldray.features.config import DEFAULT_FEATURIZATION, FeaturizationConfig
from foldray.features.constraints import add_constraint_features
from foldray.features.crop import CROP_WEIGHTS, crop_tokens, sample_crop_strategy
from foldray.features.featurize import featurize
from foldray.features.ground_truth import AtomTargets, align_ground_truth, drop_long_bonds
from foldray.features.msa import ChainMsaInput, MsaFeatures, build_msa
from foldray.features.templates import template_features
from foldray.features.tokenize import DEFAULT_MAX_TOKENS, TokenizedStructure, select_tokens, tokenize
from foldray.inputs.a3m import A3m, check_query, parse_a3m
from foldray.inputs.job import Job, PolymerChain
from foldray.residues import GAP, ONE_TO_CCD, RESTYPE_INDEX, UNKNOWN_RESTYPE

MAX_MSA_ROWS = 16384
MAX_PAIRED_ROWS = 8191   # SI 2.3: up to 8,191 paired rows after the query


@dataclass(frozen=True, kw_only=True)
class CropSettings:
    """Training crop (SI 2.7): size and the strategy weights of one dataset (Table 4)."""

    size: int = 384
    dataset: str = "weighted_pdb"
    preferred_chains: tuple[str, ...] = ()   # SI 2.5.1 chain or interface bias


@dataclass(frozen=True, kw_only=True)
class FeaturizedJob:
    """What the model needs for one job, plus the layout to write its outputs."""

    job: Job
    tokens: TokenizedStructure
    features: dict[str, np.ndarray]
    targets: AtomTargets | None = None
    crop_strategy: str | None = None

    @property
    def n_tokens(self) -> int:
        return self.tokens.n_tokens


def _entity_msas(job: Job, entity_index: int, max_rows: int) -> tuple[A3m | None, A3m | None]:
    entity = job.entities[entity_index]
    if not isinstance(entity, PolymerChain) or entity.mol_type == "dna":
        return None, None
    field = f"sequences[{entity_index}].{entity.mol_type}"
    parsed: list[A3m | None] = []
    for key, text in (("unpairedMsa", entity.unpaired_msa), ("pairedMsa", entity.paired_msa)):
        if not text or (key == "pairedMsa" and entity.mol_type != "protein"):
            parsed.append(None)
            continue
        try:
            a3m = parse_a3m(text, entity.mol_type, max_rows=max_rows)
            check_query(a3m, entity.sequence)
        except InputError as err:
            raise err.located(source=job.source, job=job.name,
                              field_prefix=f"{field}.{key}") from None
        parsed.append(a3m)
    return parsed[0], parsed[1]


def parse_entity_msas(job: Job, max_rows: int = MAX_MSA_ROWS) -> list[tuple[A3m | None, A3m | None]]:
    """(unpaired, paired) parsed MSA of every entity; None where none is given.

    Public so a caller featurizing many jobs that share entities (a library screen) can
    parse them once and pass them to `msa_inputs`.
    """
    return [_entity_msas(job, i, max_rows) for i in range(len(job.entities))]


def input_letters_query(entity, mol_type: str, query: np.ndarray) -> np.ndarray:
    """A polymer chain's MSA query from its sequence letters as written in the input (a
    modified residue shows the letter the user wrote, e.g. N for GTP), as Protenix builds it
    (ptx:protenix/data/msa/msa_featurizer.py:633-635); AF3 uses the residue's CCD one-letter
    code (af3:src/alphafold3/model/features.py:462). Unknown letters: the chain's unknown."""
    letters = getattr(entity, "sequence", None)
    if letters is None or len(letters) != len(query):
        return query
    table = ONE_TO_CCD[mol_type]
    unknown = UNKNOWN_RESTYPE[mol_type]
    return np.array([RESTYPE_INDEX[table[c]] if c in table else unknown for c in letters], np.int64)


def msa_inputs(job: Job, tokens: TokenizedStructure, max_rows: int = MAX_MSA_ROWS,
               entity_msas: list[tuple[A3m | None, A3m | None]] | None = None,
               featurization: FeaturizationConfig = DEFAULT_FEATURIZATION,
               ) -> tuple[list[ChainMsaInput], np.ndarray]:
    """Per-chain MSA inputs and, per token, the MSA column it reads ([N_token] int64).

    `entity_msas` (one pair per job entity) skips parsing: see `parse_entity_msas`.
    """
    per_entity = entity_msas if entity_msas is not None else parse_entity_msas(job, max_rows)
    inputs: list[ChainMsaInput] = []
    column = np.zeros(tokens.n_tokens, np.int64)
    offset = 0
    for chain in tokens.chains:
        start, end = chain.token_start, chain.token_end
        if chain.mol_type == "ligand":   # gap in every MSA row, as AF3 writes ligand columns
            query = np.full(end - start, GAP, np.int64)   # (af3 model/features.py:519-528)
            column[start:end] = offset + np.arange(end - start)
        else:
            residue = tokens.residue_index[start:end] - 1       # 0-based residue per token
            n_res = len(chain.residue_names)
            query = np.full(n_res, UNKNOWN_RESTYPE[chain.mol_type], np.int64)
            query[residue] = tokens.restype[start:end]
            if featurization.msa_query_letters == "input":    # Protenix: the letters as written
                query = input_letters_query(job.entities[chain.entity_index], chain.mol_type, query)
            column[start:end] = offset + residue
        unpaired, paired = per_entity[chain.entity_index]
        inputs.append(ChainMsaInput(chain_id=chain.chain_id, entity_id=chain.entity_id,
                                    mol_type=chain.mol_type, query=query,
                                    unpaired=unpaired, paired=paired))
        offset += len(query)
    return inputs, column


def _crop(tokens: TokenizedStructure, targets: AtomTargets, settings: CropSettings,
          rng: np.random.Generator) -> tuple[np.ndarray, str]:
    strategy = sample_crop_strategy(CROP_WEIGHTS[settings.dataset], rng)
    centre_pos = targets.coords[tokens.centre_atom]
    candidates = None
    if settings.preferred_chains:
        ids = np.array([c.chain_id for c in tokens.chains])
        chain_of_token = np.zeros(tokens.n_tokens, np.int64)
        for i, chain in enumerate(tokens.chains):
            chain_of_token[chain.token_start:chain.token_end] = i
        candidates = np.isin(ids[chain_of_token], settings.preferred_chains)
    # a residue (all its atom tokens) is kept or dropped whole
    group = tokens.atom_space_uid[tokens.centre_atom]
    selected = crop_tokens(strategy, asym_id=tokens.asym_id, centre_pos=centre_pos,
                           centre_mask=targets.token_resolved(tokens), crop_size=settings.size,
                           rng=rng, candidates=candidates, group_id=group)
    return selected, strategy


def featurize_job(job: Job, *, seed: int = 0, max_tokens: int | None = DEFAULT_MAX_TOKENS,
                  max_msa_rows: int = MAX_MSA_ROWS, crop: CropSettings | None = None,
                  with_targets: bool | None = None,
                  featurization: FeaturizationConfig | None = None) -> FeaturizedJob:
    """Featurize one job. Cropping needs ground truth (a job read from mmCIF).

    `seed` drives every random choice (reference rotations, crops), so a featurization
    is reproducible. `featurization` is the model's (`ModelConfig.featurization`: imported
    weights expect their reference's); None is AlphaFold 3's.
    """
    featurization = featurization or DEFAULT_FEATURIZATION
    rng = np.random.default_rng(seed)
    tokens = tokenize(job, max_tokens=max_tokens if crop is None else None, featurization=featurization)
    chain_msas, column = msa_inputs(job, tokens, max_msa_rows, featurization=featurization)
    msa: MsaFeatures = build_msa(chain_msas, max_rows=max_msa_rows,
                                 max_paired_rows=min(MAX_PAIRED_ROWS, max_msa_rows // 2),
                                 featurization=featurization)

    targets = None
    if with_targets is None:
        with_targets = job.ground_truth is not None
    if with_targets or crop is not None:
        if job.ground_truth is None:
            raise InputError("cropping and training targets need a structure with coordinates",
                             source=job.source, job=job.name)
        targets = align_ground_truth(tokens, job.ground_truth)
        tokens = drop_long_bonds(tokens, targets)

    strategy = None
    if crop is not None and targets is not None and tokens.n_tokens > crop.size:
        selected, strategy = _crop(tokens, targets, crop, rng)
        atom_keep = np.flatnonzero(np.isin(tokens.atom_to_token, selected))
        targets = targets.select_atoms(atom_keep)
        tokens = select_tokens(tokens, selected)
        column = column[selected]
    # templates after the crop; a training crop draws which templates to show (SI 2.4)
    templates = template_features(job, tokens, rng=rng if crop is not None else None)
    features = featurize(tokens, msa, column, rng=rng, templates=templates)
    add_constraint_features(features, job, tokens)     # restraints (Protenix constraint features)
    return FeaturizedJob(job=job, tokens=tokens, features=features, targets=targets,
                         crop_strategy=strategy)


def featurize_seeds(job: Job, seeds: tuple[int, ...] | None = None, *,
                    max_tokens: int | None = DEFAULT_MAX_TOKENS,
                    share_trunk: bool = False,
                    featurization: FeaturizationConfig | None = None) -> dict[int, FeaturizedJob]:
    """Inference features of a job once per seed (None: its modelSeeds); the seed only
    changes reference-conformer rotations. The CPU half of prediction, run apart from the
    model in batch pipelines. With `share_trunk` every seed maps to the first seed's
    features (one object: it pickles once), as the model then runs one trunk for all.
    `featurization`: the model's, as in `featurize_job`."""
    seeds = seeds or job.seeds
    if share_trunk:
        first = featurize_job(job, seed=seeds[0], max_tokens=max_tokens, with_targets=False,
                              featurization=featurization)
        return dict.fromkeys(seeds, first)
    return {seed: featurize_job(job, seed=seed, max_tokens=max_tokens, with_targets=False,
                                featurization=featurization)
            for seed in seeds}
