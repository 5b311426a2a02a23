"""End to end: a reference's full inference vs foldray's on the same AF3 JSON, same random draws.

For each reference (openfold3 0.5.0 in /tmp/ref-of3, protenix 2.0.0 in /tmp/ref-ptx; see
run_equivalence.py for how such a venv is made) and each input:

1. reference_<reference>_e2e.py runs in the reference's venv: its own featurizer, its own model
   (built from its config code at CPU-small sizes, random weights, saved as its checkpoints
   are), 1 cycle, N_STEP sampler steps, N_SAMPLE samples, every sampler draw (initial
   positions, each step's Algorithm 19 rotation and translation, each step's noise) injected
   from tensors drawn up front; its own confidence code scores the samples;
2. foldray imports that checkpoint (`foldray import-weights`' import_checkpoint: config read from
   the checkpoint) and predicts with the same injected draws (modules.injected), fp32 on CPU,
   through Predictor (collate, predict, AF3 metrics), in two modes:
   - `reference_features`: foldray's model fed the reference's own features, converted
     (foldray.features.reference_features). Isolates model + sampler + confidence: must meet the target;
   - `foldray_features`: foldray's own featurizer on the JSON, with the imported checkpoint's
     featurization switches (FeaturizationConfig in its config). Only the reference's random
     draws go in: its generated conformers (ref_pos, atom by atom; ETKDG differs between
     RDKit builds and seeds) and Protenix's inference MSA row draw. Atoms and tokens are
     matched by (chain, residue, atom name); every model input that still differs is listed
     (feature_differences) and the outputs must meet the same target;
3. compares coordinates (RMS Å), pLDDT, PAE (max abs over max |ref|), pTM / ipTM (relative),
   against TARGET_RMS and TARGET_REL; writes benchmarks/results/end_to_end-<reference>.json and,
   with --fixtures, tests/fixtures/end_to_end/ for tests/lib/test_end_to_end_parity.py.

    python benchmarks/equivalence/end_to_end.py [--reference openfold3 protenix]
        [--inputs 102m tiny_protein_dna] [--fixtures] [--reuse]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from foldray.model.end_to_end_parity import (  # shared with the CI replay test
    TARGET_REL,
    TARGET_RMS,
    compare,
    foldray_features_case,
    noise_of,
    predict,
    reference_outputs,
)

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))                      # `benchmarks.equivalence.*`
DATA = ROOT.parent / "shared" / "data"
VENVS = {"openfold3": Path("/tmp/ref-of3"), "protenix": Path("/tmp/ref-ptx")}
INPUTS = ("102m", "tiny_protein_dna")              # protein-ligand with an MSA; protein + 2 DNA
N_STEP, N_SAMPLE, N_CYCLE, SEED = 4, 2, 1, 1
# Protenix's confidence head measures pair distances with torch.cdist, whose matrix-product
# expansion (> 25 points) rounds them by ~1e-5 Å: a pair that close to a one-hot bin edge flips
# bin, which foldray's exact distances cannot reproduce (results JSON: reference_numerics).
REFERENCE_ARGS = {"openfold3": (), "protenix": ("--exact-cdist",)}
FIXTURES = ROOT / "tests" / "fixtures" / "end_to_end"
# The module-equivalence fixture holds the very same random weights (same config code, seed):
# the end-to-end fixtures reuse it rather than store a second copy.
WEIGHT_FIXTURES = {"openfold3": ROOT / "tests/fixtures/equivalence/openfold3_weights.safetensors",
                   "protenix": ROOT / "tests/fixtures/equivalence/protenix_weights.safetensors"}


# ------------------------------------------------------------------------ foldray's side

def load_imported(reference: str, checkpoint: Path, out: Path):
    """`foldray import-weights --from <reference>` (config read from the checkpoint), then
    Predictor.load, as a user does."""
    from foldray.io.import_weights import import_checkpoint
    from foldray.predictor import Predictor

    report = import_checkpoint(reference, str(checkpoint), str(out))
    return Predictor.load(str(out)), report


# ------------------------------------------------------------------------ foldray's featurizer

def foldray_features_mode(predictor, input_name: str, ref_features: dict, saved: Mapping) -> dict:
    """foldray's own featurizer (the imported checkpoint's switches) on the JSON, with only the
    reference's conformers and sampler draws put in (foldray.model.end_to_end_parity)."""
    os.environ.setdefault("FOLDRAY_INPUT_PATH_ROOTS", str(DATA))
    return foldray_features_case(predictor, str(DATA / "inputs" / f"{input_name}.json"), ref_features, saved)


# ------------------------------------------------------------------------ driver

def run_reference(reference: str, venv: Path, input_name: str, work: Path, reuse: bool = False) -> dict:
    if reuse and (work / "reference.npz").exists() and (work / "checkpoint.pt").exists():
        return {"reused": str(work)}
    script = Path(__file__).with_name(f"reference_{reference}_e2e.py")
    command = [str(venv / "bin" / "python"), str(script), str(DATA / "inputs" / f"{input_name}.json"),
               str(work), "--steps", str(N_STEP), "--samples", str(N_SAMPLE), *REFERENCE_ARGS[reference]]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def same_weights(checkpoint_state: Mapping[str, torch.Tensor], fixture: Path) -> bool:
    from foldray.io.import_weights import read_reference_checkpoint

    if not fixture.exists():
        return False
    committed = read_reference_checkpoint(str(fixture))
    return set(committed) == set(checkpoint_state) and all(
        torch.equal(committed[k].float(), checkpoint_state[k].float()) for k in committed)


def save_fixture(reference: str, input_name: str, saved: Mapping[str, np.ndarray]) -> Path:
    """The reference's draws, outputs and the features its converter reads (compressed)."""
    from foldray.features.reference_features import FIXTURE_FEATURES

    target = FIXTURES / f"{reference}-{input_name}.npz"
    target.parent.mkdir(parents=True, exist_ok=True)
    keep = {f"feat.{k}" for k in FIXTURE_FEATURES[reference]}
    np.savez_compressed(target, **{k: v for k, v in saved.items()
                                   if k in keep or k.startswith(("noise.", "out."))})
    return target


def run(reference: str, inputs: list[str], venv: Path, work: Path, fixtures: bool,
        reuse: bool = False) -> dict:
    from foldray.features.reference_features import CONVERTERS
    from foldray.io.import_weights import read_reference_checkpoint

    torch.set_num_threads(max(1, torch.get_num_threads()))
    results: dict = {}
    weights_note = None
    for name in inputs:
        start = time.perf_counter()
        run_dir = work / reference / name
        info = run_reference(reference, venv, name, run_dir, reuse)
        ref_seconds = time.perf_counter() - start
        predictor, report = load_imported(reference, run_dir / "checkpoint.pt",
                                          run_dir / "foldray.safetensors")
        saved = dict(np.load(run_dir / "reference.npz"))
        features = CONVERTERS[reference](saved)
        mode_b = compare(predict(predictor, features, noise_of(saved)), reference_outputs(saved))
        try:
            mode_a = foldray_features_mode(predictor, name, features, saved)
        except Exception as err:   # noqa: BLE001 - reported, the other mode still stands
            mode_a = {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"}
        if weights_note is None:
            weights_note = same_weights(read_reference_checkpoint(str(run_dir / "checkpoint.pt")),
                                        WEIGHT_FIXTURES[reference])
        results[name] = {"reference_run": info,
                         "import": {k: report[k] for k in ("config", "sizes", "tensors")},
                         "reference_features": mode_b, "foldray_features": mode_a,
                         "reference_seconds": round(ref_seconds, 1),
                         "seconds": round(time.perf_counter() - start, 1)}
        print(f"{reference} {name}: reference features {mode_b}\n  foldray features {mode_a}", flush=True)
        if fixtures:
            if not weights_note:
                raise SystemExit(f"{reference}: checkpoint differs from {WEIGHT_FIXTURES[reference]}; "
                                 "refresh the module-equivalence fixtures first")
            save_fixture(reference, name, saved)
    return {"reference": reference, "reference_numerics": " ".join(REFERENCE_ARGS[reference]) or "as shipped",
            "n_cycle": N_CYCLE, "n_step": N_STEP, "n_sample": N_SAMPLE,
            "dtype": "float32", "device": "cpu", "target": {"coords_rms_A": TARGET_RMS, "rel": TARGET_REL},
            "weights_equal_module_fixture": weights_note, "inputs": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", nargs="*", default=["openfold3", "protenix"], choices=sorted(VENVS))
    parser.add_argument("--inputs", nargs="*", default=list(INPUTS))
    parser.add_argument("--work", type=Path, default=Path("/tmp/foldray-e2e"))
    parser.add_argument("--fixtures", action="store_true", help=f"write {FIXTURES.relative_to(ROOT)}")
    parser.add_argument("--reuse", action="store_true",
                        help="reuse a reference run already in --work (reference.npz, checkpoint.pt) "
                             "instead of rerunning the reference (default: rerun)")
    args = parser.parse_args()
    for reference in args.reference:
        result = run(reference, args.inputs, VENVS[reference], args.work, args.fixtures, args.reuse)
        out = ROOT / "benchmarks" / "results" / f"end_to_end-{reference}.json"
        out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
