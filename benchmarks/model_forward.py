"""Model forward cost: tiny and full configs at 64 / 128 / 256 tokens, side by side.

One "forward" = trunk (1 recycle) + one diffusion-module call on `--samples` samples +
the confidence head, on random features of a real-sized protein (one token per residue,
~8 atoms per token), fp32 on the chosen device. Peak memory is the process's max RSS on
CPU (measured in a fresh subprocess per case so cases don't hide each other) and
torch.cuda.max_memory_allocated on GPU. Writes benchmarks/results/model_forward-<device>.json.

    python benchmarks/model_forward.py [--device cpu] [--tokens 64 128 256] [--configs tiny full]
"""

from __future__ import annotations

import argparse
import json
import platform as stdlib_platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def protein_job(n_token: int):
    from foldray.inputs.af3_json import parse_af3_json

    base = "NLYIQWLKDGGPSSGRPPPSMKTAYIAKQRQISFVKSHFSRQ"
    sequence = (base * (n_token // len(base) + 1))[:n_token]
    text = json.dumps({"dialect": "alphafold3", "version": 2, "name": f"bench{n_token}",
                       "modelSeeds": [1], "sequences": [{"protein": {"id": "A",
                                                                     "sequence": sequence}}]})
    (job,) = parse_af3_json(text)
    return job


def run_case(config_name: str, n_token: int, device: str, n_sample: int) -> dict:
    import torch

    from foldray.features.batch import collate
    from foldray.features.pipeline import featurize_job
    from foldray.model.alphafold3 import AlphaFold3
    from foldray.predictor import named_config

    torch.manual_seed(0)
    features = featurize_job(protein_job(n_token)).features
    batch = {k: v.to(device) for k, v in collate([features], token_buckets=None,
                                                 atom_buckets=None).items()}
    model = AlphaFold3(named_config(config_name)).to(device).eval()
    n_params = sum(p.numel() for p in model.parameters())
    timings = {}
    with torch.no_grad():
        for _ in range(2 if device != "cpu" else 1):  # one warm-up on GPU
            if device != "cpu":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            started = time.perf_counter()
            trunk = model.run_trunk(batch, n_cycle=1)
            timings["trunk"] = time.perf_counter() - started
            x = torch.randn(1, n_sample, batch["atom_mask"].shape[-1], 3, device=device) * 16
            t = torch.full((1, n_sample), 16.0, device=device)
            started = time.perf_counter()
            model.diffusion_module(x, t, batch, trunk.s_inputs, trunk.s, trunk.z)
            timings["diffusion_step"] = time.perf_counter() - started
            started = time.perf_counter()
            model.confidence(batch, trunk, x)
            timings["confidence"] = time.perf_counter() - started
    if device == "cpu":
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    else:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    return {"config": config_name, "n_token": n_token, "n_atom": int(features["ref_pos"].shape[0]),
            "n_sample": n_sample, "n_params": n_params, "seconds": sum(timings.values()),
            "seconds_by_part": timings, "peak_mem_bytes": peak}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tokens", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--configs", nargs="+", default=["tiny", "full"])
    parser.add_argument("--samples", type=int, default=1)
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)  # internal: one case
    args = parser.parse_args()
    if args.case:
        config_name, n_token = args.case.split(":")
        print(json.dumps(run_case(config_name, int(n_token), args.device, args.samples)))
        return
    rows = []
    for config_name in args.configs:
        for n_token in args.tokens:
            result = subprocess.run([sys.executable, __file__, "--case", f"{config_name}:{n_token}",
                                     "--device", args.device, "--samples", str(args.samples)],
                                    capture_output=True, text=True, cwd=ROOT)
            if result.returncode != 0:
                rows.append({"config": config_name, "n_token": n_token,
                             "error": result.stderr.strip().splitlines()[-1]})
            else:
                rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
            row = rows[-1]
            print(f"{config_name:5s} {n_token:4d} tokens: "
                  + (f"{row['seconds']:7.2f} s, peak {row['peak_mem_bytes'] / 2**30:5.2f} GiB"
                     if "error" not in row else f"failed: {row['error']}"), flush=True)
    import torch

    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                         text=True).stdout.strip()
    out = ROOT / "benchmarks" / "results" / f"model_forward-{args.device.split(':')[0]}.json"
    out.write_text(json.dumps({"name": "model_forward", "device": args.device,
                               "cpu": stdlib_platform.processor() or stdlib_platform.machine(),
                               "torch": torch.__version__, "git_sha": sha, "rows": rows}, indent=2))
    print(f"-> {out}")


if __name__ == "__main__":
    main()
