"""pyhmmer hits -> a3m text anchored on the query (what AF3 makes from jackhmmer's Stockholm).

The included hits are aligned to the final profile together with the query; columns where
the query has a residue become the a3m's match columns (uppercase, ``-`` for gaps) and every
other column is an insertion (lowercase letters kept, gaps dropped). One row per included
domain, named ``<name>/<from>-<to> <description>`` so `foldray.inputs.a3m.species_key`
still reads UniProt / UniRef species from it.
"""

from __future__ import annotations

import numpy as np
from pyhmmer import easel, plan7

_UPPER = np.arange(256, dtype=np.uint8)
_UPPER[ord("a"):ord("z") + 1] -= 32
_UPPER[ord(".")] = ord("-")
_LOWER = np.arange(256, dtype=np.uint8)
_LOWER[ord("A"):ord("Z") + 1] += 32


def _is_letter(raw: np.ndarray) -> np.ndarray:
    return ((raw >= ord("A")) & (raw <= ord("Z"))) | ((raw >= ord("a")) & (raw <= ord("z")))


def hits_to_a3m(hits: plan7.TopHits, query: easel.DigitalSequence, query_letters: str, *,
                max_sequences: int | None = None, query_header: str = "query") -> str:
    """a3m text: the query, then one row per included domain, best hit first."""
    lines = [f">{query_header}", query_letters.upper()]
    if not any(hit.included for hit in hits):
        return "\n".join(lines) + "\n"
    msa = hits.to_msa(query.alphabet, sequences=[query], traces=[plan7.Trace.from_sequence(query)],
                      all_consensus_cols=True, trim=False, digitize=False)
    rows = list(msa.alignment)  # [1 + N_domain] aligned strings, query first
    names = list(msa.names)
    descriptions = {hit.name: hit.description or "" for hit in hits}
    anchor = np.frombuffer(rows[0].encode("ascii"), dtype=np.uint8)
    is_match = _is_letter(anchor)  # [N_col] columns where the query has a residue
    limit = len(rows) - 1 if max_sequences is None else min(max_sequences, len(rows) - 1)
    for name, row in zip(names[1:limit + 1], rows[1:limit + 1], strict=True):
        raw = np.frombuffer(row.encode("ascii"), dtype=np.uint8)  # [N_col]
        letters = np.where(is_match, _UPPER[raw], _LOWER[raw])
        keep = is_match | _is_letter(raw)
        description = descriptions.get(name.rsplit("/", 1)[0], "")
        lines.append(f">{name} {description}".rstrip())
        lines.append(letters[keep].tobytes().decode("ascii"))
    return "\n".join(lines) + "\n"
