"""Template search (SI 2.4): a profile HMM of the chain's MSA against PDB sequences, hits
filtered as AlphaFold 3 filters them, their structures read from an mmCIF mirror.

The path of one protein chain:
1. `build_profile`: hmmbuild (pyhmmer) from the chain's MSA (a3m; lowercase insertions
   dropped, at most `max_msa_sequences` rows) with the query's residues as the match
   columns (`--hand` with an RF line), so HMM node k is query residue k;
2. `search_database`: hmmsearch of that profile over a pdb_seqres-style FASTA
   (`>1abc_A mol:protein length:154  NAME`; only `mol:protein` entries), with AF3's
   settings (--F1/--F2/--F3 0.1, -E/--incE/--domE/--incdomE 100); each hit's best domain
   gives the query -> hit residue mapping;
3. `filter_hits`: AF3's template filter (its TemplateFilterConfig defaults): released on or
   before the cutoff date (from the mirror's mmCIF), not the query itself (hit sequence a
   substring of the query covering > 95% of it), aligned part >= 10% of the query and >= 10
   residues, no repeated hit sequence, at most 4 hits, in E-value order;
4. `template_input`: the hit chain cut out of `<mirror>/<pdb_id>.cif[.gz]` (local folder
   or any fsspec URL) as a one-chain mmCIF, with `queryIndices`/`templateIndices` exactly
   as a user-given AF3 template carries them (template index = label_seq_id - 1), so the
   existing template featurization reads it unchanged.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import gemmi
import pyhmmer
from pyhmmer import easel, plan7

from foldray.inputs.job import TemplateInput
from foldray.io import storage

log = logging.getLogger(__name__)

HMMSEARCH_OPTIONS = dict(F1=0.1, F2=0.1, F3=0.1, E=100.0, incE=100.0, domE=100.0, incdomE=100.0)


@dataclass(frozen=True, kw_only=True)
class TemplateSearchSettings:
    """Where to search and AF3's filter values (SI 2.4; AF3 TemplateFilterConfig)."""

    database: str                              # pdb_seqres-style FASTA, local or URL
    mirror: str                                # folder/prefix of <pdb_id>.cif[.gz]
    max_template_date: dt.date | None = None   # None: no cutoff
    max_hits: int = 4
    max_subsequence_ratio: float = 0.95
    min_align_ratio: float = 0.1
    min_hit_length: int = 10
    max_msa_sequences: int = 300               # rows of the MSA the profile is built from


@dataclass(frozen=True)
class TemplateHit:
    """One database chain aligned to the query (indices 0-based, paired one to one)."""

    name: str                  # "1abc_A"
    hit_sequence: str          # the full seqres sequence of the hit chain
    query_indices: tuple[int, ...]
    hit_indices: tuple[int, ...]
    evalue: float

    @property
    def pdb_id(self) -> str:
        return self.name.split("_", 1)[0].lower()

    @property
    def chain_id(self) -> str:
        return self.name.split("_", 1)[1]

    @property
    def aligned_hit(self) -> str:
        """The hit residues that align to the query, in order."""
        return "".join(self.hit_sequence[i] for i in self.hit_indices)


def check_sources(settings: TemplateSearchSettings) -> None:
    """Fail at start, naming the missing one, instead of per chain later."""
    if not storage.exists(settings.database):
        raise FileNotFoundError(f"template search: sequence database {settings.database!r} does not exist")
    fs, path = storage.filesystem(settings.mirror)
    if not fs.isdir(path):
        raise FileNotFoundError(f"template search: structure mirror {settings.mirror!r} is not a folder")


def msa_rows(query: str, msa_a3m: str | None, limit: int) -> list[str]:
    """The query and the MSA's rows on the query's columns (a3m insertions removed)."""
    rows = [query]
    if msa_a3m:
        for line in msa_a3m.splitlines():
            if not line or line.startswith(">"):
                continue
            row = "".join(c for c in line.strip() if not c.islower() and c != ".")
            if len(row) == len(query) and row != query:
                rows.append(row)
            if len(rows) >= limit:
                break
    return rows


def build_profile(query: str, msa_a3m: str | None, max_sequences: int = 300) -> plan7.HMM:
    """hmmbuild --hand: one HMM node per query residue."""
    alphabet = easel.Alphabet.amino()
    rows = msa_rows(query, msa_a3m, max_sequences)
    msa = easel.TextMSA(name=b"query", sequences=[
        easel.TextSequence(name=f"row{i}".encode(), sequence=row)
        for i, row in enumerate(rows)])
    msa.reference = "x" * len(query)
    builder = plan7.Builder(alphabet, architecture="hand")
    hmm, _, _ = builder.build_msa(msa.digitize(alphabet), plan7.Background(alphabet))
    return hmm


def read_seqres(text: str) -> dict[str, str]:
    """name -> sequence for the protein entries of a pdb_seqres-style FASTA."""
    entries: dict[str, str] = {}
    name, protein, chunks = None, False, []
    for line in text.splitlines() + [">"]:
        if line.startswith(">"):
            if name and protein and chunks:
                entries[name] = "".join(chunks).upper()
            header = line[1:].split()
            name = header[0] if header else None
            protein = not any(f.startswith("mol:") for f in header[1:]) or "mol:protein" in header[1:]
            chunks = []
        elif line.strip():
            chunks.append(line.strip())
    return entries


def search_database(hmm: plan7.HMM, seqres: dict[str, str]) -> list[TemplateHit]:
    """hmmsearch over the database; one TemplateHit per hit chain (its best domain)."""
    alphabet = hmm.alphabet
    targets = [easel.TextSequence(name=name.encode(), sequence=seq).digitize(alphabet)
               for name, seq in seqres.items() if seq]
    hits: list[TemplateHit] = []
    for top in pyhmmer.hmmer.hmmsearch([hmm], targets, cpus=1, **HMMSEARCH_OPTIONS):
        for hit in top:
            if not hit.domains:
                continue
            domain = max(hit.domains, key=lambda d: d.score)
            query_idx, hit_idx = _mapping(domain.alignment)
            name = hit.name.decode() if isinstance(hit.name, bytes) else hit.name
            hits.append(TemplateHit(name=name, hit_sequence=seqres[name], query_indices=query_idx,
                                    hit_indices=hit_idx, evalue=float(hit.evalue)))
    hits.sort(key=lambda h: h.evalue)
    return hits


def _mapping(alignment) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Query residue (HMM node - 1) -> hit residue for every aligned match column."""
    node, position = alignment.hmm_from - 1, alignment.target_from - 1
    query_idx, hit_idx = [], []
    for model, target in zip(alignment.hmm_sequence, alignment.target_sequence, strict=True):
        if model == ".":                 # target residue in an insert state
            position += 1
        elif target == "-":              # HMM node deleted in the target
            node += 1
        else:
            query_idx.append(node)
            hit_idx.append(position)
            node += 1
            position += 1
    return tuple(query_idx), tuple(hit_idx)


def filter_hits(hits: Iterable[TemplateHit], query: str, settings: TemplateSearchSettings,
                release_date_of: Callable[[str], dt.date | None] | None = None,
                available: Callable[[TemplateHit], bool] | None = None) -> list[TemplateHit]:
    """AF3's template filter over hits in E-value order. `available` (the structure can be
    read) and dates are checked last, only for hits that passed the sequence rules (reading
    a structure is the costly part); an unknown date (None) fails a set cutoff, since it
    cannot be shown to be before it."""
    kept: list[TemplateHit] = []
    seen: set[str] = set()
    for hit in hits:
        aligned = len(hit.hit_indices)
        if aligned / len(query) > settings.max_subsequence_ratio and hit.aligned_hit in query:
            continue                     # the query itself (or a fragment of it)
        if aligned / len(query) < settings.min_align_ratio or aligned < settings.min_hit_length:
            continue
        if hit.aligned_hit in seen:
            continue
        if available is not None and not available(hit):
            continue
        if settings.max_template_date is not None:
            released = release_date_of(hit.pdb_id) if release_date_of else None
            if released is None or released > settings.max_template_date:
                continue
        seen.add(hit.aligned_hit)
        kept.append(hit)
        if len(kept) >= settings.max_hits:
            break
    return kept


def mirror_path(mirror: str, pdb_id: str) -> str | None:
    """`<mirror>/<pdb_id>.cif` or `.cif.gz` (lower or upper case id), whichever exists."""
    for name in (f"{pdb_id.lower()}.cif", f"{pdb_id.lower()}.cif.gz", f"{pdb_id.upper()}.cif",
                 f"{pdb_id.upper()}.cif.gz"):
        path = storage.join(mirror, name)
        if storage.exists(path):
            return path
    return None


def read_structure(path: str) -> gemmi.cif.Document:
    from foldray.inputs.load import gunzip

    data = storage.read_bytes(path)
    if path.endswith(".gz"):
        data = gunzip(data, source=path)
    return gemmi.cif.read_string(data.decode("utf-8", errors="replace"))


def release_date(doc: gemmi.cif.Document) -> dt.date | None:
    """The entry's first release (earliest _pdbx_audit_revision_history date), else the
    deposition date; None when the file has neither."""
    block = doc.sole_block()
    dates = list(block.find_loop("_pdbx_audit_revision_history.revision_date"))
    if not dates:
        value = block.find_value("_pdbx_database_status.recvd_initial_deposition_date")
        dates = [value] if value else []
    parsed = []
    for text in dates:
        try:
            parsed.append(dt.date.fromisoformat(gemmi.cif.as_string(text)[:10]))
        except ValueError:
            continue
    return min(parsed) if parsed else None


def template_input(hit: TemplateHit, doc: gemmi.cif.Document) -> TemplateInput | None:
    """The hit chain as a one-chain mmCIF with AF3-style index lists (None: chain absent)."""
    structure = gemmi.make_structure_from_block(doc.sole_block())
    structure.setup_entities()
    if not len(structure):
        return None
    model = structure[0]
    keep = next((chain.name for chain in model if chain.name == hit.chain_id), None)
    if keep is None:
        return None
    for name in [chain.name for chain in model if chain.name != keep]:
        model.remove_chain(name)
    for extra in range(len(structure) - 1, 0, -1):
        del structure[extra]
    structure.remove_ligands_and_waters()
    mmcif = structure.make_mmcif_document().as_string()
    return TemplateInput(mmcif=mmcif, query_indices=hit.query_indices, template_indices=hit.hit_indices)


def search_templates(query: str, msa_a3m: str | None, settings: TemplateSearchSettings,
                     seqres: dict[str, str] | None = None) -> tuple[TemplateInput, ...]:
    """Up to `max_hits` templates for one protein chain, best E-value first."""
    seqres = seqres if seqres is not None else read_seqres(storage.read_text(settings.database))
    hits = search_database(build_profile(query, msa_a3m, settings.max_msa_sequences), seqres)
    documents: dict[str, gemmi.cif.Document | None] = {}

    def document(pdb_id: str) -> gemmi.cif.Document | None:
        if pdb_id not in documents:
            path = mirror_path(settings.mirror, pdb_id)
            documents[pdb_id] = read_structure(path) if path else None
            if path is None:
                log.info("template %s: not in the mirror %s", pdb_id, settings.mirror)
        return documents[pdb_id]

    def date_of(pdb_id: str) -> dt.date | None:
        doc = document(pdb_id)
        return release_date(doc) if doc is not None else None

    templates = []
    for hit in filter_hits(hits, query, settings, date_of,
                           available=lambda hit: document(hit.pdb_id) is not None):
        made = template_input(hit, documents[hit.pdb_id])
        if made is not None:
            templates.append(made)
    return tuple(templates)


def seqres_fasta(entries: Sequence[tuple[str, str]]) -> str:
    """A pdb_seqres-style FASTA from (name, sequence) pairs (for building test databases)."""
    return "".join(f">{name} mol:protein length:{len(seq)}  {name}\n{seq}\n" for name, seq in entries)
