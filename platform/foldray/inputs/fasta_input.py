"""FASTA -> an AlphaFold 3 job object, then validated by `af3_json.parse_job`.

One file is one job (named after the file). Two header styles, per record:
- plain (`>anything`): a protein chain; ColabFold's `:` inside the sequence splits it into
  several chains of one complex (`>dimer\\nMKV...:MKV...`);
- Boltz's (`>A|protein|msa.a3m`, `>B|dna`, `>C|rna`, `>D|smiles`, `>E|ccd`): chain id,
  entity type, and for proteins an optional a3m path (`empty` = single-sequence mode),
  the record's text being the sequence, SMILES or CCD code.
Chains of plain records get ids A, B, ... in order, skipping ids Boltz headers took.
Identical polymer chains (same type, sequence and MSA) become one entity with several ids,
as AF3 and Boltz group them (same entity id in the features).
"""

from __future__ import annotations

from typing import Any

from foldray.errors import InputError
from foldray.inputs.af3_json import DIALECT, show
from foldray.inputs.af_server_json import chain_id
from foldray.inputs.job import sanitize_name

FASTA_SUFFIXES = (".fasta", ".fa", ".faa", ".fas", ".fna")
_BOLTZ_TYPES = ("protein", "dna", "rna", "smiles", "ccd")
MAX_RECORDS = 1000


def fasta_to_af3(text: str, *, source: str, name: str | None = None) -> dict[str, Any]:
    """The AF3 JSON object of one FASTA file."""
    job_name = name or sanitize_name(_stem(source)) or "fasta_job"

    def error(field: str, message: str) -> InputError:
        return InputError(message, source=source, job=job_name, field=field)

    records = _records(text, error)
    taken = {header.split("|")[0].strip() for header, _, _ in records if _is_boltz(header)}
    next_id = iter(i for i in (chain_id(n) for n in range(1, 100_000)) if i not in taken)
    polymers: dict[tuple, list[str]] = {}          # (kind, sequence, msa) -> chain ids, in order
    ligands: list[dict[str, Any]] = []
    for header, sequence, line in records:
        field = f"line {line}"
        if _is_boltz(header):
            parts = [p.strip() for p in header.split("|")]
            chain, kind = parts[0], parts[1].lower()
            msa = parts[2] if len(parts) > 2 else None
            if len(parts) > 3 or (msa is not None and kind != "protein"):
                raise error(field, f"header {show(header)}: expected >CHAIN|TYPE or >CHAIN|protein|MSA")
            if not chain:
                raise error(field, f"header {show(header)}: empty chain id")
            if kind in ("smiles", "ccd"):
                key = "smiles" if kind == "smiles" else "ccdCodes"
                ligands.append({"id": chain, key: sequence if kind == "smiles" else [sequence]})
            else:
                polymers.setdefault((kind, sequence.upper(), msa), []).append(chain)
            continue
        for part in sequence.split(":"):
            if not part:
                raise error(field, "empty chain between ':' separators")
            polymers.setdefault(("protein", part.upper(), None), []).append(next(next_id))
    if not polymers and not ligands:
        raise error("", "no sequences")
    sequences: list[dict[str, Any]] = []
    for (kind, sequence, msa), ids in polymers.items():
        body: dict[str, Any] = {"id": ids if len(ids) > 1 else ids[0], "sequence": sequence}
        if msa == "empty":
            body["unpairedMsa"], body["pairedMsa"] = "", ""
        elif msa:
            body["unpairedMsaPath"], body["pairedMsa"] = msa, ""
        sequences.append({kind: body})
    sequences += [{"ligand": ligand} for ligand in ligands]
    return {"dialect": DIALECT, "version": 3, "name": job_name, "modelSeeds": [1],
            "sequences": sequences}


def _records(text: str, error) -> list[tuple[str, str, int]]:
    """(header, sequence without whitespace, header line number) per record."""
    records: list[tuple[str, str, int]] = []
    header, chunks, start = None, [], 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith(";"):
            continue
        if line.startswith(">"):
            if header is not None:
                records.append((header, "".join(chunks), start))
            header, chunks, start = line[1:].strip(), [], number
            if len(records) >= MAX_RECORDS:
                raise error(f"line {number}", f"more than {MAX_RECORDS} records in one job")
            continue
        if header is None:
            raise error(f"line {number}", "sequence text before the first '>' header")
        chunks.append("".join(line.split()))
    if header is not None:
        records.append((header, "".join(chunks), start))
    for head, sequence, line in records:
        if not sequence:
            raise error(f"line {line}", f"record {show(head)} has no sequence")
    return records


def _is_boltz(header: str) -> bool:
    parts = header.split("|")
    return len(parts) >= 2 and parts[1].strip().lower() in _BOLTZ_TYPES


def _stem(source: str) -> str:
    base = source.rstrip("/").rsplit("/", 1)[-1]
    for suffix in FASTA_SUFFIXES:
        if base.lower().endswith(suffix):
            return base[: -len(suffix)]
    return base
