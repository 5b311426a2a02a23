"""AF3 ranking disorder term: old vs new Shrake-Rupley SASA, side by side in one run.

`fraction_disordered` (inside `summary_confidences`, run for every sample of every job)
computes a Shrake-Rupley SASA of each protein chain. This times the formulation it replaced
(kept below as `old_shrake_rupley_sasa`: dense N x N `cdist` + `topk` neighbour lists and
several [n, dots, K] temporaries) against foldray.model.ranking.shrake_rupley_sasa on the same
real structures, per sample, at 1 and 2 torch threads; also `fraction_disordered` and the whole
`summary_confidences` with each (the current summary with only the SASA swapped, so that ratio
leaves out the PAE softmax it now shares between pTM, ipTM and PAE), and checks that both give
the same numbers. Structures
(myoglobin 102m, 154 aa + heme, 2 samples each): the crystal coordinates (sample 2 moved by
0.3 Å noise) and the 2 samples of a tiny-config model with random weights (denser, more
neighbours per atom: what a benchmark or smoke-test job sees). Old and new alternate in each
repeat so machine noise hits both. Writes benchmarks/results/ranking_speed-<device>.json.

    python benchmarks/ranking_speed.py [--repeats 5] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from provenance import cpu_model, git_sha, gpu_name  # noqa: E402  (benchmarks/provenance.py)

DATA = ROOT.parent / "shared" / "data"


def old_shrake_rupley_sasa(x, radii, n_points=200, probe=1.4, chunk=256):
    """The replaced implementation (foldray before this change), verbatim in behaviour."""
    from foldray.model.confidence import batched_gather
    from foldray.model.ranking import _sphere_points

    r = radii.to(x.dtype) + probe
    d = torch.cdist(x, x)
    n = x.shape[-2]
    touching = (d < r[:, None] + r[None, :]) & ~torch.eye(n, dtype=torch.bool, device=x.device)
    k = max(int(touching.sum(-1).max()), 1)
    nb_d, nb = d.masked_fill(~touching, torch.inf).topk(min(k, n), -1, largest=False)
    nb_ok = torch.isfinite(nb_d)
    points = _sphere_points(n_points, x.device).to(x.dtype)
    exposed = []
    for start in range(0, n, chunk):
        sl = slice(start, start + chunk)
        nb_c = nb[..., sl, :]
        offset = x[..., sl, None, :] - batched_gather(x, nb_c.flatten(-2)).unflatten(-2, nb_c.shape[-2:])
        r_i = r[sl, None, None]
        dist2 = ((offset ** 2).sum(-1)[..., None, :] + r_i ** 2
                 + 2 * r_i * torch.einsum("pd,...nkd->...npk", points, offset))
        inside = (dist2 < r[nb_c][..., None, :] ** 2) & nb_ok[..., sl, None, :]
        exposed.append(1.0 - inside.any(-1).to(x.dtype).mean(-1))
    return torch.cat(exposed, -1) * 4 * math.pi * r ** 2


def crystal_case(device: str) -> tuple:
    """102m crystal coordinates as sample 1, the same moved by 0.3 Å noise as sample 2."""
    from foldray.features.batch import collate
    from foldray.features.pipeline import featurize_job
    from foldray.inputs.mmcif_input import job_from_structure_file
    from foldray.model.confidence import token_frames

    path = DATA / "structures" / "102m.cif"
    fj = featurize_job(job_from_structure_file(path.read_text(), source=str(path)))
    batched = collate([fj.features], token_buckets=None, atom_buckets=None)
    batch = {k: v[0].to(device) for k, v in batched.items()}
    x = torch.as_tensor(fj.targets.coords, dtype=torch.float32, device=device)
    moved = x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0)).to(device)
    _, frame_mask = token_frames(batch)
    n_tok, n_atom = batch["token_mask"].shape[0], x.shape[0]
    gen = torch.Generator().manual_seed(1)
    plddt = torch.randn(2, n_atom, 50, generator=gen).to(device)
    pae = torch.randn(2, n_tok, n_tok, 64, generator=gen).to(device)
    return (plddt, pae, torch.stack([x, moved]), batch, frame_mask), {}


def predicted_case(device: str, steps: int) -> tuple:
    """The arguments `Predictor._samples` passes to summary_confidences for 2 tiny-model samples."""
    import foldray.predictor as predictor_module
    from foldray.features.pipeline import featurize_seeds
    from foldray.inputs.mmcif_input import job_from_structure_file
    from foldray.predictor import Predictor, PredictSettings

    captured = []
    original = predictor_module.summary_confidences

    def capture(*args, **kwargs):
        captured.append((args, kwargs))
        return original(*args, **kwargs)

    torch.manual_seed(0)
    predictor = Predictor.load(None, config="tiny", device=device)
    path = DATA / "structures" / "102m.cif"
    job = job_from_structure_file(path.read_text(), source=str(path))
    predictor_module.summary_confidences = capture
    try:
        predictor.predict_featurized(featurize_seeds(job, featurization=predictor.config.featurization),
                                     PredictSettings(n_sample=2, n_step=steps))
    finally:
        predictor_module.summary_confidences = original
    return captured[0]


def sasa_inputs(x: torch.Tensor, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The protein chain's coordinates and DSSP radii exactly as fraction_disordered builds them."""
    from foldray.model.confidence import atom_name_is
    from foldray.model.ranking import DSSP_RADII, DSSP_SIDE_CHAIN_RADIUS

    atom_to_token = batch["atom_to_token"].long()
    protein = (batch["atom_mask"].bool() & batch["is_protein"].bool()[atom_to_token]
               & (batch["ref_element"].argmax(-1) != 1)).nonzero().flatten()
    radii = torch.full(batch["atom_mask"].shape, DSSP_SIDE_CHAIN_RADIUS, device=x.device)
    for name, radius in DSSP_RADII.items():
        radii = torch.where(atom_name_is(batch["ref_atom_name_chars"], name), radius, radii)
    return x[..., protein, :].float(), radii[protein]


def side_by_side(pairs: dict, repeats: int, sync) -> dict:
    """{name: (old_fn, new_fn)} -> seconds per call (median, min) of each, alternating old/new."""
    times = {name: ([], []) for name in pairs}
    for fns in pairs.values():
        for fn in fns:                                                      # warm-up
            fn()
    for _ in range(repeats):
        for name, fns in pairs.items():
            for fn, out in zip(fns, times[name], strict=True):
                sync()
                start = time.perf_counter()
                fn()
                sync()
                out.append(time.perf_counter() - start)
    return {name: {"old_median_s": statistics.median(old), "new_median_s": statistics.median(new),
                   "old_min_s": min(old), "new_min_s": min(new),
                   "speedup_median": statistics.median(old) / statistics.median(new),
                   "speedup_min": min(old) / min(new)}
            for name, (old, new) in times.items()}


def agreement(args: tuple, kwargs: dict) -> dict:
    """How far old and new disagree: per-atom SASA, fraction_disordered, every summary value."""
    import foldray.model.ranking as ranking

    x, batch = args[2], args[3]
    xp, radii = sasa_inputs(x, batch)
    old, new = old_shrake_rupley_sasa(xp, radii), ranking.shrake_rupley_sasa(xp, radii)
    rel = ((old - new).abs() / old.abs().clamp(min=1.0)).max().item()
    new_summary = ranking.summary_confidences(*args, **kwargs)
    ranking.shrake_rupley_sasa, saved = old_shrake_rupley_sasa, ranking.shrake_rupley_sasa
    try:
        old_summary = ranking.summary_confidences(*args, **kwargs)
    finally:
        ranking.shrake_rupley_sasa = saved
    differing = [k for k in new_summary if not torch.equal(old_summary[k].nan_to_num(-1.0),
                                                           new_summary[k].nan_to_num(-1.0))]
    return {"n_protein_atoms": xp.shape[-2], "samples": x.shape[0],
            "sasa_max_abs_diff_A2": (old - new).abs().max().item(), "sasa_max_rel_diff": rel,
            "fraction_disordered_old": old_summary["fraction_disordered"].tolist(),
            "fraction_disordered_new": new_summary["fraction_disordered"].tolist(),
            "summary_keys_differing": differing}


def measure(args: tuple, kwargs: dict, repeats: int, sync) -> dict:
    import foldray.model.ranking as ranking

    x, batch = args[2], args[3]
    xp, radii = sasa_inputs(x, batch)
    new_sasa = ranking.shrake_rupley_sasa

    def with_old(fn):
        def run():
            ranking.shrake_rupley_sasa = old_shrake_rupley_sasa
            try:
                return fn()
            finally:
                ranking.shrake_rupley_sasa = new_sasa
        return run

    def summary():
        return ranking.summary_confidences(*args, **kwargs)

    def disorder():
        return ranking.fraction_disordered(x, batch)

    pairs = {"shrake_rupley_sasa": (lambda: old_shrake_rupley_sasa(xp, radii), lambda: new_sasa(xp, radii)),
             "fraction_disordered": (with_old(disorder), disorder),
             "summary_confidences": (with_old(summary), summary)}
    rows = side_by_side(pairs, repeats, sync)
    n = x.shape[0]
    for row in rows.values():                                               # per sample
        for key in ("old_median_s", "new_median_s", "old_min_s", "new_min_s"):
            row[key.replace("_s", "_s_per_sample")] = row.pop(key) / n
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per case (default 5)")
    parser.add_argument("--steps", type=int, default=20,
                        help="diffusion steps of the tiny model (default 20)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    opts = parser.parse_args()
    device = opts.device
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    cases = {"102m crystal (+0.3 A noise sample)": crystal_case(device),
             "102m tiny-model prediction (random weights)": predicted_case(device, opts.steps)}
    threads = (1, 2) if device == "cpu" else (torch.get_num_threads(),)
    result = {"name": "ranking_speed", "device": device,
              "machine": cpu_model() if device == "cpu" else gpu_name(), "torch": torch.__version__,
              "git_sha": git_sha(), "repeats": opts.repeats,
              "note": "old = the replaced shrake_rupley_sasa (copy in this script); times per sample",
              "cases": {}}
    for name, (args, kwargs) in cases.items():
        entry = {"agreement": agreement(args, kwargs), "timings": {}}
        for n_threads in threads:
            torch.set_num_threads(n_threads)
            entry["timings"][f"{n_threads}_threads"] = measure(args, kwargs, opts.repeats, sync)
        result["cases"][name] = entry
        print(name, json.dumps(entry["agreement"]))
        for label, rows in entry["timings"].items():
            for what, row in rows.items():
                print(f"  {label:10s} {what:20s} median old {row['old_median_s_per_sample'] * 1e3:6.1f} ms "
                      f"new {row['new_median_s_per_sample'] * 1e3:6.1f} ms x{row['speedup_median']:.1f}; "
                      f"min old {row['old_min_s_per_sample'] * 1e3:6.1f} ms "
                      f"new {row['new_min_s_per_sample'] * 1e3:6.1f} ms x{row['speedup_min']:.1f}")
    suffix = "cpu" if device == "cpu" else gpu_name()
    out = ROOT / "benchmarks" / "results" / f"ranking_speed-{suffix}.json"
    out.write_text(json.dumps(result, indent=2))
    print("->", out)


if __name__ == "__main__":
    main()
