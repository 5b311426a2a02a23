"""Template features (SI 2.4, 2.8 / Table 5) from user-given templates (AF3 JSON `templates`).

Templates are single protein chains; each protein chain of the job brings its own list,
and template slot t holds the t-th template of every chain at once (pairs across chains
are masked in the template embedder). Per template: the first protein chain of its
mmCIF; `templateIndices` count that chain's residues in sequence order (label_seq_id - 1
when the file has one, else the order of the modelled residues), mapped to the query's
`queryIndices`. Inference takes the first 4 templates; training draws
k ~ min(Uniform{0..n}, 4) of them at random (SI 2.4). Only standard residue tokens get
template features; other tokens read as gaps with zero masks.

Features [N_templ, ...]: template_restype (class index, gap where uncovered),
template_pseudo_beta_mask (Cβ, Cα for glycine), template_backbone_frame_mask (N, Cα, C),
template_distogram (one-hot Cβ-Cβ distance, 39 bins from 3.25 to 50.75 Å, the last open;
nothing below 3.25 Å), template_unit_vector (Cα_j in the backbone frame of residue i, unit).
"""

from __future__ import annotations

from dataclasses import dataclass

import gemmi
import numpy as np

from foldray.errors import InputError
from foldray.features.featurize import empty_template_features
from foldray.features.tokenize import TokenizedStructure
from foldray.inputs.job import Job, PolymerChain, TemplateInput
from foldray.residues import GAP, PROTEIN_ONE_TO_THREE, RESTYPE_INDEX

MAX_TEMPLATES = 4
DISTOGRAM_LOWER = np.linspace(3.25, 50.75, 39)
DISTOGRAM_UPPER = np.append(DISTOGRAM_LOWER[1:], np.inf)


@dataclass(frozen=True, slots=True)
class TemplateResidues:
    """One template chain: per template sequence index, its residue name and atoms."""

    names: dict[int, str]
    atoms: dict[int, dict[str, np.ndarray]]


def read_template(template: TemplateInput, *, source: str, job: str, field: str) -> TemplateResidues:
    """The first protein chain of the template's mmCIF, indexed by template sequence index."""
    try:
        doc = gemmi.cif.read_string(template.mmcif)
        st = gemmi.make_structure_from_block(doc.sole_block())
    except (RuntimeError, ValueError) as err:
        raise InputError(f"template mmCIF could not be read: {err}", source=source, job=job,
                         field=field) from None
    st.setup_entities()
    for chain in st[0] if len(st) else []:
        polymer = chain.get_polymer()
        if polymer.length() == 0 or polymer.check_polymer_type() not in (
                gemmi.PolymerType.PeptideL, gemmi.PolymerType.PeptideD):
            continue
        names, atoms = {}, {}
        for order, residue in enumerate(polymer):
            index = residue.label_seq - 1 if residue.label_seq is not None else order
            names[index] = residue.name
            atoms[index] = {atom.name: np.array(atom.pos.tolist(), np.float64)
                            for atom in residue if atom.altloc in ("\0", "A")}
        return TemplateResidues(names=names, atoms=atoms)
    raise InputError("template mmCIF has no protein chain", source=source, job=job, field=field)


def _restype(name: str) -> int:
    """Class of a template residue; modified residues (MSE, ...) count as their parent."""
    if name in RESTYPE_INDEX:
        return RESTYPE_INDEX[name]
    info = gemmi.find_tabulated_residue(name)
    parent = PROTEIN_ONE_TO_THREE.get(info.one_letter_code.upper()) if info is not None else None
    return RESTYPE_INDEX.get(parent or "UNK", RESTYPE_INDEX["UNK"])


def _backbone_frame(atoms: dict[str, np.ndarray]) -> np.ndarray | None:
    """Rotation [3, 3] (rows: axes) of the N-CA-C frame: x along C-CA, N in the xy plane."""
    if not all(name in atoms for name in ("N", "CA", "C")):
        return None
    e1 = atoms["C"] - atoms["CA"]
    e1 = e1 / max(np.linalg.norm(e1), 1e-8)
    v = atoms["N"] - atoms["CA"]
    e2 = v - np.dot(v, e1) * e1
    e2 = e2 / max(np.linalg.norm(e2), 1e-8)
    return np.stack([e1, e2, np.cross(e1, e2)])


def _choose(templates: tuple[TemplateInput, ...], rng: np.random.Generator | None,
            ) -> list[int]:
    n = len(templates)
    if rng is None:
        return list(range(min(n, MAX_TEMPLATES)))
    k = min(int(rng.integers(0, n + 1)), MAX_TEMPLATES)
    return sorted(rng.choice(n, size=k, replace=False).tolist())


def template_features(job: Job, tokens: TokenizedStructure, *,
                      rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    """Table 5 template features of the (possibly cropped) tokens; rng set = training draw."""
    n_token = tokens.n_tokens
    per_token: list[dict[int, tuple[str, dict[str, np.ndarray]]]] = []   # slot -> token -> residue
    for chain in tokens.chains:
        entity = job.entities[chain.entity_index]
        if not isinstance(entity, PolymerChain) or entity.mol_type != "protein" or not entity.templates:
            continue
        chosen = _choose(entity.templates, rng)
        tokens_of_chain = np.arange(chain.token_start, chain.token_end)
        for slot, k in enumerate(chosen):
            field = f"sequences[{chain.entity_index}].protein.templates[{k}].mmcif"
            template = entity.templates[k]
            residues = read_template(template, source=job.source, job=job.name, field=field)
            query_to_template = dict(zip(template.query_indices, template.template_indices,
                                         strict=True))
            while len(per_token) <= slot:
                per_token.append({})
            for token in tokens_of_chain.tolist():
                if not tokens.is_standard[token]:
                    continue
                target = query_to_template.get(int(tokens.residue_index[token]) - 1)
                if target is not None and target in residues.names:
                    per_token[slot][token] = (residues.names[target], residues.atoms[target])
    if not per_token:
        return empty_template_features(n_token)
    return _assemble(per_token, n_token)


def _assemble(per_token: list[dict[int, tuple[str, dict[str, np.ndarray]]]],
              n_token: int) -> dict[str, np.ndarray]:
    n_templ = len(per_token)
    out = empty_template_features(n_token)
    restype = np.full((n_templ, n_token), GAP, np.int8)
    beta_mask = np.zeros((n_templ, n_token), np.float32)
    frame_mask = np.zeros((n_templ, n_token), np.float32)
    distogram = np.zeros((n_templ, n_token, n_token, len(DISTOGRAM_LOWER)), np.float32)
    unit = np.zeros((n_templ, n_token, n_token, 3), np.float32)
    for t, residues in enumerate(per_token):
        beta = np.zeros((n_token, 3))
        ca = np.zeros((n_token, 3))
        frames = np.zeros((n_token, 3, 3))
        for token, (name, atoms) in residues.items():
            restype[t, token] = _restype(name)
            beta_name = "CA" if name == "GLY" else "CB"
            if beta_name in atoms:
                beta[token], beta_mask[t, token] = atoms[beta_name], 1.0
            frame = _backbone_frame(atoms)
            if frame is not None:
                frames[token], ca[token], frame_mask[t, token] = frame, atoms["CA"], 1.0
        d = np.linalg.norm(beta[:, None] - beta[None], axis=-1)
        one_hot = (d[..., None] > DISTOGRAM_LOWER) & (d[..., None] < DISTOGRAM_UPPER)
        pair_beta = beta_mask[t][:, None] * beta_mask[t][None]
        distogram[t] = one_hot * pair_beta[..., None]
        local = np.einsum("iab,ijb->ija", frames, ca[None] - ca[:, None])   # CA_j in frame i
        norm = np.linalg.norm(local, axis=-1, keepdims=True)
        pair_frame = frame_mask[t][:, None] * frame_mask[t][None]
        unit[t] = np.where(norm > 1e-8, local / np.maximum(norm, 1e-8), 0.0) * pair_frame[..., None]
    out.update(template_restype=restype, template_pseudo_beta_mask=beta_mask,
               template_backbone_frame_mask=frame_mask, template_distogram=distogram,
               template_unit_vector=unit)
    return out
