"""Prove foldray reproduces OpenFold3 / Protenix: same random weights, same real input, module by module.

`--reference openfold3` (default) or `--reference protenix`; the steps below name OpenFold3's
files, Protenix's are the same with `protenix` (venv /tmp/foldray-eq-protenix, `tiny-protenix`,
benchmarks/results/equivalence-protenix.json, fixtures protenix_*).

1. featurize a real input from shared/data with foldray (default: Trp-cage + ibuprofen);
2. create a virtual environment (default /tmp/foldray-eq-openfold3) with `openfold3` from
   PyPI, and run reference_openfold3.py in it: OpenFold3 in the tiny config, random weights
   for every parameter, outputs of each module on foldray's features (adapted to its batch);
3. import those weights with foldray.io.import_weights (`tiny-openfold3`), run foldray's
   modules on the reference's inputs (foldray.model.parity) and write max abs / relative errors per
   module to JSON (goal < 1e-4 relative, fp32);
4. with --fixtures DIR, save the reference weights, features, inputs and outputs there for
   the CI test (tests/lib/io/test_import_weights.py), which needs no reference package.

    python benchmarks/equivalence/run_equivalence.py [--input 102m.json] [--venv DIR]
        [--out benchmarks/results/equivalence-openfold3.json] [--fixtures tests/fixtures/equivalence]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"
REFERENCE_PACKAGE = "openfold3==0.5.0"
# Protenix pins torch 2.7 / CUDA-only packages (deepspeed, cuequivariance): install it without
# dependencies and add only what its model code imports.
PROTENIX_PACKAGE = "protenix==2.0.0"
PROTENIX_DEPS = ("ml_collections", "safetensors", "scipy", "rdkit", "biotite==1.4.0", "tqdm",
                 "pandas", "optree", "scikit-learn")
TORCH = "torch==2.13.*"                            # the CPU wheel the machine image carries
GOAL = 1e-4
N_CYCLE = 2


def ensure_venv(venv: Path) -> Path:
    """The reference's own environment (never foldray's): created once, then reused."""
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import openfold3, safetensors"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, TORCH], check=True)
    subprocess.run([*pip, REFERENCE_PACKAGE, "safetensors"], check=True)
    return python


def ensure_protenix_venv(venv: Path) -> Path:
    """Protenix's own environment: the CPU torch wheel, protenix --no-deps, its model's imports."""
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import protenix, safetensors, ml_collections"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, TORCH], check=True)
    subprocess.run([*pip, "--no-deps", PROTENIX_PACKAGE], check=True)
    subprocess.run([*pip, *PROTENIX_DEPS], check=True)
    return python


def compare_protenix(features: dict, ref_dir: Path) -> tuple[dict, dict]:
    import torch

    from foldray.io.import_weights import convert, read_reference_checkpoint
    from foldray.model.alphafold3 import AlphaFold3
    from foldray.model.config import ModelConfig
    from foldray.model.parity import errors, run_foldray

    config = ModelConfig.tiny_protenix()
    state = convert("protenix", read_reference_checkpoint(
        str(ref_dir / "protenix_weights.safetensors")), config)
    model = AlphaFold3(config)
    model.load_state_dict(state)
    ref_inputs = dict(np.load(ref_dir / "protenix_inputs.npz"))
    ref_out = dict(np.load(ref_dir / "protenix_outputs.npz"))
    with torch.no_grad():
        ours = run_foldray(model, features, ref_inputs, ref_out, n_cycle=N_CYCLE)
    return errors(ours, ref_out), {"tensors": len(state)}


def full_mapping_protenix(python: Path, work: Path) -> dict:
    """Import a zero-valued checkpoint with Protenix's full-size names and shapes
    (protenix_base_default_v1.0.0) into `full-protenix`: the mapping covers the released
    architecture tensor for tensor. The distance bins keep their real values."""
    import math

    import torch

    from foldray.io.import_weights import convert
    from foldray.model.config import ModelConfig

    subprocess.run([str(python), str(Path(__file__).with_name("reference_protenix.py")),
                    "-", str(work), "--full-shapes"], check=True)
    shapes = json.loads((work / "protenix_full_shapes.json").read_text())
    base = torch.zeros(max(math.prod(s) for s in shapes.values()))
    ref = {k: base[:math.prod(s)].view(*s) for k, s in shapes.items()}   # one shared buffer
    lower = torch.arange(3.25, 52.0, 1.25)
    ref["confidence_head.lower_bins"] = lower
    ref["confidence_head.upper_bins"] = torch.cat([lower[1:], lower.new_tensor([1e6])])
    state = convert("protenix", ref, ModelConfig.full_protenix())
    return {"protenix_tensors": len(shapes), "foldray_tensors": len(state),
            "foldray_parameters": int(sum(v.numel() for v in state.values()))}


def run_protenix(args: argparse.Namespace) -> None:
    """The Protenix comparison (tiny config; features as for OpenFold3)."""
    started = time.time()
    work = args.work / f"protenix-{Path(args.input).stem}"
    work.mkdir(parents=True, exist_ok=True)
    features = featurize(args.input, work / "features.npz")
    python = ensure_protenix_venv(args.venv or Path("/tmp/foldray-eq-protenix"))
    subprocess.run([str(python), str(Path(__file__).with_name("reference_protenix.py")),
                    str(work / "features.npz"), str(work / "reference"), "--seed", str(args.seed),
                    "--cycles", str(N_CYCLE)], check=True)
    report, extra = compare_protenix(features, work / "reference")
    version = subprocess.run([str(python), "-c", "import importlib.metadata as m; "
                              "print(m.version('protenix'), m.version('torch'))"],
                             capture_output=True, text=True, check=True).stdout.split()
    result = {
        "reference": {"package": "protenix", "version": version[0], "torch": version[1],
                      "architecture": "protenix_base_default_v1.0.0 (tiny sizes)"},
        "foldray_config": "tiny-protenix", "input": args.input,
        "n_token": int(features["restype"].shape[0]), "n_atom": int(features["ref_pos"].shape[0]),
        "n_msa": int(features["msa"].shape[0]), "n_cycle": N_CYCLE, "seed": args.seed,
        "dtype": "float32", "device": "cpu", "machine": platform.machine(), "goal_rel": GOAL,
        "all_within_goal": all(m["rel"] < GOAL for m in report.values()),
        "imported_tensors": extra["tensors"], "seconds": round(time.time() - started, 1),
        "modules": report,
    }
    if args.full_mapping:
        result["full_mapping"] = full_mapping_protenix(python, work)
    out = args.out or ROOT / "benchmarks" / "results" / "equivalence-protenix.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    for name, module in report.items():
        print(f"{name:18s} max_abs {module['max_abs']:.2e}  rel {module['rel']:.2e}")
    print(f"all within {GOAL:g}: {result['all_within_goal']}  -> {out}")
    if args.fixtures:
        args.fixtures.mkdir(parents=True, exist_ok=True)
        ref_dir = work / "reference"
        shutil.copyfile(ref_dir / "protenix_weights.safetensors",
                    args.fixtures / "protenix_weights.safetensors")
        for name in ("protenix_inputs.npz", "protenix_outputs.npz"):
            np.savez_compressed(args.fixtures / name, **dict(np.load(ref_dir / name)))
        np.savez_compressed(args.fixtures / "protenix_features.npz", **features)
        print(f"fixtures -> {args.fixtures}")


def featurize(input_name: str, out: Path) -> dict[str, np.ndarray]:
    from foldray.features.pipeline import featurize_job
    from foldray.inputs.af3_json import parse_af3_json

    path = DATA / "inputs" / input_name
    (job,) = parse_af3_json(path.read_text(), source=str(path))
    features = featurize_job(job, with_targets=False).features
    np.savez(out, **features)
    return features


def compare(features: dict, ref_dir: Path, full: bool = False) -> tuple[dict, dict]:
    import torch

    from foldray.io.import_weights import convert, read_reference_checkpoint
    from foldray.model.alphafold3 import AlphaFold3
    from foldray.model.config import ModelConfig
    from foldray.model.parity import errors, run_foldray

    torch.set_num_threads(max(1, torch.get_num_threads()))
    config = ModelConfig.full_openfold3() if full else ModelConfig.tiny_openfold3()
    state = convert("openfold3", read_reference_checkpoint(
        str(ref_dir / "openfold3_weights.safetensors")), config)
    model = AlphaFold3(config)
    model.load_state_dict(state)
    ref_inputs = dict(np.load(ref_dir / "openfold3_inputs.npz"))
    ref_out = dict(np.load(ref_dir / "openfold3_outputs.npz"))
    ours = run_foldray(model, features, ref_inputs, ref_out, n_cycle=N_CYCLE)
    return errors(ours, ref_out), {"tensors": len(state)}


def full_mapping(python: Path, work: Path) -> dict:
    """Import a zero-valued checkpoint with OpenFold3's full-size names and shapes into
    `full-openfold3`: proves the mapping covers the released architecture tensor for tensor."""
    import math

    import torch

    from foldray.io.import_weights import convert
    from foldray.model.config import ModelConfig

    subprocess.run([str(python), str(Path(__file__).with_name("reference_openfold3.py")),
                    "-", str(work), "--full-shapes"], check=True)
    shapes = json.loads((work / "openfold3_full_shapes.json").read_text())
    base = torch.zeros(max(math.prod(s) for s in shapes.values()))
    ref = {k: base[:math.prod(s)].view(*s) for k, s in shapes.items()}   # one shared buffer
    state = convert("openfold3", ref, ModelConfig.full_openfold3())
    return {"openfold3_tensors": len(shapes), "foldray_tensors": len(state),
            "foldray_parameters": int(sum(v.numel() for v in state.values()))}


def save_fixtures(fixtures: Path, features: dict, ref_dir: Path, input_name: str) -> None:
    fixtures.mkdir(parents=True, exist_ok=True)
    shutil.copy(ref_dir / "openfold3_weights.safetensors", fixtures / "openfold3_weights.safetensors")
    np.savez_compressed(fixtures / "features.npz", **features)
    for name in ("openfold3_inputs.npz", "openfold3_outputs.npz"):
        np.savez_compressed(fixtures / name, **dict(np.load(ref_dir / name)))
    (fixtures / "README.md").write_text(
        "# OpenFold3 equivalence fixtures\n\n"
        f"Written by `benchmarks/equivalence/run_equivalence.py --fixtures` from {REFERENCE_PACKAGE} "
        f"(PyPI, Apache-2.0) in its tiny config (foldray `tiny-openfold3`), random weights "
        f"(seed 0), input `shared/data/inputs/{input_name}` featurized by foldray, {N_CYCLE} "
        "cycles. openfold3_weights.safetensors: the reference state dict as OpenFold3 names it; "
        "features.npz: foldray features; openfold3_inputs.npz: noisy coordinates and noise "
        "levels of the denoising call, and the sampler's pre-drawn randomness (noise.*) for the "
        "fixed-noise full-model run; openfold3_outputs.npz: the reference's module outputs. "
        "No pickles.\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", default="tiny_protein_ligand_smiles.json",
                        help="file in shared/data/inputs (AF3 JSON, no templates)")
    parser.add_argument("--reference", choices=("openfold3", "protenix"), default="openfold3")
    parser.add_argument("--venv", type=Path, default=None,
                        help="reference venv (default /tmp/foldray-eq-<reference>)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/foldray-eq-work"))
    parser.add_argument("--out", type=Path, default=None,
                        help="default benchmarks/results/equivalence-<reference>.json")
    parser.add_argument("--fixtures", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--full", action="store_true",
                        help="compare in the full (released) config instead of the tiny one")
    parser.add_argument("--full-mapping", action="store_true",
                        help="also check the importer against OpenFold3's full-size tensor names/shapes")
    args = parser.parse_args()
    if args.reference == "protenix":
        run_protenix(args)
        return
    args.venv = args.venv or Path("/tmp/foldray-eq-openfold3")
    args.out = args.out or ROOT / "benchmarks" / "results" / "equivalence-openfold3.json"

    started = time.time()
    work = args.work / Path(args.input).stem
    work.mkdir(parents=True, exist_ok=True)
    features = featurize(args.input, work / "features.npz")
    python = ensure_venv(args.venv)
    subprocess.run([str(python), str(Path(__file__).with_name("reference_openfold3.py")),
                    str(work / "features.npz"), str(work / "reference"), "--seed", str(args.seed),
                    "--cycles", str(N_CYCLE), *(["--full"] if args.full else [])], check=True)
    report, extra = compare(features, work / "reference", full=args.full)
    version = subprocess.run([str(python), "-c", "import importlib.metadata as m; "
                              "print(m.version('openfold3'), m.version('torch'))"],
                             capture_output=True, text=True, check=True).stdout.split()
    result = {
        "reference": {"package": "openfold3", "version": version[0], "torch": version[1]},
        "foldray_config": "full-openfold3" if args.full else "tiny-openfold3", "input": args.input,
        "n_token": int(features["restype"].shape[0]), "n_atom": int(features["ref_pos"].shape[0]),
        "n_msa": int(features["msa"].shape[0]), "n_cycle": N_CYCLE, "seed": args.seed,
        "dtype": "float32", "device": "cpu", "machine": platform.machine(),
        "goal_rel": GOAL, "all_within_goal": all(m["rel"] < GOAL for m in report.values()),
        "imported_tensors": extra["tensors"], "seconds": round(time.time() - started, 1),
        "modules": report,
    }
    if args.full_mapping:
        result["full_mapping"] = full_mapping(python, work)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    for name, module in report.items():
        print(f"{name:18s} max_abs {module['max_abs']:.2e}  rel {module['rel']:.2e}")
    print(f"all within {GOAL:g}: {result['all_within_goal']}  -> {args.out}")
    if args.fixtures and not args.full:
        save_fixtures(args.fixtures, features, work / "reference", args.input)
        print(f"fixtures -> {args.fixtures}")
    if not result["all_within_goal"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
