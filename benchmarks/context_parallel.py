"""Context parallelism: per-worker peak memory and time of the Pairformer pair stack at
P = 1, 2, 4 workers (pair representation sharded by rows, `foldray.parallel`).

Each case runs in fresh worker processes (gloo on CPU; NCCL with one GPU per worker with
`--device cuda`): every worker builds the full-width Pairformer (random weights, same seed),
makes only its own rows of z, and runs `--blocks` blocks. Memory per worker: on CPU the
growth of the process's peak RSS over the stack (ru_maxrss after minus RSS before, after a
warm-up on a tiny input has started thread pools and allocator arenas); on CUDA
torch.cuda.max_memory_allocated. Writes benchmarks/results/context_parallel-<device>.json.

    python benchmarks/context_parallel.py [--tokens 256 512] [--worlds 1 2 4] [--blocks 1]
                                          [--chunk-size 64] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from provenance import git_sha, python_version  # noqa: E402  (benchmarks/provenance.py)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize()


def _case(rank: int, world: int, n_token: int, blocks: int, chunk_size: int | None, device: str,
          threads: int) -> dict:
    import torch

    from foldray.model.config import ModelConfig
    from foldray.model.pairformer import PairformerStack
    from foldray.parallel.pair_stack import pairformer_stack
    from foldray.parallel.shard import PairShard

    torch.set_num_threads(threads)
    config = ModelConfig.full()
    torch.manual_seed(0)
    stack = PairformerStack(config.c_s, config.c_z, config.pairformer, n_block=blocks).eval().to(device)
    shard = PairShard(rank=rank, world=world, n_token=n_token)
    g = torch.Generator().manual_seed(rank)
    z_rows = torch.randn(1, shard.rows, n_token, config.c_z, generator=g).to(device)
    s = torch.randn(1, n_token, config.c_s, generator=torch.Generator().manual_seed(99)).to(device)
    mask = torch.ones(1, n_token, dtype=torch.bool, device=device)
    small = PairShard(rank=rank, world=world, n_token=8 * world)   # warm-up: thread pools, gloo
    with torch.no_grad():                                          # buffers, allocator arenas
        pairformer_stack(stack, s[:, :small.n_token], z_rows[:, :small.rows, :small.n_token],
                         mask[:, :small.n_token], small, chunk_size)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = _rss_bytes()
    started = time.perf_counter()
    with torch.no_grad():
        pairformer_stack(stack, s, z_rows, mask, shard, chunk_size)
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    return {"rank": rank, "seconds": time.perf_counter() - started, "peak_bytes": peak}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--blocks", type=int, default=1, help="Pairformer blocks (full widths)")
    parser.add_argument("--chunk-size", type=int, default=64,
                        help="attention rows per chunk, the same at every P (None: 0)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker (CPU)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    from foldray.parallel.local import run_local

    backend = "nccl" if args.device == "cuda" else "gloo"
    chunk = args.chunk_size or None
    rows = []
    for n_token in args.tokens:
        for world in args.worlds:
            if n_token % world:
                continue
            results = run_local(_case, world, n_token, args.blocks, chunk, args.device, args.threads,
                                backend=backend, threads_per_worker=args.threads)
            row = {"n_token": n_token, "world": world, "blocks": args.blocks,
                   "seconds": max(r["seconds"] for r in results),
                   "peak_bytes_per_worker": max(r["peak_bytes"] for r in results)}
            base = next((r for r in rows if r["n_token"] == n_token and r["world"] == 1), None)
            if base:
                row["memory_vs_p1"] = row["peak_bytes_per_worker"] / base["peak_bytes_per_worker"]
                row["time_vs_p1"] = row["seconds"] / base["seconds"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    out = args.out or ROOT / "benchmarks" / "results" / f"context_parallel-{args.device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "name": "context_parallel", "device": args.device, "git_sha": git_sha(short=False),
        "python": python_version(), "config": {
            "model": "full widths", "blocks": args.blocks, "chunk_size": chunk,
            "threads_per_worker": args.threads, "backend": backend}, "rows": rows}, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
