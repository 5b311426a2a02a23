"""Featurization switches: where the references featurize differently from AlphaFold 3.

Imported weights were trained on their own reference's features, so a checkpoint carries the
featurization it expects (`ModelConfig.featurization`) and every caller featurizes a job with
it. Defaults are AlphaFold 3's (SI section 2 and its released code,
github.com/google-deepmind/alphafold3 at c0f97ed, cited as `af3:<path>:<line>`); the
OpenFold3 preset reproduces openfold3 0.5.0 (`of3:<path under openfold3/>:<line>`), proven
by benchmarks/equivalence/feature_parity.py. docs/parity.md has the table and the evidence.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

ModifiedResidueRestype = Literal["parent", "protein_unknown", "ccd_type"]
MsaQueryLetters = Literal["ccd", "input"]
LigandLeavingAtoms = Literal["glycan_o1", "bonded", "keep"]
Selenomethionine = Literal["atomize", "one_token", "as_met"]
MsaWithoutAlignment = Literal["query", "gap"]
PairedMsa = Literal["species", "precomputed"]


@dataclass(frozen=True, kw_only=True)
class FeaturizationConfig:
    """How a job becomes features. Each field is a behaviour the references disagree on.

    keep_terminal_leaving_atoms: True (AF3) keeps the leaving atoms of the chain ends, the
        C-terminal OXT of a protein chain and the 5' OP3 of a DNA/RNA chain; AF3 drops OXT
        only when a residue is not the chain end and OP3 only when it is not the chain
        start (af3:src/alphafold3/model/atom_layout/atom_layout.py:673-686 get_link_drop_atoms,
        chain ends from residues_from_structure(include_missing_residues=True),
        af3:src/alphafold3/model/pipeline/structure_cleaning.py:305-307, atom_layout.py:554-608;
        SI 2.5.2 (distillation) removes "DNA leaving atoms (OP3) from the original prediction",
        so AF3 predicts them; Protenix keeps them too). False (OpenFold3) drops every polymer
        residue's leaving atoms (of3:core/data/primitives/structure/query.py:329-384).
    modified_residue_restype: restype class of a modified polymer residue's tokens.
        "parent" (AF3, Protenix; SI 2.5.3 maps modified residues the same way): its standard
        parent from the CCD one-letter code, unknown of its own chain type when there is none
        (af3:src/alphafold3/model/features.py:943-958, mmcif_names.fix_non_standard_polymer_res).
        "protein_unknown" (OpenFold3): the residue name looked up among the standard names,
        else the protein "UNK", for RNA and DNA residues too
        (of3:core/data/pipelines/featurization/structure.py:86-91, core/data/resources/residues.py:321-332).
        "ccd_type" (Protenix): as "parent", but the residue's own CCD _chem_comp.type picks the
        molecule kind first, and a non-polymer component inside a polymer (GTP at the 5' end of
        an RNA) is the protein UNK (ptx:protenix/data/core/ccd.py:150-179 get_mol_type,
        ptx:protenix/data/core/parser.py:2789-2830 add_cano_seq_resname).
    msa_without_alignment: MSA columns of a polymer chain without an alignment (none given,
        DNA, 4 residues or fewer) and of ligands. "query" (AF3): the chain's query row in
        row 0 (and in the unpaired block), profile the query's one-hot; ligand columns are
        gap in every row with the gap one-hot profile (af3:src/alphafold3/model/features.py:
        474-528, Msa.from_empty / "Make sure the MSA always has at least the query",
        af3:src/alphafold3/data/msa.py:109-110, profile af3:src/alphafold3/model/data3.py:35-47).
        "gap" (OpenFold3): gap in every row, row 0 included, and an all-zero profile; a
        complex without any alignment has a single gap row
        (of3:core/data/primitives/featurization/msa.py:239-250, 274-284).
    paired_msa: how `pairedMsa` rows are used. "species" (AF3, SI 2.3): AlphaFold-Multimer
        pairing by species, only when the complex has more than one distinct protein
        sequence (af3:src/alphafold3/model/features.py:447-448, msa_pairing.py).
        "precomputed" (OpenFold3): each chain's pairedMsa rows are taken as already
        row-aligned across chains, in file order (its query row first), for a single chain
        too; chains without one are gap; main-MSA rows equal to a paired row are dropped
        (of3:core/data/pipelines/sample_processing/msa.py:194-286, 652-681, 378-392).
    paired_msa_as_unpaired: False (AF3, OpenFold3): a pairedMsa only feeds the paired rows
        (af3:src/alphafold3/model/features.py:498-505). True (Protenix, msa_pair_as_unpair):
        its rows also join the main MSA, before the unpairedMsa rows, for the unpaired block
        and the profile (ptx:protenix/data/msa/msa_featurizer.py:654-657,
        ptx:protenix/configs/configs_inference.py:35).
    fill_non_protein_msa_rows: False (AF3, OpenFold3): columns of DNA, RNA and ligand chains
        stay gap in rows their own MSA does not fill; ligand columns are gap everywhere
        (af3:src/alphafold3/model/features.py:519-528, merging_features pads with gap). True
        (Protenix): every all-gap row of a non-protein chain's columns gets that chain's row 0,
        and a ligand's row 0 (and profile) is UNK, so ligand columns are UNK in every row
        (ptx:protenix/data/msa/msa_featurizer.py:335-347 "Forward compatibility patch", ligand
        sequence "X" * n :644-649).
    msa_query_letters: "ccd" (AF3, OpenFold3): a polymer chain's MSA query row is its tokens'
        restypes, a modified residue showing its CCD one-letter code's parent
        (af3:src/alphafold3/model/features.py:462). "input" (Protenix): the chain's sequence
        letters as written in the input, e.g. the N written for GTP
        (ptx:protenix/data/msa/msa_featurizer.py:633-635).
    ligand_leaving_atoms: which leaving atoms covalent bonds remove (polymer links aside).
        "glycan_o1" (AF3 as trained and at inference): O1 of every glycan residue (CCD type
        "saccharide") of a ligand chain, bonded or standalone, unless a bond names O1
        (af3:src/alphafold3/model/pipeline/structure_cleaning.py:134-163,
        pipeline.py:151,159,195-200: drop_ligand_leaving_atoms=True,
        fix_standalone_glycans=False). "bonded" (Protenix): a CCD leaving group of every atom
        a bondedAtomPairs entry names, one per bond (glycan C1 -> O1), whatever the residue
        (ptx:protenix/data/inference/json_to_feature.py:210-284,
        ptx:protenix/data/inference/json_parser.py:181-234). "keep": none (foldray before).
    selenomethionine: an MSE residue in a protein chain. "atomize" (SI 2.6, "a modified
        amino acid ... is tokenized per-atom"; OpenFold3; foldray's default): one token per
        atom, restype MET. "one_token" (AF3's released code: its tokenizer treats MSE like a
        standard residue, af3:src/alphafold3/model/features.py:236-245): one token, restype
        MET, atoms keep their names (SE, element Se). "as_met" (Protenix): one token, and the
        residue is renamed MET with SE -> SD, element S, on the MSE conformer
        (ptx:protenix/data/inference/json_to_feature.py:315-344 mse_to_met).
    """

    keep_terminal_leaving_atoms: bool = True
    modified_residue_restype: ModifiedResidueRestype = "parent"
    msa_without_alignment: MsaWithoutAlignment = "query"
    paired_msa: PairedMsa = "species"
    paired_msa_as_unpaired: bool = False
    fill_non_protein_msa_rows: bool = False
    msa_query_letters: MsaQueryLetters = "ccd"
    ligand_leaving_atoms: LigandLeavingAtoms = "glycan_o1"
    selenomethionine: Selenomethionine = "atomize"

    def __post_init__(self) -> None:
        for name, allowed in (("modified_residue_restype", ("parent", "protein_unknown", "ccd_type")),
                              ("msa_query_letters", ("ccd", "input")),
                              ("ligand_leaving_atoms", ("glycan_o1", "bonded", "keep")),
                              ("selenomethionine", ("atomize", "one_token", "as_met")),
                              ("msa_without_alignment", ("query", "gap")),
                              ("paired_msa", ("species", "precomputed"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"featurization.{name} must be one of {', '.join(allowed)}, "
                                 f"got {getattr(self, name)!r}")

    @classmethod
    def alphafold3(cls) -> FeaturizationConfig:
        return cls()

    @classmethod
    def openfold3(cls) -> FeaturizationConfig:
        """What openfold3 0.5.0's inference featurizer does (its weights were trained on it)."""
        return cls(keep_terminal_leaving_atoms=False, modified_residue_restype="protein_unknown",
                   msa_without_alignment="gap", paired_msa="precomputed")

    @classmethod
    def protenix(cls) -> FeaturizationConfig:
        """What protenix 2.0's inference featurizer does, where a switch covers it (the
        differences without one are listed in docs/parity.md)."""
        return cls(fill_non_protein_msa_rows=True, paired_msa_as_unpaired=True,
                   modified_residue_restype="ccd_type", msa_query_letters="input",
                   ligand_leaving_atoms="bonded", selenomethionine="as_met")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeaturizationConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown featurization config key {unknown[0]!r}")
        return cls(**data)


DEFAULT_FEATURIZATION = FeaturizationConfig()
