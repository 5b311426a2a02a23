"""OpenFold3's full inference path on an AF3 JSON input, random weights, injected sampler noise.

Runs INSIDE the reference virtual environment (openfold3 0.5.0 from PyPI, no foldray): the
input goes through OpenFold3's own inference featurizer (reference_features_openfold3.py: the
query translation and `InferenceDataset`'s structure, conformer and MSA steps; templates are
its empty 4 slots), the model is OpenFold3 built from its own config code at the CPU-small
sizes of `tiny-openfold3` (reference_openfold3.tiny_config) with random weights, run by its
own `forward` (1 cycle, a few sampler steps, 2 samples) and scored by its own
`get_confidence_scores`, as its inference runner does. Every random draw of the sampler
(initial positions, each step's Algorithm 19 rotation and translation, each step's noise) is
replaced by tensors drawn up front (reference_openfold3.injected), which are saved so that
foldray's sampler can be fed the same ones (end_to_end.py).

Writes OUT_DIR/checkpoint.pt (the weights as OpenFold3's Lightning runner saves them: the
EMA params and a `model.`-prefixed state_dict) and OUT_DIR/reference.npz: the model input
features (one-hots stored as indices), per-atom residue names, the injected noise, and the
outputs (coordinates, pLDDT, PAE, pTM, ipTM).

Usage: python reference_openfold3_e2e.py INPUT.json OUT_DIR [--steps 4] [--samples 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from reference_features_openfold3 import af3_to_query, featurize
from reference_openfold3 import fixed_noise, injected, randomize, tiny_config

N_TEMPLATE_SLOTS = 4


def template_features(features: dict, atom_array, n_tokens: int) -> dict:
    """OpenFold3's template featurizer for a query without templates (its empty slots)."""
    from openfold3.core.data.pipelines.featurization.template import (
        featurize_template_structures_of3,
    )
    from openfold3.projects.of3_all_atom.config.dataset_configs import InferenceDatasetConfigKwargs

    settings = InferenceDatasetConfigKwargs().template
    return featurize_template_structures_of3(
        atom_array=atom_array, template_slice_collection=None, n_templates=settings.n_templates,
        n_tokens=n_tokens, min_bin=settings.distogram.min_bin, max_bin=settings.distogram.max_bin,
        n_bins=settings.distogram.n_bins)


def empty_templates(n_tokens: int) -> dict:
    return {"template_restype": torch.zeros(N_TEMPLATE_SLOTS, n_tokens, 32),
            "template_pseudo_beta_mask": torch.zeros(N_TEMPLATE_SLOTS, n_tokens),
            "template_backbone_frame_mask": torch.zeros(N_TEMPLATE_SLOTS, n_tokens),
            "template_distogram": torch.zeros(N_TEMPLATE_SLOTS, n_tokens, n_tokens, 39),
            "template_unit_vector": torch.zeros(N_TEMPLATE_SLOTS, n_tokens, n_tokens, 3)}


def compact_features(f: dict, atom_array) -> dict[str, np.ndarray]:
    """The model input, one-hots as indices (the converter in end_to_end_features.py expands
    them back); template slots are empty for every input here and are not stored."""
    out = {}
    for key, value in f.items():
        if not isinstance(value, torch.Tensor) or key.startswith("template_"):
            continue
        v = value.numpy()
        if key in ("restype", "msa", "ref_element"):
            v = v.argmax(-1).astype(np.int16 if key == "ref_element" else np.int8)
        elif key == "ref_atom_name_chars":
            v = v.argmax(-1).astype(np.int8)
        elif key in ("has_deletion", "msa_mask", "token_bonds"):
            v = v.astype(np.int8)
        out[key] = v
    out["atom_res_name"] = np.asarray(atom_array.res_name).astype("<U5")
    return out


@torch.no_grad()
def run(input_path: Path, out_dir: Path, n_step: int, n_sample: int, seed: int) -> dict:
    from openfold3.core.metrics.aggregate_confidence_ranking import get_confidence_scores
    from openfold3.projects.of3_all_atom.model import OpenFold3

    doc = json.loads(input_path.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        query_set = af3_to_query(doc, input_path.resolve().parent, Path(tmp))
        features, atom_array = featurize(query_set, query_set["seeds"][0])
    n_tokens = int(features["token_mask"].shape[0])
    try:
        templates = template_features(features, atom_array, n_tokens)
    except Exception:           # noqa: BLE001 - an older signature: the same empty slots
        templates = empty_templates(n_tokens)
    features.update(templates)

    torch.manual_seed(seed)
    config = tiny_config()
    config.architecture.shared.num_recycles = 0                  # 1 cycle
    config.architecture.shared.diffusion.no_full_rollout_steps = n_step
    config.architecture.shared.diffusion.no_full_rollout_samples = n_sample
    model = OpenFold3(config).eval()
    randomize(model, seed)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"ema": {"params": state}, "state_dict": {f"model.{k}": v for k, v in state.items()}},
               out_dir / "checkpoint.pt")

    # a batch axis, dtypes as its collator leaves them
    batch = {k: v[None] for k, v in features.items() if isinstance(v, torch.Tensor)}
    n_atom = batch["atom_mask"].shape[-1]
    noise = fixed_noise(n_step, n_sample, n_atom, seed + 2)
    with injected(noise):                       # every other random draw would fail loudly
        batch_out, outputs = model(batch)
    batch_out["atom_array"] = [atom_array]
    scores = get_confidence_scores(batch=batch_out, outputs=outputs, config=config,
                                   compute_per_sample=False)
    result = {
        "x": outputs["atom_positions_predicted"][0].float().numpy(),          # [S, A, 3]
        "plddt": scores["plddt"][0].float().numpy(),                           # [S, A]
        "pae": scores["pae"][0].float().numpy(),                               # [S, N, N]
        "ptm": scores["ptm"][0].float().numpy().reshape(n_sample),
        "iptm": scores["iptm"][0].float().numpy().reshape(n_sample),
    }
    saved = {f"feat.{k}": v for k, v in compact_features(features, atom_array).items()}
    saved.update({f"noise.{k}": v.numpy() for k, v in noise.items()})
    saved.update({f"out.{k}": v for k, v in result.items()})
    np.savez_compressed(out_dir / "reference.npz", **saved)
    return {"tokens": n_tokens, "atoms": int(n_atom), "msa_rows": int(features["msa"].shape[0]),
            "score_keys": sorted(scores), "ptm": result["ptm"].tolist(),
            "iptm": result["iptm"].tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(json.dumps(run(args.input, args.out_dir, args.steps, args.samples, args.seed)))


if __name__ == "__main__":
    main()
