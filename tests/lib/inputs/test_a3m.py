"""foldray.inputs.a3m on the real MSAs of shared/data/msas (SI 2.2-2.3, Table 5)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from foldray.errors import InputError
from foldray.inputs.a3m import check_query, parse_a3m, species_key
from foldray.residues import GAP, RESTYPE_INDEX

DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"
MSAS = DATA / "msas"
ALL_A3M = sorted(p.name for p in MSAS.glob("*.a3m"))
# Record counts from shared/data/MANIFEST.md.
MANIFEST_COUNTS = {"102m_A.a3m": 98, "102m_A_paired.a3m": 771, "5zyh_A.a3m": 323,
                   "5zyh_A_paired.a3m": 681, "1k1a_A.a3m": 3084, "1k1a_A_paired.a3m": 4977,
                   "2q2k_A.a3m": 4, "2q2k_B.a3m": 4}
A, C, D, E, F = (RESTYPE_INDEX[x] for x in ("ALA", "CYS", "ASP", "GLU", "PHE"))


def _records(text: str) -> list[tuple[str, str]]:
    """Naive reference reader: (header, sequence) per record, one character at a time."""
    out: list[tuple[str, str]] = []
    for line in text.splitlines():
        if line.startswith(">"):
            out.append((line[1:].strip(), ""))
        elif line.strip() and not line.startswith("#"):
            out[-1] = (out[-1][0], out[-1][1] + line.strip())
    return out


def _reference_deletions(seq: str) -> list[int]:
    """AF2/AF3 deletion row, written out character by character."""
    row, pending = [], 0
    for ch in seq:
        if ch.islower():
            pending += 1
        elif ch.isupper() or ch == "-":
            row.append(pending)
            pending = 0
    return row


def test_manifest_lists_every_file():
    assert sorted(MANIFEST_COUNTS) == ALL_A3M


@pytest.mark.parametrize("name", ALL_A3M)
def test_shape_matches_independent_record_count(name):
    text = (MSAS / name).read_text()
    records = _records(text)
    query = records[0][1]
    a3m = parse_a3m(text, "protein", source=name)
    n_columns = sum(ch.isupper() or ch == "-" for ch in query)
    assert a3m.rows.shape == a3m.deletions.shape == (len(records), n_columns)
    assert a3m.depth == MANIFEST_COUNTS[name] == text.count("\n>") + 1
    assert a3m.rows.dtype == np.uint8 and a3m.deletions.dtype == np.int32
    assert a3m.headers == tuple(h for h, _ in records)
    assert a3m.query_letters == query
    assert a3m.source == name


@pytest.mark.parametrize("name", ["102m_A.a3m", "5zyh_A_paired.a3m", "2q2k_A.a3m"])
def test_rows_and_deletions_match_reference_on_real_file(name):
    text = (MSAS / name).read_text()
    a3m = parse_a3m(text, "protein")
    records = _records(text)
    expected_del = np.array([_reference_deletions(seq) for _, seq in records])
    np.testing.assert_array_equal(a3m.deletions, expected_del)
    assert a3m.deletions.max() > 0  # the files do have insertions
    gaps = np.array([[ch == "-" for ch in seq if ch.isupper() or ch == "-"] for _, seq in records])
    np.testing.assert_array_equal(a3m.rows == GAP, gaps)


def test_real_row_with_known_insertion():
    # 102m_A.a3m record 2 reads "...NTLVENLDNsekMASVLK...": 3 insertions before the M.
    text = (MSAS / "102m_A.a3m").read_text()
    seq = _records(text)[1][1]
    col = sum(ch.isupper() or ch == "-" for ch in seq[: seq.index("sek")])
    a3m = parse_a3m(text, "protein")
    assert a3m.deletions[1, col] == 3
    assert a3m.rows[1, col] == RESTYPE_INDEX["MET"]
    assert a3m.deletions[1, col - 1] == 0 and a3m.deletions[1, col + 1] == 0


def test_hand_written_deletions():
    text = ">q\nACDEF\n>h1\nAcxC-EFg\n>h2\n-aaaCDe.EF\n"
    a3m = parse_a3m(text, "protein")
    np.testing.assert_array_equal(a3m.rows, [[A, C, D, E, F], [A, C, GAP, E, F], [GAP, C, D, E, F]])
    # h1: 'cx' before C; trailing 'g' has no column. h2: 'aaa' before C, 'e' before E ('.' ignored).
    np.testing.assert_array_equal(a3m.deletions, [[0, 0, 0, 0, 0], [0, 2, 0, 0, 0], [0, 3, 0, 1, 0]])
    assert a3m.query_letters == "ACDEF"


def test_format_variants_parse_identically():
    plain = parse_a3m(">q desc\nACDEF\n>h1\nAcxC-EFg\n", "protein")
    messy = parse_a3m("#A3M#\r\n\r\n>q desc\r\nAC\r\nDEF*\r\n# comment\r\n\r\n>h1\r\nAcx\r\nC-EFg*\r\n",
                      "protein")
    assert messy.headers == plain.headers == ("q desc", "h1")
    np.testing.assert_array_equal(messy.rows, plain.rows)
    np.testing.assert_array_equal(messy.deletions, plain.deletions)
    assert messy.query_line == 3


def test_nucleic_alphabets():
    rna = parse_a3m(">q\nACGU\n>h\nACGT\n", "rna")
    np.testing.assert_array_equal(rna.rows[1], [RESTYPE_INDEX[x] for x in ("A", "C", "G", "U")])
    dna = parse_a3m(">q\nACGT\n>h\nAC-X\n", "dna")
    np.testing.assert_array_equal(dna.rows[1], [RESTYPE_INDEX[x] for x in ("DA", "DC", "-", "DN")])


def test_max_rows_keeps_first_records():
    text = (MSAS / "5zyh_A_paired.a3m").read_text()
    full, head = parse_a3m(text, "protein"), parse_a3m(text, "protein", max_rows=10)
    assert head.depth == 10
    np.testing.assert_array_equal(head.rows, full.rows[:10])
    assert head.headers == full.headers[:10]


@pytest.mark.parametrize(("text", "line", "words"), [
    ("", "line 1", "empty"),
    ("\n# only a comment\n", "line 1", "empty"),
    (">q\nACDEF\n>h1\nACD\n", "line 3", "3 aligned columns"),
    (">q\nACDEF\n>h1\nACDEF\n>h2\nAC\nDE1F\n", "line 7", "'1'"),
    (">q\nACDEF\n>h1\nAC DEF\n", "line 4", "' '"),
    (">q\nACDEF\n>h1\nACDÉF\n", "line 4", "'É'"),
    ("ACDEF\n>q\nACDEF\n", "line 1", "before the first"),
    (">q\n\n>h1\nACD\n", "line 1", "no residues"),
])
def test_errors_name_line_and_problem(text, line, words):
    with pytest.raises(InputError) as err:
        parse_a3m(text, "protein", source="x.a3m")
    assert err.value.field == line
    assert words in err.value.message
    assert err.value.source == "x.a3m"


def test_real_file_with_wrong_row_length(tmp_path):
    lines = (MSAS / "2q2k_A.a3m").read_text().splitlines()
    lines[5] = lines[5][:-3]  # third record loses 3 columns
    with pytest.raises(InputError) as err:
        parse_a3m("\n".join(lines), "protein")
    assert err.value.field == "line 5"
    assert "67 aligned columns" in err.value.message and "70" in err.value.message


def test_species_keys_from_real_headers():
    uniprot = parse_a3m((MSAS / "2q2k_A.a3m").read_text(), "protein")
    assert uniprot.species == (None, "STAAU", "9STAP", "STAXY")  # AF3 mnemonic, not OX=1280
    paired = parse_a3m((MSAS / "102m_A_paired.a3m").read_text(), "protein")
    assert paired.headers[1].startswith("UniRef100_UPI00186459A6_118141/")
    assert paired.species[1:4] == ("118141", "42526", "240159")
    no_tax = [i for i, h in enumerate(paired.headers) if re.match(r"UniRef100_S7Q7N2\s", h)]
    with_tax = [i for i, h in enumerate(paired.headers) if h.startswith("UniRef100_S7Q7N2_109478/")]
    assert no_tax and with_tax
    assert paired.species[no_tax[0]] is None and paired.species[with_tax[0]] == "109478"
    independent = [m.group(1) if (m := re.match(r"UniRef100_\w+?_(\d+)/", h)) else None
                   for h in paired.headers]
    assert paired.species[1:] == tuple(independent[1:])
    metagenomic = parse_a3m((MSAS / "1k1a_A.a3m").read_text(), "protein", max_rows=50)
    assert metagenomic.headers[1].startswith("16061|Ga0209224") and metagenomic.species[1] is None


@pytest.mark.parametrize(("header", "key"), [
    ("sp|P69905|HBA_HUMAN Hemoglobin subunit alpha OS=Homo sapiens OX=9606", "HUMAN"),
    ("tr|A0A0Q9XW80|A0A0Q9XW80_9STAP Uncharacterized protein", "9STAP"),
    ("UniRef100_P69905 Hemoglobin subunit alpha n=1 Tax=Homo sapiens TaxID=9606 RepID=HBA_HUMAN", "9606"),
    ("UniRef90_A0A2T9WJQ3_1987490/\t243\t0.294", "1987490"),
    ("A0A1A7XAT7 Some protein OX=8090", "8090"),
    ("query", None),
    ("UniRef100_S7Q7N2\t104\t0.727", None),
    ("SRR5579864_7281666\t267\t0.326", None),
])
def test_species_key_rules(header, key):
    assert species_key(header) == key


def test_check_query_accepts_the_real_sequence():
    job = json.loads((DATA / "inputs" / "102m.json").read_text())
    sequence = job["sequences"][0]["protein"]["sequence"]
    a3m = parse_a3m((MSAS / "102m_A.a3m").read_text(), "protein")
    check_query(a3m, sequence)  # does not raise
    mutated = sequence[:41] + ("A" if sequence[41] != "A" else "G") + sequence[42:]
    with pytest.raises(InputError, match="position 42"):
        check_query(a3m, mutated)
    with pytest.raises(InputError, match="position 155"):
        check_query(a3m, sequence + "K")


def test_check_query_rejects_bad_input_file():
    path = DATA / "bad_inputs" / "a3m_query_mismatch.a3m"
    a3m = parse_a3m(path.read_text(), "protein", source=str(path))
    with pytest.raises(InputError) as err:
        check_query(a3m, "NLYIQWLKDGGPSSGRPPPS")
    assert "position 1 " in err.value.message
    assert "'M' in the a3m" in err.value.message and "'N' in the sequence" in err.value.message
    assert err.value.field == "line 1" and err.value.source == str(path)
    located = err.value.located(field_prefix="sequences[0].protein.unpairedMsa")
    assert located.field == "sequences[0].protein.unpairedMsa (line 1)"
