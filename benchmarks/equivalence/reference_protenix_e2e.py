"""Protenix's full inference path on an AF3 JSON input, random weights, injected sampler noise.

Runs INSIDE the reference virtual environment (protenix 2.0.0 installed --no-deps, no foldray):
1. a CCD subset (the input's components and every standard residue) and its RDKit cache are
   built offline by protenix_ccd.py (the feature-parity harness's builder: the CCD copy inside
   the biotite wheel, molecules as Protenix's scripts/gen_ccd_cache.py + pdbeccdutils build
   them, fixed ETKDG seed) under PROTENIX_ROOT_DIR. Nothing is downloaded;
2. the AF3 JSON becomes Protenix's JSON (proteinChain / dnaSequence / rnaSequence / ligand
   "CCD_..." or SMILES, counts, unpairedMsaPath / pairedMsaPath, modifications) and goes through
   its own `InferenceDataset.process_one` (msa on, templates off, no ESM: its inference defaults
   for `protenix_base_default_v1.0.0`);
3. the model is Protenix built from its own config code at the sizes of `tiny-protenix`
   (reference_protenix.build_config), random weights (reference_protenix.randomize), run by its
   own `forward(mode="inference")` with 1 cycle, a few steps, 2 samples and
   mc_dropout_apply_rate 0 (its inference runner's default 0.4 applies dropout to the recycled
   pair at random, which no comparison can reproduce), scored by its own
   compute_full_data_and_summary. Every sampler draw (initial positions, each step's rotation
   (scipy) and translation, each step's noise) is replaced by tensors drawn up front.

Writes OUT_DIR/checkpoint.pt (a torch zip of the state dict, as Protenix releases its
checkpoints: {"model": state_dict}) and OUT_DIR/reference.npz (features, noise, outputs; the
layout of reference_openfold3_e2e.py).

Usage: python reference_protenix_e2e.py INPUT.json OUT_DIR [--steps 4] [--samples 2]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

import numpy as np

# protenix_ccd.py's builder (the feature-parity harness's), in its own root
CCD_ROOT = Path(os.environ.get("FOLDRAY_E2E_PROTENIX_ROOT", "/tmp/foldray-e2e/protenix-ccd"))
os.environ["PROTENIX_ROOT_DIR"] = str(CCD_ROOT)        # read by protenix's configs at import
os.environ.setdefault("LAYERNORM_TYPE", "torch")

import torch  # noqa: E402
from protenix_ccd import ensure_ccd  # noqa: E402  (one CCD builder for both Protenix harnesses)
from reference_openfold3 import fixed_noise  # noqa: E402  (same draws layout; no openfold3 import)

# ------------------------------------------------------------------------ input

def to_protenix_json(doc: dict, base: Path) -> tuple[dict, set[str]]:
    """AF3 JSON -> one Protenix job; the CCD codes it names."""
    kinds = {"protein": "proteinChain", "dna": "dnaSequence", "rna": "rnaSequence"}
    sequences, codes = [], set()
    for entry in doc["sequences"]:
        (kind, body), = entry.items()
        count = len(body["id"]) if isinstance(body["id"], list) else 1
        if kind == "ligand":
            if "smiles" in body:
                ligand = body["smiles"]
            else:
                codes.update(body["ccdCodes"])
                ligand = "CCD_" + "_".join(body["ccdCodes"])
            sequences.append({"ligand": {"ligand": ligand, "count": count}})
            continue
        chain = {"sequence": body["sequence"], "count": count}
        for key in ("unpairedMsaPath", "pairedMsaPath"):
            if body.get(key):
                path = Path(body[key])
                chain[key] = str(path if path.is_absolute() else (base / path).resolve())
        mods = []
        for mod in body.get("modifications", []):
            if kind == "protein":
                mods.append({"ptmType": "CCD_" + mod["ptmType"], "ptmPosition": mod["ptmPosition"]})
            else:
                mods.append({"modificationType": "CCD_" + mod["modificationType"],
                             "basePosition": mod["basePosition"]})
            codes.add(mods[-1].get("ptmType", mods[-1].get("modificationType"))[4:])
        if mods:
            chain["modifications"] = mods
        sequences.append({kinds[kind]: chain})
    if doc.get("bondedAtomPairs"):
        raise NotImplementedError("bondedAtomPairs: not translated for Protenix here")
    return {"name": doc.get("name", "job"), "sequences": sequences}, codes


def _stub_esm() -> None:
    """Protenix's data package imports fair-esm at module level; ESM is off in this model
    (no ESM input), so an empty stand-in module satisfies the import without installing it."""
    import types

    if "esm" not in sys.modules:
        try:
            import esm  # noqa: F401
        except ImportError:
            stub = types.ModuleType("esm")
            stub.FastaBatchedDataset = stub.pretrained = None
            sys.modules["esm"] = stub


def featurize(job: dict, config) -> tuple[dict, object]:
    _stub_esm()
    from protenix.data.inference.infer_dataloader import InferenceDataset

    dataset = InferenceDataset.__new__(InferenceDataset)
    dataset.configs = config
    dataset.use_msa = config.use_msa
    dataset.msa_pair_as_unpair = config.get("msa_pair_as_unpair", True)
    dataset.use_rna_msa = config.get("use_rna_msa", True)
    dataset.use_template = False
    dataset.online_template_featurizer = None
    dataset.esm_enable = False
    data, atom_array, _ = dataset.process_one(job)
    return data["input_feature_dict"], atom_array


# ------------------------------------------------------------------------ injected draws

@contextlib.contextmanager
def injected(noise: dict[str, torch.Tensor]):
    """Protenix's sampler with its draws replaced, in the order it makes them: torch.randn (x0),
    then per step uniform_random_rotation (scipy), torch.randn (translation), torch.randn
    (noise). Tensors are stored in foldray's layout (a leading batch axis) and reshaped here."""
    import protenix.model.utils as utils

    queue = [noise["x0"]]
    for k in range(noise["rot"].shape[0]):
        queue += [noise["trans"][k], noise["eps"][k]]
    rotations = list(noise["rot"])

    def randn(*args, size=None, **kwargs):
        shape = tuple(size if size is not None else (args[0] if len(args) == 1 else args))
        value = queue.pop(0)
        if value.numel() != int(np.prod(shape)):
            raise AssertionError(f"injected noise {tuple(value.shape)} asked as {shape}")
        return value.reshape(shape).clone()

    def rotation(N_sample: int = 1):
        value = rotations.pop(0)
        return value.reshape(N_sample, 3, 3).clone()

    saved = torch.randn, utils.uniform_random_rotation
    torch.randn, utils.uniform_random_rotation = randn, rotation
    try:
        yield
    finally:
        torch.randn, utils.uniform_random_rotation = saved
    if queue or rotations:
        raise AssertionError(f"{len(queue) + len(rotations)} injected draws were not used")


@contextlib.contextmanager
def exact_distances(enabled: bool):
    """Diagnostic (--exact-cdist): torch.cdist without its matrix-product expansion, whose
    ~1e-5 Å rounding (used for > 25 points) can flip the confidence head's one-hot distance
    bin of a pair lying that close to a bin edge; foldray computes distances exactly."""
    if not enabled:
        yield
        return
    from reference_protenix import exact_cdist as exact

    inner, torch.cdist = torch.cdist, exact
    try:
        yield
    finally:
        torch.cdist = inner


@contextlib.contextmanager
def recorded_msa_rows():
    """Protenix's MSA module draws, every cycle and also at inference, a random number of MSA
    rows in random order (protenix.model.utils.sample_indices: size uniform in [1, n]); the
    rows it drew are recorded (not replaced), so foldray can be given the same MSA."""
    import protenix.model.utils as utils

    drawn: list[torch.Tensor] = []
    inner = utils.sample_indices

    def sample_indices(*args, **kwargs):
        indices = inner(*args, **kwargs)
        drawn.append(indices.clone())
        return indices

    utils.sample_indices = sample_indices
    try:
        yield drawn
    finally:
        utils.sample_indices = inner


# ------------------------------------------------------------------------ run

COMPACT = {"restype": np.int8, "msa": None, "ref_element": np.int16, "ref_atom_name_chars": np.int8}


def compact_features(f: dict, atom_array) -> dict[str, np.ndarray]:
    out = {}
    for key, value in f.items():
        if not isinstance(value, torch.Tensor) or key.startswith("template_"):
            continue
        v = value.numpy()
        if key in ("restype", "ref_element", "ref_atom_name_chars"):
            v = v.argmax(-1).astype(COMPACT[key])
        elif key in ("msa", "has_deletion", "token_bonds"):
            v = v.astype(np.int8)
        out[key] = v
    out["atom_res_name"] = np.asarray(atom_array.res_name).astype("<U5")
    return out


@torch.no_grad()
def run(input_path: Path, out_dir: Path, n_step: int, n_sample: int, seed: int,
        debug: bool = False, exact_cdist: bool = False) -> dict:
    from reference_protenix import build_config, randomize

    doc = json.loads(input_path.read_text())
    job, codes = to_protenix_json(doc, input_path.resolve().parent)
    ensure_ccd(codes, CCD_ROOT)
    config = build_config(tiny=True)
    config.model.N_cycle = 1
    config.sample_diffusion.N_step = n_step
    config.sample_diffusion.N_sample = n_sample
    config.use_template = False
    torch.manual_seed(seed)
    np.random.seed(seed)
    features, atom_array = featurize(job, config)

    from protenix.model.protenix import Protenix

    torch.manual_seed(seed)
    model = Protenix(config).eval()
    randomize(model, seed)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"model": state}, out_dir / "checkpoint.pt")

    saved_features = compact_features(features, atom_array)
    n_atom = int(features["atom_to_token_idx"].shape[0])
    noise = fixed_noise(n_step, n_sample, n_atom, seed + 2)
    trunk = {}
    if debug:                                   # the trunk's outputs, for locating a difference
        inner = model.get_pairformer_output

        def capture(*args, **kwargs):
            out = inner(*args, **kwargs)
            trunk.update({"s_inputs": out[0], "s": out[1], "z": out[2]})
            return out
        model.get_pairformer_output = capture
        for name in ("relative_position_encoding", "linear_no_bias_token_bond", "msa_module",
                     "template_embedder", "pairformer_stack"):
            getattr(model, name).register_forward_hook(
                lambda mod, args, out, name=name: trunk.update(
                    {name: out[1] if isinstance(out, tuple) else out}))
    with injected(noise), recorded_msa_rows() as msa_rows, exact_distances(exact_cdist):
        pred, _, _ = model(input_feature_dict=dict(features), label_full_dict=None, label_dict=None,
                           mode="inference", mc_dropout_apply_rate=0.0)
    summary, full = pred["summary_confidence"], pred["full_data"]
    result = {
        "x": pred["coordinate"].float().numpy().reshape(n_sample, n_atom, 3),
        "plddt": 100.0 * torch.stack([d["atom_plddt"] for d in full]).float().numpy().reshape(
            n_sample, n_atom),
        "pae": torch.stack([d["token_pair_pae"] for d in full]).float().numpy().reshape(
            n_sample, *full[0]["token_pair_pae"].shape[-2:]),
        "ptm": torch.stack([torch.as_tensor(s["ptm"]) for s in summary]).float().numpy().reshape(n_sample),
        "iptm": torch.stack([torch.as_tensor(s["iptm"]) for s in summary]).float().numpy().reshape(n_sample),
    }
    if len(msa_rows) != 1:
        raise AssertionError(f"expected one MSA subsample (1 cycle), got {len(msa_rows)}")
    saved_features["msa_sample"] = msa_rows[0].numpy()
    saved = {f"feat.{k}": v for k, v in saved_features.items()}
    saved.update({f"noise.{k}": v.numpy() for k, v in noise.items()})
    saved.update({f"out.{k}": v for k, v in result.items()})
    saved.update({f"debug.{k}": v.float().numpy() for k, v in trunk.items() if isinstance(v, torch.Tensor)})
    np.savez_compressed(out_dir / "reference.npz", **saved)
    return {"tokens": int(features["restype"].shape[0]), "atoms": n_atom,
            "msa_rows": int(features["msa"].shape[0]), "ptm": result["ptm"].tolist(),
            "iptm": result["iptm"].tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--debug", action="store_true", help="also save the trunk outputs (debug.*)")
    parser.add_argument("--exact-cdist", action="store_true",
                        help="diagnostic: exact pair distances in its confidence head")
    args = parser.parse_args()
    print(json.dumps(run(args.input, args.out_dir, args.steps, args.samples, args.seed, args.debug,
                         args.exact_cdist)))


if __name__ == "__main__":
    main()
