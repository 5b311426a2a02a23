"""A3M multiple sequence alignments (SI 2.2 genetic search output, SI 2.3 / Table 5 MSA inputs).

An a3m file is FASTA-like: ``>header`` lines, each followed by one aligned sequence (possibly
wrapped over several lines). The first record is the query. Uppercase letters and ``-`` are
match columns, one per query residue; lowercase letters are insertions relative to the query
(they are dropped and counted as deletions); ``.`` is padding for insert columns and is ignored.

`parse_a3m` turns the text into restype classes (`foldray.residues`) and the AF2/AF3 deletion
matrix: for every match column, the number of lowercase letters immediately to its left, back
to the previous match column (insertions after the last match column are not counted).

`species_key` extracts the key used for cross-chain pairing (SI 2.3, AlphaFold-Multimer):

1. UniProtKB entry names, ``tr|A0A2W3M096|A0A2W3M096_STAAU ...`` or ``sp|P69905|HBA_HUMAN``:
   the mnemonic species code after the last ``_`` (``STAAU``, ``HUMAN``). This is exactly what
   AlphaFold 3 uses (`msa_features.extract_species_ids`); it is tried first, so UniProt MSAs
   pair as in AF3.
2. Headers AF3 does not recognise (it pairs nothing for them): the NCBI taxonomy id, from
   Protenix/ColabFold UniRef headers ``UniRef100_<accession>_<taxid>/`` or from ``OX=<taxid>``
   / ``TaxID=<taxid>`` fields. Returned as the decimal digits (``"9606"``).

Mnemonic codes always contain a letter, so the two kinds of key never collide; they also never
match each other (``HUMAN`` is not ``9606``): give all paired MSAs of a job the same header
style. Headers with no species (the query, metagenomic hits) give ``None`` and are not paired.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import numpy as np

from foldray.errors import InputError
from foldray.residues import RESTYPE_INDEX, UNKNOWN_RESTYPE, MolType, msa_letter_to_restype

# Byte codes in the lookup tables below (values >= 0 are restype classes).
_INVALID = -1
_INSERTION = -2  # lowercase letter: dropped, counted as a deletion
_IGNORED = -3  # '.': a3m padding of insert columns

# AF3 `msa_features._PROTEIN_TO_ID` folds these ambiguous / rare amino-acid codes onto a parent.
_PROTEIN_ALIASES = {"B": "ASP", "Z": "GLU", "U": "CYS", "J": "UNK", "O": "UNK"}

_POLYMER_TYPES: tuple[MolType, ...] = ("protein", "rna", "dna")


@functools.cache
def _byte_table(mol_type: MolType) -> np.ndarray:
    """[256] int16: byte -> restype class, or one of _INVALID / _INSERTION / _IGNORED."""
    table = np.full(256, _INVALID, dtype=np.int16)
    for letter in map(chr, range(ord("A"), ord("Z") + 1)):  # every uppercase letter is a residue
        table[ord(letter)] = UNKNOWN_RESTYPE[mol_type]
        table[ord(letter.lower())] = _INSERTION
    if mol_type == "protein":
        for letter, code in _PROTEIN_ALIASES.items():
            table[ord(letter)] = RESTYPE_INDEX[code]
    for letter, restype in msa_letter_to_restype(mol_type).items():
        table[ord(letter)] = restype
    table[ord(".")] = _IGNORED
    table.setflags(write=False)
    return table


def encode_letters(letters: str, mol_type: MolType) -> np.ndarray:
    """[L] uint8 restype classes of an a3m-alphabet string (uppercase letters and '-')."""
    if mol_type not in _POLYMER_TYPES:
        raise ValueError(f"a3m rows are protein, rna or dna, not {mol_type!r}")
    raw = np.frombuffer(letters.encode("ascii", errors="replace"), dtype=np.uint8)
    codes = _byte_table(mol_type)[raw]
    return np.where(codes >= 0, codes, UNKNOWN_RESTYPE[mol_type]).astype(np.uint8)


@dataclass(frozen=True, kw_only=True, eq=False)
class A3m:
    """One parsed a3m file; row 0 is the query. Arrays are read-only (shared by chain copies)."""

    headers: tuple[str, ...]  # [N_seq] text after '>'
    rows: np.ndarray  # [N_seq, L] uint8 restype classes of the match columns
    deletions: np.ndarray  # [N_seq, L] int32 insertions immediately left of each column
    query_letters: str  # first record's uppercase letters, gaps removed
    mol_type: MolType = "protein"
    source: str = ""  # file or URL, for error messages
    query_line: int = 1  # 1-based line of the query's '>' header

    @property
    def depth(self) -> int:
        return int(self.rows.shape[0])

    @property
    def width(self) -> int:
        return int(self.rows.shape[1])

    @functools.cached_property
    def species(self) -> tuple[str | None, ...]:
        """[N_seq] `species_key` of each header; the query row never takes part in pairing."""
        return (None, *(species_key(header) for header in self.headers[1:]))


def parse_a3m(text: str, mol_type: MolType, *, source: str = "", max_rows: int | None = None) -> A3m:
    """Parse a3m text into restype rows and the deletion matrix (SI 2.3, Table 5).

    Blank lines and ``#`` comment lines are skipped, ``\\r\\n`` endings accepted, sequences may
    span several lines and may end in ``*``. ``max_rows`` keeps the first records only (AF3's
    per-database crop); the rest of the file is not read. Errors raise `InputError` with
    ``field="line N"``: the line of the offending character, or the ``>`` line of the
    offending record for record-level problems. Messages never quote the file's text (it
    may not be an a3m at all), only the one offending character.
    """
    if mol_type not in _POLYMER_TYPES:
        raise ValueError(f"a3m rows are protein, rna or dna, not {mol_type!r}")
    if max_rows is not None and max_rows < 1:
        raise ValueError(f"max_rows must be >= 1 or None, got {max_rows}")

    def fail(message: str, line: int) -> InputError:
        return InputError(message, source=source, field=f"line {line}")

    headers: list[str] = []
    header_lines: list[int] = []
    parts: list[str] = []  # sequence lines, in file order
    part_lines: list[int] = []  # [n_part] 1-based line number
    part_record: list[int] = []  # [n_part] record index
    for line_no, raw_line in enumerate(text.split("\n"), start=1):
        line = raw_line.strip()
        if not line or line[0] == "#":
            continue
        if line[0] == ">":
            if max_rows is not None and len(headers) == max_rows:
                break
            headers.append(line[1:].strip())
            header_lines.append(line_no)
        elif not headers:
            raise fail("sequence data before the first '>' header", line_no)  # text not quoted
        else:
            parts.append(line.rstrip("*"))
            part_lines.append(line_no)
            part_record.append(len(headers) - 1)
    if not headers:
        raise fail("empty a3m: no '>' records (expected the query sequence first)", 1)

    n_seq = len(headers)
    part_len = np.fromiter(map(len, parts), dtype=np.int64, count=len(parts))
    part_end = np.cumsum(part_len)  # [n_part] exclusive end offset of each line in `joined`
    joined = "".join(parts)

    def line_of(offset: int) -> tuple[int, int]:
        """(line number, 1-based column within the stripped line) of a joined-text offset."""
        i = int(np.searchsorted(part_end, offset, side="right"))
        return part_lines[i], offset - int(part_end[i] - part_len[i]) + 1

    try:
        raw = np.frombuffer(joined.encode("ascii"), dtype=np.uint8)  # [n_byte]
    except UnicodeEncodeError as err:
        line_no, col = line_of(err.start)
        raise fail(f"invalid character {joined[err.start]!r} at column {col} (a3m is ASCII)",
                   line_no) from None
    codes = _byte_table(mol_type)[raw]  # [n_byte] int16
    bad = np.flatnonzero(codes == _INVALID)
    if bad.size:
        line_no, col = line_of(int(bad[0]))
        raise fail(f"invalid character {chr(raw[bad[0]])!r} at column {col}: expected letters, "
                   f"'-' or '.'", line_no)

    # Byte range [start, end) of each record in `raw`; records are contiguous in file order.
    rec_len = np.bincount(np.asarray(part_record, dtype=np.int64), weights=part_len,
                          minlength=n_seq).astype(np.int64)  # [N_seq]
    rec_end = np.cumsum(rec_len)
    rec_start = rec_end - rec_len
    is_match = codes >= 0
    match_before = np.concatenate([[0], np.cumsum(is_match, dtype=np.int64)])  # [n_byte + 1]
    n_match = match_before[rec_end] - match_before[rec_start]  # [N_seq]
    width = int(n_match[0])
    if width == 0:
        raise fail("the query (first record) has no residues", header_lines[0])
    wrong = np.flatnonzero(n_match != width)
    if wrong.size:
        r = int(wrong[0])
        raise fail(f"record {r + 1} has {int(n_match[r])} aligned columns (uppercase "
                   f"letters and '-') but the query has {width}", header_lines[r])

    match_at = np.flatnonzero(is_match)  # [N_seq * L] byte offsets, row-major
    rows = codes[match_at].astype(np.uint8).reshape(n_seq, width)  # [N_seq, L]
    ins_before = np.concatenate([[0], np.cumsum(codes == _INSERTION, dtype=np.int64)])
    at_match = ins_before[match_at].reshape(n_seq, width)  # [N_seq, L] insertions so far
    left = np.concatenate([ins_before[rec_start][:, None], at_match[:, :-1]], axis=1)
    deletions = (at_match - left).astype(np.int32)  # [N_seq, L]

    query_bytes = raw[rec_start[0]:rec_end[0]]
    query_letters = query_bytes[(codes[rec_start[0]:rec_end[0]] >= 0) & (query_bytes != ord("-"))]
    rows.setflags(write=False)
    deletions.setflags(write=False)
    return A3m(headers=tuple(headers), rows=rows, deletions=deletions,
               query_letters=query_letters.tobytes().decode("ascii"), mol_type=mol_type,
               source=source, query_line=header_lines[0])


# AF3 `msa_features._UNIPROT_ENTRY_NAME_REGEX`: db|accession[_isoform]|entry_SPECIES.
_UNIPROT_ENTRY = re.compile(r"(?:tr|sp)\|[A-Z0-9]{6,10}(?:_\d+)?\|[A-Z0-9]{1,10}_(?P<species>[A-Z0-9]{1,5})")
# Protenix / ColabFold UniRef hits with the tax id appended: UniRef100_UPI00186459A6_118141/
_UNIREF_TAXID = re.compile(r"UniRef\d+_[A-Za-z0-9]+_(?P<taxid>\d+)(?:/|\s|$)")
_TAXID_FIELD = re.compile(r"(?:^|\s)(?:OX|TaxID)=(?P<taxid>\d+)(?:\s|$)")


def species_key(header: str) -> str | None:
    """Species used for cross-chain MSA pairing, or None (see the module docstring for rules).

    >>> species_key("tr|A0A2W3M096|A0A2W3M096_STAAU Plasmid segregation protein OX=1280")
    'STAAU'
    >>> species_key("UniRef100_UPI00186459A6_118141/\\t154\\t0.287")
    '118141'
    >>> species_key("UniRef100_Q6GZX4 Putative factor n=1 Tax=FV-3 TaxID=654924 RepID=001R_FRG3G")
    '654924'
    """
    header = header.strip()
    if match := _UNIPROT_ENTRY.match(header):
        return match["species"]
    if match := _UNIREF_TAXID.match(header):
        return match["taxid"]
    if match := _TAXID_FIELD.search(header):
        return match["taxid"]
    return None


def check_query(a3m: A3m, sequence_letters: str) -> None:
    """Raise `InputError` unless the a3m's first record is the chain sequence.

    Compared as restype classes, as AF3 does (so ``B`` in the a3m equals ``D``); the message
    names the first differing (1-based) position. ``field`` is the query's ``>`` line; callers
    add their location with `InputError.located`.
    """
    expected = encode_letters(sequence_letters.upper(), a3m.mol_type)  # [L_seq]
    found = a3m.rows[0]  # [L_a3m]
    n = min(len(expected), len(found))
    differ = np.flatnonzero(expected[:n] != found[:n])
    if not differ.size and len(expected) == len(found):
        return
    pos = int(differ[0]) if differ.size else n
    letters = _class_letters(a3m.mol_type)

    def at(classes: np.ndarray) -> str:
        return repr(letters[int(classes[pos])]) if pos < len(classes) else "the end"

    raise InputError(
        f"the a3m query (first record) does not match the chain sequence: "
        f"first difference at position {pos + 1} ({at(found)} in the a3m, {at(expected)} in the "
        f"sequence); the a3m query has {len(found)} columns, the sequence {len(expected)} residues",
        source=a3m.source, field=f"line {a3m.query_line}")


@functools.cache
def _class_letters(mol_type: MolType) -> dict[int, str]:
    """restype class -> one a3m letter, for messages."""
    out = {UNKNOWN_RESTYPE[mol_type]: "N" if mol_type in ("rna", "dna") else "X"}
    for letter, restype in msa_letter_to_restype(mol_type).items():
        out.setdefault(restype, letter)
    return out
