"""How far one GPU goes: forward seconds and peak memory from 256 tokens up, kernels on and off.

One forward = trunk (1 recycle) + `--steps` diffusion steps on `--samples` samples, full
config with random weights, on a synthetic protein (one token per residue, ~8 atoms per
token). Each token count runs with `RuntimeConfig(kernels="torch")` and `kernels="triton"`;
a mode stops growing at its first out-of-memory, and the sweep stops when the time budget
would be overrun (the next case is estimated from the last one, cost ~ N^3). Peak memory is
torch.cuda.max_memory_allocated over the forward. Writes
benchmarks/results/gpu_scaling-<gpu>.json (one row per case, "oom" rows included).

    python benchmarks/gpu_scaling.py [--budget-s 480] [--tokens 256 512 768 1024 1536 2048]
                                     [--precision bf16|fp32] [--steps 4] [--samples 5]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from model_forward import protein_job  # noqa: E402
from provenance import git_sha, gpu_name  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODES = ("torch", "triton")


def run_case(model, n_token: int, mode: str, args: argparse.Namespace) -> dict:
    """One timed forward (after a warm-up at this size, which also compiles the kernels)."""
    import torch

    from foldray.features.batch import collate
    from foldray.model.config import RuntimeConfig

    features = _features(n_token, args.features_dir)
    batch = {k: v.cuda() for k, v in collate([features], token_buckets=None, atom_buckets=None).items()}
    reference = mode == "fp32-reference"
    runtime = RuntimeConfig(kernels="torch" if reference else mode,
                            precision="fp32" if reference else args.precision)
    row = {"name": f"forward-kernels-{mode}", "kernels": mode, "n_token": n_token,
           "n_atom": int(features["ref_pos"].shape[0]), "n_sample": args.samples, "n_step": args.steps}
    seconds: dict[str, float] = {}
    outputs: dict[str, torch.Tensor] = {}

    def forward() -> None:
        autocast = args.precision == "bf16" and not reference
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            torch.cuda.synchronize()
            started = time.perf_counter()
            trunk = model.run_trunk(batch, n_cycle=1, runtime=runtime)
            torch.cuda.synchronize()
            seconds["trunk"] = time.perf_counter() - started
            started = time.perf_counter()
            x = model.sample(batch, trunk, n_sample=args.samples, n_step=args.steps, runtime=runtime,
                             generator=torch.Generator(device="cuda").manual_seed(0))
            torch.cuda.synchronize()
            seconds["diffusion"] = time.perf_counter() - started
            outputs.update(s=trunk.s.float().cpu(), z=trunk.z.float().cpu(), x=x.float().cpu())

    try:
        torch.cuda.empty_cache()
        if args.warmup and not reference:
            forward()
        torch.cuda.reset_peak_memory_stats()
        forward()
        row.update(seconds=sum(seconds.values()), seconds_by_part=dict(seconds),
                   peak_mem_bytes=torch.cuda.max_memory_allocated(), status="ok")
        if mode == "fp32-reference":
            _REFERENCE[n_token] = outputs
            return row
        if n_token in _REFERENCE:            # how far bf16 (either kernels) is from fp32 torch
            row["vs_fp32_torch"] = _distance(outputs, _REFERENCE[n_token])
        if n_token in _OUTPUTS:              # the other mode ran this size: how far apart are they
            row["vs_other_mode"] = _distance(outputs, _OUTPUTS.pop(n_token))
        else:
            _OUTPUTS[n_token] = outputs
    except torch.cuda.OutOfMemoryError:
        row.update(seconds=None, peak_mem_bytes=None, status="oom")
    finally:
        torch.cuda.empty_cache()
    return row


_OUTPUTS: dict[int, dict] = {}      # n_token -> the first mode's trunk/sample outputs
_REFERENCE: dict[int, dict] = {}    # n_token -> fp32 torch outputs (--reference-fp32)


def _distance(got: dict, ref: dict) -> dict:
    """Max and RMS relative differences of s and z, and the coordinates' RMS distance (Å)."""
    out = {}
    for name in ("s", "z"):
        diff = got[name] - ref[name]
        out[f"{name}_max_rel"] = (diff.abs().max() / ref[name].abs().max().clamp_min(1e-6)).item()
        out[f"{name}_rms_rel"] = (diff.norm() / ref[name].norm().clamp_min(1e-6)).item()
    out["x_rms_angstrom"] = (got["x"] - ref["x"]).square().sum(-1).mean().sqrt().item()
    return out


def _features(n_token: int, features_dir: Path | None) -> dict:
    """Featurized once on a CPU machine (`--save-features`) where the GPU image lacks RDKit/gemmi."""
    import numpy as np

    stored = features_dir / f"protein_{n_token}.npz" if features_dir else None
    if stored is not None and stored.exists():
        with np.load(stored) as data:
            return {name: data[name] for name in data.files}
    from foldray.features.pipeline import featurize_job

    features = featurize_job(protein_job(n_token)).features
    if features_dir is not None:
        features_dir.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(stored, **features)
    return features


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, nargs="+",
                        default=[256, 384, 512, 768, 1024, 1280, 1536, 2048, 2560, 3072])
    parser.add_argument("--budget-s", type=float, default=480.0,
                        help="stop starting new cases once the estimate would pass this")
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--config", default="full")
    parser.add_argument("--no-warmup", dest="warmup", action="store_false",
                        help="time the first call (includes Triton compilation)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--reference-fp32", action="store_true",
                        help="per size, also an fp32 torch forward; rows report their distance to it")
    parser.add_argument("--features-dir", type=Path, default=None,
                        help="load protein_<N>.npz features from here (written here when missing)")
    parser.add_argument("--save-features", action="store_true",
                        help="only featurize every --tokens size into --features-dir (no GPU needed)")
    args = parser.parse_args(argv)

    import torch

    if args.save_features:
        for n_token in args.tokens:
            _features(n_token, args.features_dir)
        return 0

    if not torch.cuda.is_available():
        print("benchmarks/gpu_scaling.py: no CUDA device here; this benchmark needs a GPU "
              "(use benchmarks/kernels.py --interpret for a CPU check of the kernels).")
        return 0
    from foldray.model.alphafold3 import AlphaFold3
    from foldray.model.config import NAMED_CONFIGS  # not foldray.predictor: it imports gemmi/RDKit

    started = time.monotonic()
    torch.manual_seed(0)
    model = AlphaFold3(NAMED_CONFIGS[args.config]()).cuda().eval()
    device = gpu_name()
    out = args.out or ROOT / "benchmarks" / "results" / f"gpu_scaling-{device}.json"
    rows: list[dict] = []
    alive = set(args.modes)
    last: dict[str, tuple[int, float]] = {}         # mode -> (n_token, wall seconds of its case)
    for n_token in sorted(args.tokens):
        if args.reference_fp32:
            run_case(model, n_token, "fp32-reference", args)
        for mode in args.modes:
            if mode not in alive:
                continue
            if mode in last:                          # warm-up + timed call, cost ~ N^3
                n_prev, s_prev = last[mode]
                estimate = s_prev * (n_token / n_prev) ** 3
                if time.monotonic() - started + estimate > args.budget_s:
                    print(f"skip {mode} N={n_token}: ~{estimate:.0f} s would pass the budget", flush=True)
                    alive.discard(mode)
                    continue
            case_started = time.monotonic()
            row = run_case(model, n_token, mode, args)
            last[mode] = (n_token, time.monotonic() - case_started)
            rows.append(row)
            print(json.dumps(row), flush=True)
            if row["status"] == "oom":
                alive.discard(mode)
            _write(out, device, args, rows)
        if not alive:
            break
    _write(out, device, args, rows)
    print(f"wrote {out}")
    return 0


def _write(out: Path, device: str, args: argparse.Namespace, rows: list[dict]) -> None:
    """Rewritten after every case, so a run cut short still leaves its rows."""
    import torch

    largest = {m: max((r["n_token"] for r in rows if r["kernels"] == m and r["status"] == "ok"), default=None)
               for m in MODES}
    result = {"name": "gpu_scaling", "device": device, "torch": torch.__version__,
              "git_sha": git_sha(short=False),
              "config": {"model": args.config, "precision": args.precision, "n_step": args.steps,
                         "n_sample": args.samples, "n_cycle": 1},
              "max_n_token": largest, "rows": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
