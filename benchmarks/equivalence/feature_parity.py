"""Feature parity: a reference's own inference featurizer vs foldray's, on the same AF3 JSON inputs.

For each input, runs reference_features_<reference>.py inside the reference's virtual environment
(openfold3 0.5.0: /tmp/ref-of3, protenix 2.0.0: /tmp/ref-ptx by default; see run_equivalence.py
for how such a venv is made; Protenix's CCD files are built offline by protenix_ccd.py),
featurizes the same job with foldray under that reference's featurization switches
(FeaturizationConfig.<reference>(), what an imported checkpoint carries), normalises both
(foldray.features.parity) and compares name by name. Writes
benchmarks/results/feature_parity-<reference>.json; with --fixtures, saves the reference's
normalised features (MSA rows capped at --fixture-msa-rows) for the CI tests
tests/lib/features/test_feature_parity.py and test_feature_parity_protenix.py.

    python benchmarks/equivalence/feature_parity.py [--reference openfold3|protenix] [--venv DIR]
        [--inputs 102m 2q2k 4zey] [--fixtures tests/fixtures/feature_parity]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"
INPUTS = DATA / "inputs"
DEFAULT_VENV = {"openfold3": Path("/tmp/ref-of3"), "protenix": Path("/tmp/ref-ptx")}
FIXTURE_MSA_ROWS = 64
SEED = 1


def foldray_features(path: Path, max_msa_rows: int | None = None,
                     reference: str | None = None) -> dict[str, np.ndarray]:
    """foldray's normalised features of the one job in `path` (inference: no targets, no crop),
    under `reference`'s featurization switches (AlphaFold 3's when None)."""
    os.environ.setdefault("FOLDRAY_INPUT_PATH_ROOTS", str(DATA))
    from foldray.errors import InputError
    from foldray.features.config import FeaturizationConfig
    from foldray.features.parity import normalise_foldray
    from foldray.features.pipeline import featurize_job
    from foldray.inputs.load import read_jobs

    (job,) = read_jobs(str(path))
    if isinstance(job, InputError):
        raise job
    featurization = getattr(FeaturizationConfig, reference)() if reference else FeaturizationConfig()
    featurized = featurize_job(job, seed=SEED, with_targets=False, featurization=featurization)
    return normalise_foldray(featurized.features, featurized.tokens.is_standard, max_msa_rows)


def reference_features(reference: str, venv: Path, path: Path, out: Path,
                       max_msa_rows: int | None = None) -> dict[str, np.ndarray]:
    script = Path(__file__).with_name(f"reference_features_{reference}.py")
    command = [str(venv / "bin" / "python"), str(script), str(path), str(out)]
    if max_msa_rows is not None:
        command += ["--max-msa-rows", str(max_msa_rows)]
    subprocess.run(command, check=True, capture_output=True, text=True)
    return dict(np.load(out))


def main() -> None:
    from foldray.features.parity import compare, differing

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", default="openfold3", choices=sorted(DEFAULT_VENV))
    parser.add_argument("--venv", type=Path, default=None)
    parser.add_argument("--inputs", nargs="*", default=None,
                        help="input names in shared/data/inputs (default: all)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--fixtures", type=Path, default=None)
    parser.add_argument("--fixture-msa-rows", type=int, default=FIXTURE_MSA_ROWS)
    args = parser.parse_args()
    venv = args.venv or DEFAULT_VENV[args.reference]
    names = args.inputs or sorted(p.stem for p in INPUTS.glob("*.json"))
    out = args.out or ROOT / "benchmarks" / "results" / f"feature_parity-{args.reference}.json"
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            path = INPUTS / f"{name}.json"
            start = time.perf_counter()
            try:
                ref = reference_features(args.reference, venv, path, Path(tmp) / f"{name}.npz")
                ours = foldray_features(path, reference=args.reference)
            except subprocess.CalledProcessError as err:
                tail = (err.stderr or "").strip().splitlines()[-1:] or ["?"]
                results[name] = {"error": f"reference failed: {tail[0][:300]}"}
                print(f"{name}: reference failed", flush=True)
                continue
            report = compare(ref, ours)
            results[name] = {"differ": sorted(differing(report)), "features": report,
                             "seconds": round(time.perf_counter() - start, 1)}
            print(f"{name}: differ {results[name]['differ']}", flush=True)
            if args.fixtures is not None:
                target = args.fixtures / args.reference / f"{name}.npz"
                target.parent.mkdir(parents=True, exist_ok=True)
                rows = args.fixture_msa_rows
                capped = {k: (v[:rows] if k in ("msa", "has_deletion", "deletion_value") else v)
                          for k, v in ref.items()}
                np.savez_compressed(target, **capped)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"reference": args.reference, "seed": SEED, "inputs": results},
                              indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
