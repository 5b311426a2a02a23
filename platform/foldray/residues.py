"""Residue vocabularies of the SI (Table 13 standard residues, Table 5 restype classes).

The 32 restype classes, in AlphaFold 3's order (also used by OpenFold3 and Protenix, so
imported weights line up): 20 amino acids + UNK, RNA A G C U + N, DNA DA DG DC DT + DN, gap.
"""

from __future__ import annotations

from typing import Literal

MolType = Literal["protein", "rna", "dna", "ligand"]
MOL_TYPES: tuple[MolType, ...] = ("protein", "rna", "dna", "ligand")

PROTEIN_ONE_TO_THREE: dict[str, str] = {
    "A": "ALA", "R": "ARG", "N": "ASN", "D": "ASP", "C": "CYS", "Q": "GLN", "E": "GLU",
    "G": "GLY", "H": "HIS", "I": "ILE", "L": "LEU", "K": "LYS", "M": "MET", "F": "PHE",
    "P": "PRO", "S": "SER", "T": "THR", "W": "TRP", "Y": "TYR", "V": "VAL", "X": "UNK",
}
RNA_ONE_TO_CCD: dict[str, str] = {"A": "A", "G": "G", "C": "C", "U": "U", "N": "N"}
DNA_ONE_TO_CCD: dict[str, str] = {"A": "DA", "G": "DG", "C": "DC", "T": "DT", "N": "DN"}
ONE_TO_CCD: dict[str, dict[str, str]] = {
    "protein": PROTEIN_ONE_TO_THREE, "rna": RNA_ONE_TO_CCD, "dna": DNA_ONE_TO_CCD,
}

RESTYPES: tuple[str, ...] = (
    "ALA", "ARG", "ASN", "ASP", "CYS", "GLN", "GLU", "GLY", "HIS", "ILE",
    "LEU", "LYS", "MET", "PHE", "PRO", "SER", "THR", "TRP", "TYR", "VAL", "UNK",
    "A", "G", "C", "U", "N",
    "DA", "DG", "DC", "DT", "DN",
    "-",
)
RESTYPE_INDEX: dict[str, int] = {name: i for i, name in enumerate(RESTYPES)}
NUM_RESTYPES = len(RESTYPES)  # 32
UNKNOWN_RESTYPE: dict[MolType, int] = {
    "protein": RESTYPE_INDEX["UNK"], "rna": RESTYPE_INDEX["N"], "dna": RESTYPE_INDEX["DN"],
    "ligand": RESTYPE_INDEX["UNK"],  # Table 5: ligands are "unknown amino acid"
}
GAP = RESTYPE_INDEX["-"]

# Table 13: residues tokenized as one token. Everything else is tokenized per atom.
STANDARD_RESIDUES: dict[MolType, frozenset[str]] = {
    "protein": frozenset(PROTEIN_ONE_TO_THREE.values()),
    "rna": frozenset(RNA_ONE_TO_CCD.values()),
    "dna": frozenset(DNA_ONE_TO_CCD.values()),
}

# SI 2.6 token centre atom; SI 4.4 distogram representative atom (CB, CA for GLY, C4/C2).
CENTRE_ATOM: dict[MolType, str] = {"protein": "CA", "rna": "C1'", "dna": "C1'"}
PURINES = frozenset({"A", "G", "DA", "DG", "N", "DN"})


def representative_atom(mol_type: MolType, ccd_code: str) -> str:
    """SI 4.4: CB for amino acids (CA for glycine), C4 for purines, C2 for pyrimidines."""
    if mol_type == "protein":
        return "CA" if ccd_code == "GLY" else "CB"
    return "C4" if ccd_code in PURINES else "C2"


# MSA letters (a3m alphabet) to restype classes per chain type; unknown letters -> unknown.
def msa_letter_to_restype(mol_type: MolType) -> dict[str, int]:
    """Mapping used to encode a3m rows; '-' is the gap class."""
    table = ONE_TO_CCD.get(mol_type, {})
    mapping = {letter: RESTYPE_INDEX[code] for letter, code in table.items()}
    if mol_type == "rna":  # RNA MSAs from nhmmer may carry T for U
        mapping["T"] = RESTYPE_INDEX["U"]
    mapping["-"] = GAP
    return mapping


# SI Table 9: crystallization aids, removed from structures in training and inference.
CRYSTALLIZATION_AIDS = frozenset(
    "SO4 GOL EDO PO4 ACT PEG DMS TRS PGE PG4 FMT EPE MPD MES CD IOD".split()
)
