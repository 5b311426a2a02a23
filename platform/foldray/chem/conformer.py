"""Reference conformers (SI 2.8, Table 5 ref_pos / ref_mask).

As AlphaFold 3: build an RDKit molecule from the CCD record with explicit hydrogens, formal
charges, bond orders and the CCD stereochemistry (read from the ideal coordinates, as AF3's
rdkit_utils.mol_from_ccd_cif does), embed it with ETKDGv3 and no force-field optimisation,
then keep the heavy atoms. If RDKit rejects the molecule or embedding fails, fall back to
the CCD ideal coordinates, then the CCD model coordinates, then zeros with ref_mask False.

Differences from AF3, each for a reason: the seed is fixed (CONFORMER_SEED; AF3 draws one
per residue from the job's RNG), so a conformer is identical across runs and cached once
per process; attempts are capped (MAX_EMBED_ITERATIONS) and a failed default start is
retried from random coordinates (as OpenFold3), which rescues large flexible ligands;
disconnected fragments are laid side by side instead of on top of each other; atoms with
no coordinate at all get ref_mask False (AF3 keeps mask 1 with zero coordinates).

Bounded time: RDKit's own `timeout` is only checked between embedding stages, and one
stage of a large molecule can run for a minute ("C" * 200 measured 23-61 s with
timeout=2). So molecules over IN_PROCESS_MAX_ATOMS atoms (hydrogens included) embed in a
child process that is killed after EMBED_TIME_LIMIT_S (env FOLDRAY_EMBED_TIME_LIMIT_S),
or sooner when a `deadline.featurization_deadline` ends first; a killed embedding falls
back like a failed one, or raises when the job's deadline ran out.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np
from rdkit import Chem, rdBase
from rdkit.Chem import rdDistGeom

from foldray.chem import deadline
from foldray.chem.component import (
    BOND_AROMATIC,
    BOND_DOUBLE,
    BOND_QUADRUPLE,
    BOND_SINGLE,
    BOND_TRIPLE,
    CcdEntry,
    RefPosSource,
)

log = logging.getLogger(__name__)

CONFORMER_SEED = 0
# Embedding caps, per round (default start, then random start; see `embed`). Most
# components embed on the first attempt; a few never do (e.g. CLA's Mg, B1Z's Co: metal
# centres whose CCD stereo ETKDG cannot satisfy), and RDKit's default budget (10 attempts
# per atom) costs those up to a minute before the SI 2.8 fallback. On 55 hard CCD
# components, 20 attempts per round embed as many as 100 do, and bound a hopeless case to
# ~2-4 s. The timeout is a backstop; it is the only machine-speed-dependent outcome.
MAX_EMBED_ITERATIONS = 20
EMBED_TIMEOUT_S = 2
# Hard limit per molecule, enforced by killing the child process that embeds it.
EMBED_TIME_LIMIT_S = 10.0
EMBED_TIME_LIMIT_ENV = "FOLDRAY_EMBED_TIME_LIMIT_S"
# Up to this many atoms (hydrogens included) RDKit's timeout holds to about a second, so
# they embed in-process; every standard residue and most drug-like ligands (~60) are below.
IN_PROCESS_MAX_ATOMS = 150

_RD_BONDS: dict[int, Chem.BondType] = {
    BOND_SINGLE: Chem.BondType.SINGLE, BOND_DOUBLE: Chem.BondType.DOUBLE,
    BOND_TRIPLE: Chem.BondType.TRIPLE, BOND_QUADRUPLE: Chem.BondType.QUADRUPLE,
    BOND_AROMATIC: Chem.BondType.AROMATIC,
}


@functools.cache
def _element_numbers() -> dict[str, int]:
    table = Chem.GetPeriodicTable()
    numbers = {table.GetElementSymbol(z).upper(): z for z in range(1, 119)}
    numbers.update({"D": 1, "T": 1, "X": 0})  # deuterium, tritium; X = unknown atom (CCD)
    return numbers


def atomic_number(symbol: str) -> int:
    """Atomic number of a CCD type symbol (any case); 0 for the CCD's unknown 'X'."""
    try:
        return _element_numbers()[symbol.strip().upper()]
    except KeyError:
        raise ValueError(f"unknown element symbol {symbol!r}") from None


@dataclass(frozen=True, kw_only=True, eq=False)
class Conformer:
    """Heavy-atom reference positions of one component and where they came from."""

    pos: np.ndarray        # [n_heavy, 3] float32, Å; 0 where mask is False
    mask: np.ndarray       # [n_heavy] bool
    source: RefPosSource


def mol_from_entry(entry: CcdEntry) -> Chem.Mol | None:
    """RDKit molecule of a CCD record (all hydrogens explicit); None if RDKit rejects it."""
    mol = Chem.RWMol()
    for symbol, charge in zip(entry.type_symbols, entry.charges, strict=True):
        atom = Chem.Atom(atomic_number(symbol))
        atom.SetFormalCharge(int(charge))
        atom.SetNoImplicit(True)  # the CCD lists every hydrogen
        mol.AddAtom(atom)
    for (i, j), order in zip(entry.bonds.tolist(), entry.bond_orders.tolist(), strict=True):
        mol.AddBond(i, j, _RD_BONDS.get(order, Chem.BondType.SINGLE))
        if order == BOND_AROMATIC:
            for k in (i, j):
                mol.GetAtomWithIdx(k).SetIsAromatic(True)
            mol.GetBondBetweenAtoms(i, j).SetIsAromatic(True)
    mol = mol.GetMol()
    with rdBase.CaptureErrorLog() as capture:
        try:
            Chem.SanitizeMol(mol)
        except (ValueError, RuntimeError) as err:
            log.info("RDKit rejects CCD component %s (%s %s); using CCD coordinates",
                     entry.name, err, capture.messages.strip())
            return None
    _assign_stereo_from_ccd(mol, entry)
    return mol


def _assign_stereo_from_ccd(mol: Chem.Mol, entry: CcdEntry) -> None:
    """Chirality and double-bond geometry from complete CCD coordinates (ideal, else model).

    Without this ETKDG would pick stereocentres at random (D-amino acids, wrong sugars).
    Components without complete coordinates are embedded with unspecified stereo.
    """
    for pos in (entry.ideal_pos, entry.model_pos):
        if pos.shape[0] and not np.isnan(pos).any():
            conf = Chem.Conformer(mol.GetNumAtoms())
            conf.SetPositions(pos.astype(np.float64))
            conf.Set3D(True)
            conf_id = mol.AddConformer(conf, assignId=True)
            Chem.AssignStereochemistryFrom3D(mol, confId=conf_id)
            mol.RemoveAllConformers()
            return


def embed_time_limit() -> float:
    """Seconds one molecule may embed: FOLDRAY_EMBED_TIME_LIMIT_S if set, else 10."""
    try:
        value = float(os.environ.get(EMBED_TIME_LIMIT_ENV, ""))
    except ValueError:
        return EMBED_TIME_LIMIT_S
    return value if value > 0 else EMBED_TIME_LIMIT_S


def embed(mol: Chem.Mol, *, seed: int = CONFORMER_SEED) -> np.ndarray | None:
    """ETKDGv3 positions [n_atoms, 3] (float64) of all atoms of `mol`, or None on failure
    or when it ran past `embed_time_limit()`. Raises the deadline's InputError when a
    `featurization_deadline` has passed (before or during the embedding).

    If the default eigenvector start fails (common for large flexible molecules: every
    attempt fails at the initial coordinates), retry from random coordinates, as OpenFold3
    does; AF3 stops after the first try.
    """
    deadline.check_deadline()
    if mol.GetNumAtoms() <= IN_PROCESS_MAX_ATOMS:
        pos = _embed_rounds(mol, seed)
        deadline.check_deadline()
        return pos
    limit = embed_time_limit()
    left = deadline.remaining()
    job_bound = left is not None and left < limit
    pos, finished = _embed_in_child(mol, seed, left if job_bound else limit)
    if not finished:
        job_deadline = deadline.current()
        if job_bound and job_deadline is not None:
            raise job_deadline.error()
        log.info("embedding %s (%d atoms) stopped after %g s; using the fallback",
                 Chem.MolToSmiles(mol), mol.GetNumAtoms(), limit)
    return pos


_CHILD = "from foldray.chem.conformer import _embed_child; _embed_child()"


def _embed_in_child(mol: Chem.Mol, seed: int, seconds: float) -> tuple[np.ndarray | None, bool]:
    """`_embed_rounds` in a fresh Python process killed after `seconds`: (positions or
    None, whether it finished). A thread cannot be stopped inside RDKit; a process can."""
    start = time.monotonic()
    payload = int(seed).to_bytes(8, "little", signed=True) + mol.ToBinary()
    proc = subprocess.Popen([sys.executable, "-c", _CHILD], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        out, _ = proc.communicate(payload, timeout=max(seconds, 0.01))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return None, False
    finally:
        if proc.poll() is None:   # e.g. KeyboardInterrupt while waiting
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        log.info("embedding child exited with %s after %.1f s", proc.returncode,
                 time.monotonic() - start)
        return None, True
    return (np.load(io.BytesIO(out)) if out else None), True


def _embed_child() -> None:
    """Child side of `_embed_in_child`: seed and molecule on stdin, .npy (or nothing) out."""
    data = sys.stdin.buffer.read()
    pos = _embed_rounds(Chem.Mol(data[8:]), int.from_bytes(data[:8], "little", signed=True))
    if pos is not None:
        buffer = io.BytesIO()
        np.save(buffer, pos)
        sys.stdout.buffer.write(buffer.getvalue())
    sys.stdout.buffer.flush()


def _embed_rounds(mol: Chem.Mol, seed: int) -> np.ndarray | None:
    for random_start in (False, True):
        params = rdDistGeom.ETKDGv3()
        params.randomSeed = seed
        params.maxIterations = MAX_EMBED_ITERATIONS
        params.timeout = EMBED_TIMEOUT_S
        params.useRandomCoords = random_start
        work = Chem.Mol(mol)
        with rdBase.BlockLogs():
            try:
                conf_id = rdDistGeom.EmbedMolecule(work, params)
            except (ValueError, RuntimeError) as err:  # e.g. inconsistent bounds matrix
                log.info("ETKDG raised for %s: %s", Chem.MolToSmiles(mol), err)
                return None
        if conf_id >= 0:
            return _separate_fragments(mol, work.GetConformer(conf_id).GetPositions())
    return None


FRAGMENT_GAP = 3.0  # Å between the bounding spheres of disconnected fragments


def _separate_fragments(mol: Chem.Mol, pos: np.ndarray) -> np.ndarray:
    """Lay disconnected fragments (salts, "CCN.Cl") side by side along x.

    RDKit embeds fragments separately, each about the origin, so they overlap (a Na+/Cl-
    pair lands on one point); their relative placement carries no information, but
    coinciding atoms make a degenerate reference conformer.
    """
    fragments = Chem.GetMolFrags(mol)
    if len(fragments) < 2:
        return pos
    out = pos.copy()
    edge = 0.0
    for k, atoms in enumerate(fragments):
        atoms = list(atoms)
        centred = pos[atoms] - pos[atoms].mean(axis=0)
        radius = float(np.linalg.norm(centred, axis=1).max())
        shift = 0.0 if k == 0 else edge + FRAGMENT_GAP + radius
        out[atoms] = centred + np.array([shift, 0.0, 0.0])
        edge = shift + radius
    return out


def fallback_positions(entry: CcdEntry) -> Conformer:
    """SI 2.8 fallback: CCD ideal coordinates, else model coordinates, else zeros.

    A source with every heavy atom wins; otherwise the one covering more heavy atoms (ideal
    on ties), with the missing atoms at 0 and ref_mask False.
    """
    heavy = entry.heavy
    candidates: list[tuple[RefPosSource, np.ndarray]] = [("ideal", entry.ideal_pos[heavy])]
    if entry.model_pos_allowed:
        candidates.append(("model", entry.model_pos[heavy]))
    present = [~np.isnan(pos).any(axis=1) for _, pos in candidates]
    best = max(range(len(candidates)), key=lambda k: (present[k].all(), present[k].sum(), -k))
    source, pos = candidates[best]
    mask = present[best]
    if not mask.any():
        return Conformer(pos=np.zeros((int(heavy.sum()), 3), np.float32),
                         mask=np.zeros(int(heavy.sum()), bool), source="zeros")
    return Conformer(pos=np.where(mask[:, None], pos, 0.0).astype(np.float32), mask=mask,
                     source=source)


@functools.lru_cache(maxsize=8192)
def ccd_conformer(entry: CcdEntry, *, seed: int = CONFORMER_SEED) -> Conformer:
    """Reference conformer of a CCD record's heavy atoms; cached per record and seed."""
    mol = mol_from_entry(entry)
    pos = embed(mol, seed=seed) if mol is not None else None
    if pos is None:
        if mol is not None:
            log.info("ETKDG found no conformer for %s; using CCD coordinates", entry.name)
        return fallback_positions(entry)
    heavy = entry.heavy
    return Conformer(pos=pos[heavy].astype(np.float32), mask=np.ones(int(heavy.sum()), bool),
                     source="etkdg")


def clear_cache() -> None:
    """Forget cached conformers (tests of determinism)."""
    ccd_conformer.cache_clear()
