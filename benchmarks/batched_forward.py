"""Batched (padded) forward vs one job at a time, side by side in one run, on CPU.

Real complexes: myoglobin 102m (154 aa, 98-row MSA) + one ligand each from
shared/data/ligands/screen_100.smi, featurized as `foldray screen` does; the tiny config with
random weights. The N complexes of the largest same-size group (`group_by_size`, i.e. what
`Predictor.predict_batch(..., max_group=N)` runs as one forward) are predicted (1) one at a
time and (2) in one padded forward pass. Per job: the forward (`Predictor._forward`) and, apart
from it, the per-job outputs (`Predictor._samples`: confidences, SASA), and the time inside the
top model modules (forward hooks). Case "materialized" repeats both with the attention
reference's batched fast path switched off (the mask added to the bias and a per-job bias
copied for every row, as before the fix) for the ratio. Batched samples are checked against
the one-at-a-time ones. Writes benchmarks/results/batched_forward-cpu.json.

    python benchmarks/batched_forward.py [--n 8] [--threads 1] [--cases fast,materialized]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import cpu_model, git_sha, machine_summary, python_version, torch_version  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
MODULES = ("input_embedder", "template_embedder", "msa_module", "pairformer", "diffusion_module",
           "confidence_head", "distogram_head")


def _complexes(n_scan: int) -> list[dict]:
    """AF3 JSON of 102m + each of the first `n_scan` ligands."""
    from foldray.client import load_ligands, target_job

    msa = (DATA / "msas" / "102m_A.a3m").read_text()
    sequence = next(line.strip() for line in msa.splitlines() if line and not line.startswith(">"))
    target = {**target_job(sequence, msa=msa), "name": "target_102m"}
    ligands = load_ligands(str(DATA / "ligands" / "screen_100.smi"))[:n_scan]
    return [{**target, "name": lig["id"],
             "sequences": target["sequences"] + [{"ligand": {"id": "B", "smiles": lig["smiles"]}}]}
            for lig in ligands]


def _featurize(jobs: list[dict], featurization) -> list:
    from foldray.errors import InputError
    from foldray.features.pipeline import featurize_seeds
    from foldray.inputs.af3_json import parse_af3_json

    out = []
    for data in jobs:
        try:
            job = parse_af3_json(json.dumps(data), allow_paths=False)[0]
            out.append(next(iter(featurize_seeds(job, (1,), featurization=featurization).values())))
        except InputError:
            continue
    return out


@contextlib.contextmanager
def _module_timer(model, seconds: collections.Counter):
    """Adds each top module's forward time to `seconds` (hooks removed on exit)."""
    starts: dict[str, float] = {}
    handles = []
    for name in MODULES:
        module = getattr(model, name)
        handles.append(module.register_forward_pre_hook(
            lambda _m, _a, name=name: starts.__setitem__(name, time.perf_counter())))
        handles.append(module.register_forward_hook(
            lambda _m, _a, _o, name=name: seconds.update({name: time.perf_counter() - starts[name]})))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def _fast_path(enabled: bool):
    """enabled=False: the attention reference as before the fix (mask added to the bias, a bias
    shared over inner dims only expanded), by turning off its two batched branches."""
    module = sys.modules["foldray.kernels.attention"]
    saved = module._split_dims, module._attend_shared
    if not enabled:
        module._split_dims = lambda *_: 0
        module._attend_shared = lambda *_: None
    try:
        yield
    finally:
        module._split_dims, module._attend_shared = saved


def _run(predictor, members: list, settings, batched: bool) -> tuple[dict, list]:
    seconds: collections.Counter = collections.Counter()
    samples = []
    groups = [members] if batched else [[m] for m in members]
    with _module_timer(predictor.model, seconds):
        for group in groups:
            t0 = time.perf_counter()
            prediction, batch = predictor._forward([f.features for f in group], [1] * len(group), settings)
            t1 = time.perf_counter()
            for position, featurized in enumerate(group):
                samples.append(predictor._samples(prediction, batch, position, 1, featurized.tokens))
            seconds.update(forward=t1 - t0, samples=time.perf_counter() - t1)
    per_job = {k: round(v / len(members), 3) for k, v in seconds.items()}
    return per_job, samples


def _max_diff(a: list, b: list) -> float:
    """Largest coordinate difference between two runs' samples (Å)."""
    import numpy as np

    return max(float(np.abs(x.coords - y.coords).max())
               for one, other in zip(a, b, strict=True) for x, y in zip(one, other, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=8, help="complexes in the batch (default 8)")
    parser.add_argument("--scan", type=int, default=40,
                        help="ligands featurized to find a same-size group of --n (default 40)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--steps", type=int, default=20, help="diffusion steps (default 20)")
    parser.add_argument("--samples", type=int, default=2, help="diffusion samples (default 2)")
    parser.add_argument("--cases", default="fast,materialized",
                        help="attention reference variants, comma-separated (default fast,materialized)")
    args = parser.parse_args()

    import torch

    from foldray.predictor import Predictor, PredictSettings, group_by_size

    torch.set_num_threads(args.threads)
    predictor = Predictor.load(None, config="tiny")
    settings = PredictSettings(n_sample=args.samples, n_step=args.steps, n_cycle=1)
    featurized = _featurize(_complexes(args.scan), predictor.config.featurization)
    group = max(group_by_size(featurized, args.n), key=len)
    members = [featurized[i] for i in group]
    sizes = [(f.tokens.n_tokens, f.tokens.n_atoms) for f in members]
    print(f"{len(members)} complexes, (tokens, atoms): {sizes}", flush=True)
    predictor._forward([members[0].features], [1], PredictSettings(n_sample=1, n_step=2, n_cycle=1))

    cases, batched = {}, {}
    for case in args.cases.split(","):
        with _fast_path(case == "fast"):
            alone, alone_samples = _run(predictor, members, settings, batched=False)
            together, batch_samples = _run(predictor, members, settings, batched=True)
        batched[case] = batch_samples
        cases[case] = {"one_at_a_time_s_per_job": alone, "batched_s_per_job": together,
                       "batched_over_alone_forward": round(together["forward"] / alone["forward"], 3),
                       "max_abs_coord_diff_batched_vs_alone": _max_diff(alone_samples, batch_samples)}
        if case != "fast" and "fast" in batched:
            cases[case]["max_abs_coord_diff_vs_fast_batched"] = _max_diff(batched["fast"], batch_samples)
        print(case, json.dumps(cases[case]), flush=True)
    result = {
        "benchmark": "batched_forward", "git_sha": git_sha(), "machine": machine_summary(),
        "cpu": cpu_model(), "python": python_version(), "torch": torch_version(),
        "torch_threads": args.threads, "config": "tiny (random weights)",
        "settings": {"n_sample": args.samples, "n_step": args.steps, "n_cycle": 1},
        "complexes": "102m (154 aa + 98-row MSA) + screen_100.smi ligands, one same-size group",
        "sizes_tokens_atoms": sizes, "cases": cases,
        "note": "per-job seconds; forward = Predictor._forward, samples = Predictor._samples "
                "(confidences, SASA); module rows are inside forward. Side by side in one run on a "
                "shared machine: compare ratios.",
    }
    out = ROOT / "benchmarks" / "results" / "batched_forward-cpu.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
