"""MSA features of a complex: SI 2.3 (MSA processing) and the Table 5 MSA features.

`build_msa` stacks per-chain MSAs into one ``[N_msa, L_total]`` MSA whose columns are the
chains' columns in the given order, the way AlphaFold 3 does it (`model/features.py`
`MSA.compute_features` and `model/msa_pairing.py`; Protenix's `MSAPairingEngine` follows it):

* Row 0 is the query of every chain.
* Paired rows (at most ``max_paired_rows``, SI: 8,191): built from the ``paired`` (UniProt)
  MSAs by species, AlphaFold-Multimer style. Pairing only happens when the complex has more
  than one distinct protein sequence; a homomer (or a single protein with ligands/nucleic
  acids) gets no paired rows. Only protein chains longer than 4 residues with a paired MSA
  take part; every other chain is gap (deletion 0) on paired rows. Within one complex:

  - a species' key is `species_key` of the header; rows without a key are never paired;
  - a species is used when it occurs in at least 2 chains (chains, not entities: the copies of
    A in A2B count twice, and each copy takes the same rows of A's MSA);
  - species found in more chains come first; for each species, the k-th hit of every chain
    forms one row, k < min over those chains of their hit count, capped at 600 per species
    (AF3 `max_paired_sequence_per_species`); chains without the species are gap;
  - within one "number of chains" group rows are ordered by the product of their row indices
    in the original MSAs (earlier, better hits first); rows that are gap in every chain are
    dropped.
* Then the dense unpaired block: for each chain its main (``unpaired``) MSA in file order,
  deduplicated (first copy kept; AF3 deduplicates searched MSAs), and, when pairing happened,
  without rows identical to a row of the chain's own paired block, including its query (AF3
  `deduplicate_unpaired_sequences`). Shorter chains are padded with gap rows (deletion 0).
  Without pairing AF3 keeps the unpaired query, so row 1 repeats row 0; we do the same.
* Rows are capped at ``max_rows`` (SI: 16,384) by cutting the unpaired block.

Chains that get no MSA, as in AF3: ligands, DNA, polymers of <= 4 residues, and chains whose
``unpaired`` is None. Their main MSA is the query row alone (the caller's ``query``: gap for
ligand columns, as AF3 writes them). OpenFold3 (``FeaturizationConfig.msa_without_alignment``
"gap") instead gives them no main rows: gap in every row, row 0 included, and a zero profile.
With ``paired_msa`` "precomputed" (OpenFold3) the paired rows are each chain's ``paired`` MSA
as given, row-aligned across chains, for any number of chains (see foldray.features.config).

``profile`` and ``deletion_mean`` come from each chain's deduplicated main MSA before pairing
and cropping (Table 5), or from the query row alone for chains without one. Copies of an entity
that share the same ``ChainMsaInput`` objects are processed once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from foldray.errors import InputError
from foldray.features.config import DEFAULT_FEATURIZATION, FeaturizationConfig
from foldray.inputs.a3m import A3m, check_query
from foldray.residues import GAP, NUM_RESTYPES, UNKNOWN_RESTYPE, MolType

__all__ = ["ChainMsaInput", "MsaFeatures", "build_msa", "check_query"]

MAX_ROWS_PER_SPECIES = 600  # AF3 pipeline default `max_paired_sequence_per_species`
MIN_MSA_LENGTH = 5  # AF3 skips MSAs of polymer chains with <= 4 residues
_MAIN_MSA_TYPES = frozenset({"protein", "rna"})  # AF3 uses no DNA MSA


@dataclass(frozen=True, kw_only=True, eq=False)
class ChainMsaInput:
    """One chain of the complex; copies of an entity may (and should) share the A3m objects."""

    chain_id: str
    entity_id: int
    mol_type: MolType  # "protein" | "rna" | "dna" | "ligand"
    query: np.ndarray  # [L] int restype classes of the chain's columns (residues; ligand atoms)
    unpaired: A3m | None  # main MSA (None -> query only)
    paired: A3m | None  # UniProt-style MSA used for cross-chain pairing (protein only)


@dataclass(frozen=True, kw_only=True, eq=False)
class MsaFeatures:
    """Table 5 MSA features; rows 1..n_paired_rows are the species-paired rows."""

    msa: np.ndarray  # [N_msa, L_total] uint8 restype classes
    deletion_count: np.ndarray  # [N_msa, L_total] float32 raw deletion counts
    profile: np.ndarray  # [L_total, 32] float32, rows sum to 1
    deletion_mean: np.ndarray  # [L_total] float32
    n_paired_rows: int  # paired rows after the query row (0 without pairing)

    @property
    def has_deletion(self) -> np.ndarray:
        return self.deletion_count > 0  # [N_msa, L_total] bool

    @property
    def deletion_value(self) -> np.ndarray:
        """(2/pi) * arctan(d/3) of the raw counts, in [0, 1)."""
        return (2.0 / np.pi * np.arctan(self.deletion_count / 3.0)).astype(np.float32)


@dataclass(frozen=True, kw_only=True, eq=False)
class _MainMsa:
    """A chain's deduplicated main MSA and the features computed from it."""

    rows: np.ndarray  # [N, L] uint8, row 0 = query
    deletions: np.ndarray  # [N, L] int32
    profile: np.ndarray  # [L, 32] float32
    deletion_mean: np.ndarray  # [L] float32


def build_msa(chains: Sequence[ChainMsaInput], *, max_rows: int = 16384, max_paired_rows: int = 8191,
              max_rows_per_species: int = MAX_ROWS_PER_SPECIES,
              featurization: FeaturizationConfig = DEFAULT_FEATURIZATION) -> MsaFeatures:
    """Stack the chains' MSAs into the complex MSA of SI 2.3 (see the module docstring).

    Raises `InputError` when an a3m's first row is not the chain's query.
    """
    if not chains:
        raise ValueError("build_msa needs at least one chain")
    if max_rows < 1 or not 0 <= max_paired_rows < max_rows:
        raise ValueError(f"need max_rows >= 1 and 0 <= max_paired_rows < max_rows, "
                         f"got {max_rows=}, {max_paired_rows=}")
    for chain in chains:
        query = np.asarray(chain.query)
        if query.ndim != 1 or (query.size and not (query.min() >= 0 and query.max() < NUM_RESTYPES)):
            raise ValueError(f"chain {chain.chain_id}: query must be [L] restype classes in "
                             f"[0, {NUM_RESTYPES}), got shape {query.shape}")
    queries = [np.asarray(chain.query).astype(np.uint8) for chain in chains]  # [L_c] each
    fill = featurization.fill_non_protein_msa_rows
    if fill:   # Protenix: a ligand's query (and so its profile) is UNK, not gap
        queries = [np.full_like(q, UNKNOWN_RESTYPE["ligand"]) if c.mol_type == "ligand" else q
                   for c, q in zip(chains, queries, strict=True)]
    widths = [len(q) for q in queries]
    offsets = np.concatenate([[0], np.cumsum(widths)]).astype(int)  # [N_chain + 1]

    mains: list[_MainMsa] = []
    cache: dict[tuple, _MainMsa] = {}
    gap_without_alignment = featurization.msa_without_alignment == "gap"
    for chain, query in zip(chains, queries, strict=True):
        a3m = chain.unpaired if _uses_main_msa(chain, query) else None
        extra = chain.paired if featurization.paired_msa_as_unpaired and a3m is not None \
            and _uses_paired_msa(chain, query) else None
        key = (id(a3m), id(extra), chain.mol_type, query.tobytes())
        if key not in cache:
            cache[key] = _empty_main(len(query)) if a3m is None and gap_without_alignment \
                else _main_msa(chain, query, a3m, extra)
        mains.append(cache[key])
    first_row = queries
    if gap_without_alignment:   # OpenFold3: no query row either where there is no alignment
        first_row = [q if _uses_main_msa(c, q) else np.full_like(q, GAP)
                     for c, q in zip(chains, queries, strict=True)]

    protein_sequences = {q.tobytes() for c, q in zip(chains, queries, strict=True) if c.mol_type == "protein"}
    precomputed = featurization.paired_msa == "precomputed"
    if precomputed:
        paired_rows, paired_dels = _precomputed_pairs(chains, queries, offsets, max_paired_rows)
        pairing = len(paired_rows) > 0
    else:
        pairing = len(protein_sequences) > 1
    if pairing and not precomputed:
        paired_a3ms = [chain.paired if _uses_paired_msa(chain, query) else None
                       for chain, query in zip(chains, queries, strict=True)]
        for chain, query, a3m in zip(chains, queries, paired_a3ms, strict=True):
            if a3m is not None:
                _check_rows(a3m, query, chain, "paired")
        index = _pair_by_species([a3m.species if a3m else None for a3m in paired_a3ms],
                                 max_paired_rows, max_rows_per_species)  # [n_pair, N_chain]
        paired_rows = np.full((len(index), offsets[-1]), GAP, dtype=np.uint8)  # [n_pair, L_total]
        paired_dels = np.zeros((len(index), offsets[-1]), dtype=np.int32)
        for c, a3m in enumerate(paired_a3ms):
            take = np.flatnonzero(index[:, c] >= 0)
            if a3m is not None and take.size:
                paired_rows[take, offsets[c]:offsets[c + 1]] = a3m.rows[index[take, c]]
                paired_dels[take, offsets[c]:offsets[c + 1]] = a3m.deletions[index[take, c]]
        keep = (paired_rows != GAP).any(axis=1)  # AF3 drops rows that are gap in every chain
        paired_rows, paired_dels = paired_rows[keep], paired_dels[keep]
    elif not precomputed:
        paired_rows = np.zeros((0, offsets[-1]), dtype=np.uint8)
        paired_dels = np.zeros((0, offsets[-1]), dtype=np.int32)
    n_paired = len(paired_rows)

    budget = max_rows - 1 - n_paired  # rows left for the unpaired block
    unpaired: list[tuple[np.ndarray, np.ndarray]] = []
    main_keys: dict[int, list[bytes]] = {}  # shared by the copies of an entity
    for c, main in enumerate(mains):
        rows, dels = main.rows, main.deletions
        if pairing:  # drop rows this chain already shows in the query or paired rows
            shown = paired_rows[:, offsets[c]:offsets[c + 1]]
            # OpenFold3 compares with the paired block only (its first row is the query)
            seen = set(_row_keys(shown if precomputed else np.concatenate([queries[c][None], shown])))
            if id(main) not in main_keys:
                main_keys[id(main)] = _row_keys(rows)
            keys = main_keys[id(main)]
            keep = np.array([key not in seen for key in keys], dtype=bool)
            rows, dels = rows[keep], dels[keep]
        unpaired.append((rows[:budget], dels[:budget]))
    n_unpaired = max((len(rows) for rows, _ in unpaired), default=0)

    n_msa = 1 + n_paired + n_unpaired
    msa = np.full((n_msa, offsets[-1]), GAP, dtype=np.uint8)  # [N_msa, L_total]
    deletion = np.zeros((n_msa, offsets[-1]), dtype=np.float32)  # [N_msa, L_total]
    msa[0] = np.concatenate(first_row)
    msa[1:1 + n_paired] = paired_rows
    deletion[1:1 + n_paired] = paired_dels
    for c, (rows, dels) in enumerate(unpaired):
        cols = slice(offsets[c], offsets[c + 1])
        msa[1 + n_paired:1 + n_paired + len(rows), cols] = rows
        deletion[1 + n_paired:1 + n_paired + len(rows), cols] = dels
    if fill:   # Protenix: all-gap rows of a non-protein chain's columns repeat its row 0
        for c, chain in enumerate(chains):
            cols = slice(offsets[c], offsets[c + 1])
            if chain.mol_type != "protein" and offsets[c + 1] > offsets[c]:
                empty = (msa[:, cols] == GAP).all(axis=1)
                msa[empty, cols] = msa[0, cols]
    return MsaFeatures(
        msa=msa, deletion_count=deletion,
        profile=np.concatenate([m.profile for m in mains]),  # [L_total, 32]
        deletion_mean=np.concatenate([m.deletion_mean for m in mains]),  # [L_total]
        n_paired_rows=n_paired)


def _uses_main_msa(chain: ChainMsaInput, query: np.ndarray) -> bool:
    return chain.mol_type in _MAIN_MSA_TYPES and len(query) >= MIN_MSA_LENGTH and chain.unpaired is not None


def _uses_paired_msa(chain: ChainMsaInput, query: np.ndarray) -> bool:
    return chain.mol_type == "protein" and len(query) >= MIN_MSA_LENGTH and chain.paired is not None


def _check_rows(a3m: A3m, query: np.ndarray, chain: ChainMsaInput, kind: str) -> None:
    """InputError unless the a3m's first row is `query` (restype classes).

    An unknown class on either side (e.g. a modified residue without a standard parent)
    matches anything; the letters themselves are checked by `check_query` at parse time.
    """
    chain_id = chain.chain_id
    if a3m.mol_type != chain.mol_type:
        raise ValueError(f"chain {chain_id}: {kind} MSA was parsed as {a3m.mol_type}, "
                         f"the chain is {chain.mol_type}")
    found = a3m.rows[0]
    n = min(len(found), len(query))
    unknown = UNKNOWN_RESTYPE[chain.mol_type]
    differ = np.flatnonzero((found[:n] != query[:n]) & (found[:n] != unknown) & (query[:n] != unknown))
    if differ.size or len(found) != len(query):
        pos = int(differ[0]) + 1 if differ.size else n + 1
        raise InputError(f"chain {chain_id}: the {kind} MSA's query row ({len(found)} columns) is not "
                         f"the chain sequence ({len(query)} residues); first difference at "
                         f"position {pos}", source=a3m.source, field=f"line {a3m.query_line}")


def _main_msa(chain: ChainMsaInput, query: np.ndarray, a3m: A3m | None,
              paired: A3m | None = None) -> _MainMsa:
    """Deduplicated main MSA (query row first) and its profile / deletion_mean (Table 5).
    `paired` (Protenix's paired_msa_as_unpaired): its rows come first, then `a3m`'s."""
    if a3m is None:
        rows, dels = query[None], np.zeros((1, len(query)), dtype=np.int32)
    else:
        _check_rows(a3m, query, chain, "unpaired")
        all_rows, all_dels = a3m.rows, a3m.deletions
        if paired is not None:
            _check_rows(paired, query, chain, "paired")
            all_rows = np.concatenate([paired.rows, a3m.rows])
            all_dels = np.concatenate([paired.deletions, a3m.deletions])
        first = _first_occurrences(all_rows)
        rows, dels = all_rows[first], all_dels[first]
    n, width = rows.shape
    flat = (rows.astype(np.int64) + NUM_RESTYPES * np.arange(width)).ravel()
    counts = np.bincount(flat, minlength=NUM_RESTYPES * width).reshape(width, NUM_RESTYPES)
    return _MainMsa(rows=rows, deletions=dels,
                    profile=(counts / n).astype(np.float32),  # [L, 32]
                    deletion_mean=dels.mean(axis=0, dtype=np.float64).astype(np.float32))  # [L]


def _empty_main(width: int) -> _MainMsa:
    """No main rows, zero profile (OpenFold3's chain without an alignment)."""
    return _MainMsa(rows=np.zeros((0, width), np.uint8), deletions=np.zeros((0, width), np.int32),
                    profile=np.zeros((width, NUM_RESTYPES), np.float32),
                    deletion_mean=np.zeros(width, np.float32))


def _precomputed_pairs(chains: Sequence[ChainMsaInput], queries: list[np.ndarray], offsets: np.ndarray,
                       max_paired_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Paired rows taken as given (OpenFold3): row k of every chain's paired MSA forms paired
    row k, its query row included; chains without one, and rows past a shorter MSA, are gap."""
    a3ms = [chain.paired if _uses_paired_msa(chain, query) else None
            for chain, query in zip(chains, queries, strict=True)]
    depth = min(max((len(a.rows) for a in a3ms if a is not None), default=0), max_paired_rows)
    rows = np.full((depth, offsets[-1]), GAP, dtype=np.uint8)   # [n_pair, L_total]
    dels = np.zeros((depth, offsets[-1]), dtype=np.int32)
    for c, (chain, query, a3m) in enumerate(zip(chains, queries, a3ms, strict=True)):
        if a3m is None:
            continue
        _check_rows(a3m, query, chain, "paired")
        n = min(depth, len(a3m.rows))
        rows[:n, offsets[c]:offsets[c + 1]] = a3m.rows[:n]
        dels[:n, offsets[c]:offsets[c + 1]] = a3m.deletions[:n]
    return rows, dels


def _first_occurrences(rows: np.ndarray) -> np.ndarray:
    """Sorted indices of the first copy of each distinct row; row 0 is always kept."""
    if rows.shape[1] == 0:
        return np.zeros(1, dtype=np.int64)
    keys = np.ascontiguousarray(rows).view(np.dtype((np.void, rows.shape[1]))).ravel()
    _, first = np.unique(keys, return_index=True)
    return np.sort(first)


def _row_keys(rows: np.ndarray) -> list[bytes]:
    """Hashable key per row of a [N, L] uint8 array."""
    data, width = np.ascontiguousarray(rows).tobytes(), rows.shape[1]
    return [data[i * width:(i + 1) * width] for i in range(rows.shape[0])]


def _pair_by_species(species: Sequence[tuple[str | None, ...] | None], max_paired_rows: int,
                     max_rows_per_species: int) -> np.ndarray:
    """[n_pair, N_chain] row index into each chain's paired MSA, -1 for a gap row.

    `species[c]` is the per-row species of chain c's paired MSA (None: chain not paired).
    Implements AlphaFold-Multimer pairing as AF3 `msa_pairing.create_paired_features` does.
    """
    n_chain = len(species)
    groups_by_msa: dict[int, dict[str, list[int]]] = {}
    groups: list[dict[str, list[int]]] = []  # per chain: species -> its row indices, in order
    for keys in species:
        if keys is None:
            groups.append({})
            continue
        if id(keys) not in groups_by_msa:
            by_species: dict[str, list[int]] = {}
            for row, key in enumerate(keys):
                if key is not None and row > 0:
                    by_species.setdefault(key, []).append(row)
            groups_by_msa[id(keys)] = by_species
        groups.append(groups_by_msa[id(keys)])

    n_chains_with = Counter(key for chain_groups in groups for key in chain_groups)
    blocks: list[np.ndarray] = []
    n_rows = 0
    for n_with in sorted({n for n in n_chains_with.values() if n > 1}, reverse=True):
        names = sorted(key for key, n in n_chains_with.items() if n == n_with)
        depth = {key: min(max_rows_per_species, min(len(g[key]) for g in groups if key in g))
                 for key in names}
        block = np.full((sum(depth.values()), n_chain), -1, dtype=np.int64)  # [n_block, N_chain]
        start = 0
        for key in names:
            for c, chain_groups in enumerate(groups):
                if key in chain_groups:
                    block[start:start + depth[key], c] = chain_groups[key][:depth[key]]
            start += depth[key]
        rank = np.abs(np.prod(block.astype(np.float64), axis=1))  # hits high in every MSA first
        blocks.append(block[np.argsort(rank, kind="stable")])
        n_rows += len(block)
        if n_rows >= max_paired_rows:
            break
    if not blocks:
        return np.zeros((0, n_chain), dtype=np.int64)
    return np.concatenate(blocks)[:max_paired_rows]

