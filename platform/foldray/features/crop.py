"""Training crops over tokens (SI 2.7; AF-Multimer section 7.2, Algorithms 1 and 2).

AlphaFold 3 crops tokens, not residues, with AlphaFold-Multimer's procedures:

- contiguous (SI 2.7.1): AF-Multimer Algorithm 1, a contiguous run per chain, chains in
  random order, run lengths sampled so that the crop holds exactly ``crop_size`` tokens;
- spatial (SI 2.7.2): AF-Multimer Algorithm 2, the ``crop_size`` tokens whose centre atoms
  (SI 2.6) are nearest a random resolved reference token's centre atom;
- spatial interface (SI 2.7.3): the same, with the reference drawn among interface tokens
  (centre atom under 15 A from a resolved centre atom of another chain).

The reference is drawn from ``candidates`` when given: the tokens of the preferred chain or
interface that the weighted-PDB sampler picked (SI 2.5.1). Which strategy runs is sampled per
example with the dataset weights of SI Table 4 (``CROP_WEIGHTS``, ``sample_crop_strategy``).

Every crop returns the selected token indices, sorted, as int64; when ``N_token <= crop_size``
all tokens are returned and no randomness is drawn.

Shapes: asym_id, group_id [N_token] int; centre_pos [N_token, 3] float (token centre atoms);
centre_mask, candidates [N_token] bool (centre_mask: the centre atom is resolved).

``group_id`` (optional): tokens that share a group id are kept or dropped together. Pass one
id per ligand / per-atom-tokenized modified residue (and a unique id per other token) to
never cut a molecule at the crop boundary.
SI deviation: the SI crops plain tokens and may split a ligand or a modified residue. We follow
Protenix's training setting (``contiguous_crop_complete_lig``/``spatial_crop_complete_lig``,
on by default in its dataset's ``crop``) and keep such groups whole when ``group_id`` is given,
so a crop can hold a few tokens less than ``crop_size``. OpenFold3 splits them; Boltz grows its
crop by whole residues. Details at ``contiguous_crop`` and ``crop_around_reference``. (Protenix
also drops metal-ion chains from contiguous crops; we do not.)
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Literal, get_args

import numpy as np

CropStrategy = Literal["contiguous", "spatial", "spatial_interface"]
CROP_STRATEGIES: tuple[CropStrategy, ...] = get_args(CropStrategy)

INTERFACE_CUTOFF = 15.0  # SI 2.7.3, Angstrom between token centre atoms of different chains


def _weights(contiguous: float, spatial: float, spatial_interface: float) -> Mapping[str, float]:
    return MappingProxyType(
        {"contiguous": contiguous, "spatial": spatial, "spatial_interface": spatial_interface})


# SI Table 4, keyed by dataset. The transcription-factor distillation sets (SI 2.5.2) have no
# row in Table 4; pass explicit weights for them.
CROP_WEIGHTS: Mapping[str, Mapping[str, float]] = MappingProxyType({
    "weighted_pdb": _weights(0.20, 0.40, 0.40),
    "disordered_protein_pdb": _weights(0.20, 0.40, 0.40),
    "monomer_distillation": _weights(0.25, 0.75, 0.00),
    "short_protein_distillation": _weights(0.25, 0.75, 0.00),
    "rna_distillation": _weights(0.25, 0.75, 0.00),
})

# Rows per block of the interface test ([block, N_token] distances), growing x4 after a miss.
_FIRST_BLOCK, _MAX_BLOCK = 32, 512


def sample_crop_strategy(weights: Mapping[str, float], rng: np.random.Generator) -> CropStrategy:
    """Draw a strategy with probability proportional to ``weights`` (a row of ``CROP_WEIGHTS``).

    Missing strategies have weight 0.
    """
    unknown = set(weights) - set(CROP_STRATEGIES)
    if unknown:
        raise ValueError(f"unknown crop strategies {sorted(unknown)}; expected {CROP_STRATEGIES}")
    p = np.array([float(weights.get(s, 0.0)) for s in CROP_STRATEGIES])  # [3]
    if not np.all(np.isfinite(p)) or np.any(p < 0) or p.sum() <= 0:
        raise ValueError(f"crop weights must be >= 0 with a positive sum, got {dict(weights)}")
    return CROP_STRATEGIES[int(rng.choice(len(p), p=p / p.sum()))]


def crop_tokens(
    strategy: CropStrategy,
    *,
    asym_id: np.ndarray,
    centre_pos: np.ndarray,
    centre_mask: np.ndarray,
    crop_size: int,
    rng: np.random.Generator,
    candidates: np.ndarray | None = None,
    group_id: np.ndarray | None = None,
    interface_cutoff: float = INTERFACE_CUTOFF,
) -> np.ndarray:
    """Run one strategy of SI 2.7. ``candidates`` only biases the spatial strategies (SI 2.7.2)."""
    if strategy == "contiguous":
        return contiguous_crop(asym_id, crop_size, rng, group_id=group_id)
    if strategy == "spatial":
        return spatial_crop(centre_pos, centre_mask, crop_size, rng,
                            candidates=candidates, group_id=group_id)
    if strategy == "spatial_interface":
        return spatial_interface_crop(centre_pos, centre_mask, asym_id, crop_size, rng,
                                      candidates=candidates, group_id=group_id,
                                      interface_cutoff=interface_cutoff)
    raise ValueError(f"unknown crop strategy {strategy!r}; expected one of {CROP_STRATEGIES}")


# --- contiguous cropping (SI 2.7.1, AF-Multimer Algorithm 1) -----------------------------------


def contiguous_crop(
    asym_id: np.ndarray,
    crop_size: int,
    rng: np.random.Generator,
    *,
    group_id: np.ndarray | None = None,
) -> np.ndarray:
    """AF-Multimer Algorithm 1 over tokens: one contiguous run per chain, chains in random order.

    A chain's tokens are its indices in increasing order (they need not be adjacent overall).
    ``n_remaining`` counts the tokens of the chains after the current one, so the lower bound
    on each run makes the crop hold exactly ``crop_size`` tokens (as in OpenFold3's "fixed
    version" of the published pseudo-code).

    With ``group_id``, each group must be one run inside one chain. A sampled run whose end
    cuts a group is moved to that group's first or last-plus-one token; among the moves that
    keep the run within this chain's [min, max] size bounds one is drawn at random, else the
    run shrinks (inward at both ends). Later chains make up a shortfall through their lower
    bound, so only the last chains' shortfall remains: the crop may be below ``crop_size``.
    """
    asym_id = np.asarray(asym_id)
    n_token = _check_sizes(crop_size, asym_id=asym_id, group_id=group_id)
    if n_token <= crop_size:
        return np.arange(n_token, dtype=np.int64)
    order = np.argsort(asym_id, kind="stable")            # [N_token] tokens grouped by chain
    _, chain_start, chain_len = np.unique(asym_id[order], return_index=True, return_counts=True)
    run_first, run_end = (None, None) if group_id is None else _group_runs(
        np.asarray(group_id)[order], asym_id[order])

    pieces: list[np.ndarray] = []
    n_added, n_remaining = 0, n_token
    for k in rng.permutation(len(chain_len)):
        n_k, c0 = int(chain_len[k]), int(chain_start[k])
        n_remaining -= n_k
        size_max = min(crop_size - n_added, n_k)
        size_min = min(n_k, max(0, crop_size - (n_added + n_remaining)))
        size = int(rng.integers(size_min, size_max + 1))
        start = int(rng.integers(0, n_k - size + 1))
        s, e = c0 + start, c0 + start + size               # positions in `order`
        if run_first is not None and size > 0:
            s, e = _snap_to_groups(s, e, c0, c0 + n_k, run_first, run_end, size_min, size_max, rng)
        n_added += e - s
        pieces.append(order[s:e])
    return np.sort(np.concatenate(pieces)).astype(np.int64)


def _group_runs(group: np.ndarray, chain: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First and end (exclusive) position of each position's group run, in chain order."""
    n = len(group)
    new_run = np.ones(n, dtype=bool)                        # [N_token]
    new_run[1:] = (group[1:] != group[:-1]) | (chain[1:] != chain[:-1])
    run_id = np.cumsum(new_run) - 1                         # [N_token]
    starts = np.flatnonzero(new_run)                        # [N_run]
    if len(starts) != len(np.unique(group)):
        raise ValueError("group_id: every group must be one contiguous run of tokens in one chain")
    ends = np.append(starts[1:], n)                         # [N_run]
    return starts[run_id], ends[run_id]


def _snap_to_groups(s: int, e: int, lo: int, hi: int, run_first: np.ndarray, run_end: np.ndarray,
                    size_min: int, size_max: int, rng: np.random.Generator) -> tuple[int, int]:
    """Move the ends of run [s, e) inside chain [lo, hi) off group interiors (see above)."""
    starts = [s] if run_first[s] == s else [int(run_first[s]), int(run_end[s])]     # out, in
    cut = e < hi and run_first[e] != e
    ends = [int(run_end[e]), int(run_first[e])] if cut else [e]                        # out, in
    windows = sorted({(a, b) if b > a else (lo, lo) for a in starts for b in ends})
    fits = [w for w in windows if size_min <= w[1] - w[0] <= size_max]
    if fits:
        return fits[int(rng.integers(len(fits)))]
    s_in, e_in = starts[-1], ends[-1]                      # shrink: never exceed the budget
    return (s_in, e_in) if e_in > s_in else (lo, lo)


# --- spatial cropping (SI 2.7.2-2.7.3, AF-Multimer Algorithm 2) -------------------------------


def spatial_crop(
    centre_pos: np.ndarray,
    centre_mask: np.ndarray,
    crop_size: int,
    rng: np.random.Generator,
    *,
    candidates: np.ndarray | None = None,
    group_id: np.ndarray | None = None,
) -> np.ndarray:
    """SI 2.7.2: nearest tokens around a random resolved reference token (among ``candidates``)."""
    n_token = _check_sizes(crop_size, centre_pos=centre_pos, centre_mask=centre_mask,
                           candidates=candidates, group_id=group_id)
    if n_token <= crop_size:
        return np.arange(n_token, dtype=np.int64)
    reference = sample_reference_token(centre_mask, rng, candidates=candidates)
    return crop_around_reference(centre_pos, centre_mask, reference, crop_size, group_id=group_id)


def spatial_interface_crop(
    centre_pos: np.ndarray,
    centre_mask: np.ndarray,
    asym_id: np.ndarray,
    crop_size: int,
    rng: np.random.Generator,
    *,
    candidates: np.ndarray | None = None,
    group_id: np.ndarray | None = None,
    interface_cutoff: float = INTERFACE_CUTOFF,
) -> np.ndarray:
    """SI 2.7.3: nearest tokens around a random interface token (among ``candidates``).

    Without an interface token in the reference pool (one chain, chains farther apart than
    ``interface_cutoff``, or a preferred chain away from the others) this is ``spatial_crop``
    with the same pool, as Protenix does for a chain without interface tokens.
    """
    n_token = _check_sizes(crop_size, centre_pos=centre_pos, centre_mask=centre_mask,
                           asym_id=asym_id, candidates=candidates, group_id=group_id)
    if n_token <= crop_size:
        return np.arange(n_token, dtype=np.int64)
    reference = sample_interface_token(centre_pos, centre_mask, asym_id, rng,
                                       candidates=candidates, interface_cutoff=interface_cutoff)
    if reference is None:
        reference = sample_reference_token(centre_mask, rng, candidates=candidates)
    return crop_around_reference(centre_pos, centre_mask, reference, crop_size, group_id=group_id)


def sample_reference_token(
    centre_mask: np.ndarray,
    rng: np.random.Generator,
    *,
    candidates: np.ndarray | None = None,
) -> int:
    """A uniformly random token with a resolved centre atom, among ``candidates`` when given.

    If no candidate is resolved (a preferred chain with nothing resolved) the pool is every
    resolved token, as OpenFold3 does. Raises ``ValueError`` when no centre atom is resolved.
    """
    pool = _reference_pool(np.asarray(centre_mask, dtype=bool), candidates)
    return int(pool[rng.integers(len(pool))])


def sample_interface_token(
    centre_pos: np.ndarray,
    centre_mask: np.ndarray,
    asym_id: np.ndarray,
    rng: np.random.Generator,
    *,
    candidates: np.ndarray | None = None,
    interface_cutoff: float = INTERFACE_CUTOFF,
) -> int | None:
    """A uniformly random interface token of the reference pool, or None if it has none.

    Interface token (SI 2.7.3): resolved centre atom closer than ``interface_cutoff`` to the
    resolved centre atom of a token of another chain. The pool is that of
    ``sample_reference_token``. Instead of all N_token^2 distances, pool tokens are tested in a
    random order, a block at a time, and the first interface token is returned: a uniform draw
    among the interface tokens that usually costs one small [block, N_token] distance block.
    After a miss, tokens farther than the cutoff from every other chain's bounding box are
    dropped, so structures without an interface stay cheap too.
    """
    mask = np.asarray(centre_mask, dtype=bool)
    pool = _reference_pool(mask, candidates)                # [N_pool]
    chain = np.unique(np.asarray(asym_id), return_inverse=True)[1].reshape(-1)  # [N_token]
    cols = np.flatnonzero(mask)                             # [N_res] resolved tokens
    col_chain = chain[cols]                                 # [N_res]
    if col_chain.min() == col_chain.max():
        return None
    pos = np.asarray(centre_pos, dtype=np.float64)          # [N_token, 3]
    origin = pos[cols].mean(0)                              # centred: less cancellation below
    col_pos = pos[cols] - origin                            # [N_res, 3]
    col_sq = (col_pos**2).sum(-1)                           # [N_res]
    cutoff_sq = interface_cutoff**2

    pool = rng.permutation(pool)
    block, pruned = _FIRST_BLOCK, False
    while len(pool):
        rows = pool[:block]                                 # [B]
        r = pos[rows] - origin                              # [B, 3]
        d2 = (r**2).sum(-1)[:, None] + col_sq[None] - 2.0 * (r @ col_pos.T)             # [B, N_res]
        hit = ((d2 < cutoff_sq) & (chain[rows][:, None] != col_chain[None])).any(-1)  # [B]
        if hit.any():
            return int(rows[np.argmax(hit)])
        pool, block = pool[block:], min(4 * block, _MAX_BLOCK)
        if not pruned:                                      # rare: few or no interface tokens
            pool = pool[_near_other_chain(pos[pool] - origin, chain[pool], col_pos, col_chain,
                                          interface_cutoff)]
            pruned = True
    return None


def _near_other_chain(p: np.ndarray, p_chain: np.ndarray, col_pos: np.ndarray,
                      col_chain: np.ndarray, cutoff: float) -> np.ndarray:
    """[N_p] bool: within ``cutoff`` of the bounding box of another chain's resolved centres."""
    order = np.argsort(col_chain, kind="stable")
    ids, starts = np.unique(col_chain[order], return_index=True)                  # [C]
    lo = np.minimum.reduceat(col_pos[order], starts, axis=0)                      # [C, 3]
    hi = np.maximum.reduceat(col_pos[order], starts, axis=0)                      # [C, 3]
    gap = np.maximum(np.maximum(lo[None] - p[:, None], p[:, None] - hi[None]), 0.0)  # [N_p, C, 3]
    return (((gap**2).sum(-1) < cutoff**2) & (ids[None] != p_chain[:, None])).any(-1)


def crop_around_reference(
    centre_pos: np.ndarray,
    centre_mask: np.ndarray,
    reference: int,
    crop_size: int,
    *,
    group_id: np.ndarray | None = None,
) -> np.ndarray:
    """AF-Multimer Algorithm 2 lines 2-3: the ``crop_size`` tokens nearest the reference.

    Distance is between token centre atoms; unresolved tokens are infinitely far.
    SI deviation: AF-Multimer breaks ties by adding ``i * 1e-3`` A to token i's distance, which
    shifts distances by up to several A on large complexes (OpenFold3 drops it for that reason).
    We order by (distance, token index) exactly, with a stable sort: the lower index wins a tie
    and no distance is changed.

    With ``group_id``, a group joins the crop when its nearest token comes up, with all its
    tokens (unresolved ones too), if it fits in the room left; a group that does not fit is
    skipped and nearer-first filling goes on with the next groups. Protenix drops groups cut at
    the boundary without refilling; refilling keeps the crop at, or a few tokens under,
    ``crop_size``.
    """
    pos = np.asarray(centre_pos, dtype=np.float64)          # [N_token, 3]
    mask = np.asarray(centre_mask, dtype=bool)              # [N_token]
    n_token = len(pos)
    if n_token <= crop_size:
        return np.arange(n_token, dtype=np.int64)
    if not mask[reference]:
        raise ValueError(f"reference token {reference} has no resolved centre atom")
    dist = np.where(mask, np.sqrt(((pos - pos[reference]) ** 2).sum(-1)), np.inf)  # [N_token]
    order = np.argsort(dist, kind="stable")                 # [N_token] nearest first
    if group_id is None:
        return np.sort(order[:crop_size]).astype(np.int64)

    _, group = np.unique(np.asarray(group_id), return_inverse=True)   # [N_token] in 0..G-1
    group = group.reshape(-1)
    g_sorted = group[order]                                 # [N_token]
    g_order = g_sorted[np.sort(np.unique(g_sorted, return_index=True)[1])]  # [G] nearest first
    g_size = np.bincount(group)[g_order]                    # [G]
    n_full = int(np.searchsorted(np.cumsum(g_size), crop_size, side="right"))  # whole prefix fits
    keep = list(g_order[:n_full])
    room = crop_size - int(g_size[:n_full].sum())
    smallest_after = np.minimum.accumulate(g_size[::-1])[::-1]  # [G] min size from here on
    for i in range(n_full + 1, len(g_order)):
        if room < smallest_after[i]:
            break
        if g_size[i] <= room:
            keep.append(g_order[i])
            room -= int(g_size[i])
    return np.flatnonzero(np.isin(group, keep)).astype(np.int64)


# --- helpers -----------------------------------------------------------------------------------


def _reference_pool(mask: np.ndarray, candidates: np.ndarray | None) -> np.ndarray:
    """Resolved tokens among ``candidates``; every resolved token if that is empty."""
    if not mask.any():
        raise ValueError("spatial crop needs a resolved token centre atom; none is resolved")
    if candidates is not None:
        pool = np.flatnonzero(mask & np.asarray(candidates, dtype=bool))
        if len(pool):
            return pool
    return np.flatnonzero(mask)


def _check_sizes(crop_size: int, **arrays: np.ndarray | None) -> int:
    """Validate ``crop_size`` and that all token arrays share N_token; return N_token."""
    if isinstance(crop_size, bool) or not isinstance(crop_size, (int, np.integer)) or crop_size < 1:
        raise ValueError(f"crop_size must be a positive int, got {crop_size!r}")
    lengths = {name: len(a) for name, a in arrays.items() if a is not None}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"token arrays differ in length (N_token): {lengths}")
    pos = arrays.get("centre_pos")
    if pos is not None and np.shape(pos)[1:] != (3,):
        raise ValueError(f"centre_pos must be [N_token, 3], got {np.shape(pos)}")
    return next(iter(lengths.values()))
