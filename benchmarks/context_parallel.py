"""Context parallelism: per-worker peak memory and time at P = 1, 2, 4 workers (pair
representation sharded by rows, `foldray.parallel`), of the Pairformer pair stack alone
(`--scope pair-stack`) or of the whole prediction (`--scope model`: trunk, diffusion,
confidence head and distogram, `predict_sharded`).

Each case runs in fresh worker processes (gloo on CPU; NCCL with one GPU per worker with
`--device cuda`); every worker builds the full-width model or Pairformer (random weights,
same seed) and runs after a warm-up on a tiny input has started thread pools, gloo buffers
and allocator arenas. Memory per worker: on CPU the growth of the process's peak RSS over
the measured part (pair stack: ru_maxrss after minus RSS before; model: VmHWM, reset per
phase, minus RSS before, so the weights are not counted); on CUDA
torch.cuda.max_memory_allocated above what was allocated before. `--fixed-mmap-threshold`
stops glibc from raising its mmap threshold as large blocks are freed (which keeps freed
16-32 MB tensors in the heap and inflates peak RSS unevenly, docs/performance.md).

Model scope: `ModelConfig.full()` widths, depth reduced (`--blocks` Pairformer blocks, one
MSA / template / confidence block, `--diffusion-blocks` Diffusion Transformer blocks),
1 recycle, `--samples` samples (a multiple of every P) x `--steps` steps, on a protein of N
residues (one token each; `--features-dir` stores / loads the collated features, for GPU
images without gemmi / RDKit). On GPUs, `--tokens` ascending finds the largest N that fits at each P: a
world stops at its first out-of-memory case (recorded with "fits": false).

    python benchmarks/context_parallel.py [--scope pair-stack|model] [--tokens 256 512]
        [--worlds 1 2 4] [--blocks 1] [--chunk-size 64] [--device cpu|cuda]
    python benchmarks/context_parallel.py --scope model --device cuda --tokens 1024 2048 3072 4096
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from provenance import git_sha, machine_summary, python_version, torch_version  # noqa: E402  (benchmarks/provenance.py)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize()


def _hwm_bytes() -> int:
    """This process's peak RSS since the last `_reset_hwm` (Linux VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise KeyError("VmHWM")


def _reset_hwm() -> None:
    Path("/proc/self/clear_refs").write_text("5")


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


def protein_job(n_token: int):
    from foldray.inputs.af3_json import parse_af3_json

    base = "NLYIQWLKDGGPSSGRPPPSMKTAYIAKQRQISFVKSHFSRQ"
    sequence = (base * (n_token // len(base) + 1))[:n_token]
    text = json.dumps({"dialect": "alphafold3", "version": 2, "name": f"cp{n_token}", "modelSeeds": [1],
                       "sequences": [{"protein": {"id": "A", "sequence": sequence}}]})
    (job,) = parse_af3_json(text)
    return job


def batch_for(n_token: int, world: int, features_dir: Path | None) -> dict:
    """The collated features of a protein of n_token residues, padded to a multiple of
    `world`: featurized here (gemmi, RDKit) or loaded from `features_dir` (GPU images lack
    them: featurize on a CPU machine with the same `--features-dir` first)."""
    import numpy as np
    import torch

    stored = features_dir / f"protein_{n_token}_p{world}.npz" if features_dir else None
    if stored is not None and stored.exists():
        with np.load(stored) as data:
            return {name: torch.from_numpy(data[name]) for name in data.files}
    from foldray.features.batch import collate
    from foldray.features.pipeline import featurize_job
    from foldray.parallel.trunk import pad_tokens

    features = featurize_job(protein_job(n_token), with_targets=False).features
    batch = collate([pad_tokens(features, world)], token_buckets=None, atom_buckets=None)
    if stored is not None:
        stored.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(stored, **{name: x.numpy() for name, x in batch.items()})
    return batch


def model_config(blocks: int, diffusion_blocks: int):
    """Full widths, reduced depth."""
    import dataclasses

    from foldray.model.config import ModelConfig

    full = ModelConfig.full()
    depth = {"pairformer": blocks, "msa": 1, "template": 1, "diffusion": diffusion_blocks, "confidence": 1}
    return dataclasses.replace(full, **{name: dataclasses.replace(getattr(full, name), n_block=n)
                                        for name, n in depth.items()})


def _model_case(rank: int, world: int, batch: dict, warmup: dict, options: dict) -> dict:
    """One whole prediction on this rank (features: `batch_for`): seconds and peak memory of
    each phase."""
    import torch

    from foldray.model.alphafold3 import AlphaFold3
    from foldray.parallel.diffusion import sample_sharded
    from foldray.parallel.heads import confidence_sharded, distogram_sharded
    from foldray.parallel.shard import PairShard
    from foldray.parallel.trunk import run_trunk_sharded

    device = torch.device(f"cuda:{torch.cuda.current_device()}" if options["device"] == "cuda" else "cpu")
    torch.set_num_threads(options["threads"])
    torch.manual_seed(0)
    model = AlphaFold3(model_config(options["blocks"], options["diffusion_blocks"])).eval().to(device)
    chunk = options["chunk_size"]

    def batch_of(batch: dict) -> tuple[dict, PairShard]:
        return ({k: v.to(device) for k, v in batch.items()},
                PairShard(rank=rank, world=world, n_token=batch["token_mask"].shape[-1]))

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    phases: dict[str, dict] = {}

    def predict(batch: dict, shard: PairShard, measure: bool) -> None:
        before = torch.cuda.memory_allocated() if device.type == "cuda" else _rss_bytes()
        generator = torch.Generator(device=device).manual_seed(1)
        state: dict = {}
        steps = [
            ("trunk", lambda: state.update(trunk=run_trunk_sharded(model, batch, shard, n_cycle=1,
                                                                   chunk_size=chunk))),
            ("diffusion", lambda: state.update(x=sample_sharded(
                model, batch, state["trunk"], shard, n_sample=options["samples"],
                n_step=options["steps"], generator=generator, chunk_size=chunk))),
            ("confidence", lambda: (confidence_sharded(model, batch, state["trunk"], state["x"], shard,
                                                       chunk_size=chunk),
                                    distogram_sharded(model, state["trunk"], shard))),
        ]
        for name, run in steps:
            sync()
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            else:
                _reset_hwm()
            started = time.perf_counter()
            with torch.no_grad():
                run()
            sync()
            seconds = time.perf_counter() - started
            peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else _hwm_bytes()
            if measure:
                phases[name] = {"seconds": seconds, "peak_bytes": peak - before}

    predict(*batch_of(warmup), measure=False)
    predict(*batch_of(batch), measure=True)
    return {"rank": rank, "phases": phases, "seconds": sum(p["seconds"] for p in phases.values()),
            "peak_bytes": max(p["peak_bytes"] for p in phases.values())}


def _row(results: list[dict], n_token: int, world: int, scope: str) -> dict:
    row = {"n_token": n_token, "world": world, "seconds": max(r["seconds"] for r in results),
           "peak_bytes_per_worker": max(r["peak_bytes"] for r in results)}
    if scope == "model":   # rank 0 also holds the gathered outputs (PAE / PDE logits, distogram)
        row["peak_bytes_rank0"] = results[0]["peak_bytes"]
        row["phases"] = {
            name: {"seconds": max(r["phases"][name]["seconds"] for r in results),
                   "peak_bytes_per_worker": max(r["phases"][name]["peak_bytes"] for r in results)}
            for name in results[0]["phases"]}
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scope", choices=["pair-stack", "model"], default="pair-stack",
                        help="the Pairformer pair stack alone or the whole prediction (default: pair-stack)")
    parser.add_argument("--tokens", type=int, nargs="+", default=[256, 512],
                        help="token counts, ascending (default: 256 512)")
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 4],
                        help="worker counts P (default: 1 2 4)")
    parser.add_argument("--blocks", type=int, default=1, help="Pairformer blocks, full widths (default: 1)")
    parser.add_argument("--diffusion-blocks", type=int, default=2,
                        help="model scope: Diffusion Transformer blocks (default: 2)")
    parser.add_argument("--samples", type=int, default=4,
                        help="model scope: diffusion samples, a multiple of every P (default: 4)")
    parser.add_argument("--steps", type=int, default=2, help="model scope: diffusion steps (default: 2)")
    parser.add_argument("--chunk-size", type=int, default=64,
                        help="attention rows per chunk, the same at every P; 0: unchunked (default: 64)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="default: cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker (default: 1)")
    parser.add_argument("--fixed-mmap-threshold", action="store_true",
                        help="CPU: fix glibc's mmap threshold at 128 KiB in the workers (default: off)")
    parser.add_argument("--features-dir", type=Path, default=None,
                        help="model scope: store / load protein_<N>_p<P>.npz batches here "
                             "(default: featurize)")
    parser.add_argument("--out", type=Path, default=None,
                        help="default: benchmarks/results/context_parallel[-model]-<device>.json")
    args = parser.parse_args(argv)

    from foldray.parallel.local import run_local

    if args.fixed_mmap_threshold:
        os.environ["MALLOC_MMAP_THRESHOLD_"] = "131072"   # read by glibc in each spawned worker
    backend = "nccl" if args.device == "cuda" else "gloo"
    chunk = args.chunk_size or None
    options = {"device": args.device, "threads": args.threads, "blocks": args.blocks,
               "diffusion_blocks": args.diffusion_blocks, "samples": args.samples, "steps": args.steps,
               "chunk_size": chunk}
    rows: list[dict] = []
    too_big: set[int] = set()
    for n_token in sorted(args.tokens):
        for world in args.worlds:
            if world in too_big or (args.scope == "pair-stack" and n_token % world):
                continue
            try:
                if args.scope == "model":
                    results = run_local(_model_case, world, batch_for(n_token, world, args.features_dir),
                                        batch_for(16, world, args.features_dir), options, backend=backend,
                                        threads_per_worker=args.threads)
                else:
                    results = run_local(_case, world, n_token, args.blocks, chunk, args.device, args.threads,
                                        backend=backend, threads_per_worker=args.threads)
            except RuntimeError as err:
                if "out of memory" not in str(err).lower():
                    raise
                too_big.add(world)                       # larger N will not fit on this P either
                rows.append({"n_token": n_token, "world": world, "fits": False})
                print(json.dumps(rows[-1]), flush=True)
                continue
            row = _row(results, n_token, world, args.scope)
            base = next((r for r in rows if r["n_token"] == n_token and r["world"] == 1 and "seconds" in r),
                        None)
            if base:
                row["memory_vs_p1"] = row["peak_bytes_per_worker"] / base["peak_bytes_per_worker"]
                row["time_vs_p1"] = row["seconds"] / base["seconds"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    name = "context_parallel" + ("-model" if args.scope == "model" else "")
    out = args.out or ROOT / "benchmarks" / "results" / f"{name}-{args.device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    config = {"model": "full widths", "blocks": args.blocks, "chunk_size": chunk,
              "threads_per_worker": args.threads, "backend": backend,
              "fixed_mmap_threshold": args.fixed_mmap_threshold}
    if args.scope == "model":
        config |= {"msa_template_confidence_blocks": 1, "diffusion_blocks": args.diffusion_blocks,
                   "samples": args.samples, "steps": args.steps, "recycles": 1,
                   "input": "protein, 1 token per residue"}
    largest = {world: max((r["n_token"] for r in rows if r["world"] == world and "seconds" in r),
                          default=None) for world in args.worlds}
    out.write_text(json.dumps({
        "name": name, "scope": args.scope, "device": args.device, "git_sha": git_sha(short=False),
        "python": python_version(), "torch": torch_version(), "machine": machine_summary(),
        "config": config, "largest_fitting_tokens": largest, "rows": rows},
        indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
