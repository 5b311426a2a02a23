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

from kernels import _git_sha, _gpu_name  # noqa: E402  (benchmarks/kernels.py, beside this file)
from model_forward import protein_job  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODES = ("torch", "triton")


def run_case(model, n_token: int, mode: str, args: argparse.Namespace) -> dict:
    """One timed forward (after a warm-up at this size, which also compiles the kernels)."""
    import torch

    from foldray.features.batch import collate
    from foldray.features.pipeline import featurize_job
    from foldray.model.config import RuntimeConfig

    features = featurize_job(protein_job(n_token)).features
    batch = {k: v.cuda() for k, v in collate([features], token_buckets=None, atom_buckets=None).items()}
    runtime = RuntimeConfig(kernels=mode, precision=args.precision)
    row = {"name": f"forward-kernels-{mode}", "kernels": mode, "n_token": n_token,
           "n_atom": int(features["ref_pos"].shape[0]), "n_sample": args.samples, "n_step": args.steps}
    seconds: dict[str, float] = {}

    def forward() -> None:
        autocast = args.precision == "bf16"
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            torch.cuda.synchronize()
            started = time.perf_counter()
            trunk = model.run_trunk(batch, n_cycle=1, runtime=runtime)
            torch.cuda.synchronize()
            seconds["trunk"] = time.perf_counter() - started
            started = time.perf_counter()
            model.sample(batch, trunk, n_sample=args.samples, n_step=args.steps, runtime=runtime,
                         generator=torch.Generator(device="cuda").manual_seed(0))
            torch.cuda.synchronize()
            seconds["diffusion"] = time.perf_counter() - started

    try:
        torch.cuda.empty_cache()
        if args.warmup:
            forward()
        torch.cuda.reset_peak_memory_stats()
        forward()
        row.update(seconds=sum(seconds.values()), seconds_by_part=dict(seconds),
                   peak_mem_bytes=torch.cuda.max_memory_allocated(), status="ok")
    except torch.cuda.OutOfMemoryError:
        row.update(seconds=None, peak_mem_bytes=None, status="oom")
    finally:
        torch.cuda.empty_cache()
    return row


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
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("benchmarks/gpu_scaling.py: no CUDA device here; this benchmark needs a GPU "
              "(use benchmarks/kernels.py --interpret for a CPU check of the kernels).")
        return 0
    from foldray.model.alphafold3 import AlphaFold3
    from foldray.predictor import named_config

    started = time.monotonic()
    torch.manual_seed(0)
    model = AlphaFold3(named_config(args.config)).cuda().eval()
    device = _gpu_name()
    out = args.out or ROOT / "benchmarks" / "results" / f"gpu_scaling-{device}.json"
    rows: list[dict] = []
    alive = set(MODES)
    last: dict[str, tuple[int, float]] = {}         # mode -> (n_token, wall seconds of its case)
    for n_token in sorted(args.tokens):
        for mode in MODES:
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
    result = {"name": "gpu_scaling", "device": device, "torch": torch.__version__, "git_sha": _git_sha(),
              "config": {"model": args.config, "precision": args.precision, "n_step": args.steps,
                         "n_sample": args.samples, "n_cycle": 1},
              "max_n_token": largest, "rows": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
