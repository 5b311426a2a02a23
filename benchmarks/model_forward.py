"""Model forward cost: tiny and full configs at 64 / 128 / 256 tokens, side by side.

One "forward" = trunk (1 recycle) + one diffusion-module call on `--samples` samples +
the confidence head, on random features of a real-sized protein (one token per residue,
~8 atoms per token), fp32 on the chosen device. Peak memory is the process's max RSS on
CPU (measured in a fresh subprocess per case so cases don't hide each other) and
torch.cuda.max_memory_allocated on GPU. Writes benchmarks/results/model_forward-<device>.json.

    python benchmarks/model_forward.py [--device cpu] [--tokens 64 128 256] [--configs tiny full]

`--compare openfold3` (or `protenix`, or both as `openfold3,protenix`; each needs its reference
environment, else it is recorded as not available) runs foldray and the reference side by side
instead, on CPU: same architecture, same random weights (the reference draws them, foldray
imports them), same real protein (`compare_main`).

    python benchmarks/model_forward.py --compare openfold3,protenix [--tokens 64 128 256] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from provenance import cpu_model, cpu_name, git_sha  # noqa: E402  (benchmarks/provenance.py)


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

# --- side-by-side comparison (--compare) ------------------------------------------------
# Each case runs in a fresh subprocess: foldray's with this interpreter, the reference's
# with its own virtual environment's python (which has no foldray; this file imports
# nothing from foldray at module level, so it runs there too).

REFERENCE_VENVS = {"openfold3": Path("/tmp/foldray-eq-openfold3"),
                   "protenix": Path("/tmp/foldray-eq-protenix")}
PROTEIN = "1qgi.json"      # chitosanase, 259 residues: cropped to the first N residues
REDUCED_DEPTH = {"pairformer": 4, "msa": 1, "template": 1, "diffusion": 4, "atom": 3, "confidence": 1}
RELEASED_DEPTH = {"pairformer": 48, "msa": 4, "template": 2, "diffusion": 24, "atom": 3, "confidence": 4}


def _peak_reset() -> None:
    """Start a fresh peak-RSS window (Linux: writing 5 to clear_refs resets VmHWM)."""
    Path("/proc/self/clear_refs").write_text("5")


def _rss(field: str) -> int:
    """VmHWM (peak) or VmRSS (now) of this process, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _timed_forward(trunk_fn, diffusion_fn, confidence_fn) -> dict:
    """Run the three parts after loading, timing each; peak RSS over the forward only
    (weights already resident count, loading transients do not)."""
    import gc

    gc.collect()
    rss_before = _rss("VmRSS")
    _peak_reset()
    seconds = {}
    cpu_started = time.process_time()
    started = time.perf_counter()
    trunk = trunk_fn()
    seconds["trunk"] = time.perf_counter() - started
    started = time.perf_counter()
    x = diffusion_fn(trunk)
    seconds["diffusion"] = time.perf_counter() - started
    started = time.perf_counter()
    confidence_fn(trunk, x)
    seconds["confidence"] = time.perf_counter() - started
    cpu_seconds = time.process_time() - cpu_started   # all threads: less sensitive to a shared CPU
    return {"seconds": sum(seconds.values()), "cpu_seconds": cpu_seconds, "seconds_by_part": seconds,
            "peak_mem_bytes": _rss("VmHWM"), "rss_before_bytes": rss_before,
            "forward_mem_bytes": _rss("VmHWM") - rss_before}, trunk


def openfold3_case(work: Path, n_token: int, n_sample: int, n_step: int, depth: dict) -> dict:
    """OpenFold3 (inside its venv): its config at full width with `depth`, random weights,
    foldray's features adapted by reference_openfold3.to_openfold3_batch."""
    import numpy as np
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks" / "equivalence"))
    from openfold3.core.model.structure.diffusion_module import create_noise_schedule
    from openfold3.projects.of3_all_atom.model import OpenFold3
    from reference_openfold3 import full_config, randomize, to_openfold3_batch

    config = full_config()
    a = config.architecture
    a.pairformer.no_blocks = depth["pairformer"]
    a.msa.msa_module.no_blocks = depth["msa"]
    a.template.template_pair_stack.no_blocks = depth["template"]
    a.diffusion_module.diffusion_transformer.no_blocks = depth["diffusion"]
    for atom in (a.input_embedder.atom_attn_enc, a.diffusion_module.atom_attn_enc,
                 a.diffusion_module.atom_attn_dec):
        atom.no_blocks = depth["atom"]
    a.heads.pairformer_embedding.pairformer.no_blocks = depth["confidence"]
    torch.manual_seed(0)
    model = OpenFold3(config).eval()
    randomize(model, seed=0)
    batch = to_openfold3_batch(dict(np.load(work / f"features-{n_token}.npz")))
    sbatch = {k: v.unsqueeze(1) for k, v in batch.items()}      # sample axis, as OpenFold3.forward
    schedule = create_noise_schedule(no_rollout_steps=n_step, dtype=torch.float32,
                                     device=torch.device("cpu"), **a.noise_schedule)

    def trunk_fn():
        s_inputs, s, z = model.run_trunk(batch, num_cycles=1)
        return s_inputs[:, None], s[:, None], z[:, None]

    def diffusion_fn(trunk):
        return model.sample_diffusion(batch=sbatch, si_input=trunk[0], si_trunk=trunk[1],
                                      zij_trunk=trunk[2], noise_schedule=schedule,
                                      no_rollout_samples=n_sample)

    def confidence_fn(trunk, x):
        return model.aux_heads(batch=sbatch, si_input=trunk[0], output={
            "si_trunk": trunk[1], "zij_trunk": trunk[2], "atom_positions_predicted": x},
            use_zij_trunk_embedding=True)

    with torch.no_grad():
        row, trunk = _timed_forward(trunk_fn, diffusion_fn, confidence_fn)
    np.savez(work / f"trunk-openfold3-{n_token}.npz", s=trunk[1][0, 0].numpy(), z=trunk[2][0, 0].numpy())
    weights = work / "openfold3_weights.safetensors"
    if not weights.exists():
        from safetensors.torch import save_file

        save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, str(weights))
    row["n_params"] = sum(p.numel() for p in model.parameters())
    return row


def protenix_case(work: Path, n_token: int, n_sample: int, n_step: int, depth: dict) -> dict:
    """Protenix (inside its venv): protenix_base_default_v1.0.0 at full width with `depth`,
    random weights as the equivalence harness draws them, foldray's features adapted by
    reference_protenix.to_protenix_features; run as its own inference loop runs it (in-place
    updates, its token-count chunk size, the diffusion conditioning cached across steps)."""
    import os

    import numpy as np
    import torch

    os.environ.setdefault("LAYERNORM_TYPE", "torch")    # before protenix: no CUDA layer norm on CPU
    sys.path.insert(0, str(ROOT / "benchmarks" / "equivalence"))
    from protenix.model.protenix import Protenix
    from reference_protenix import build_config, randomize, to_protenix_features

    config = build_config(tiny=False, depth=depth)
    torch.manual_seed(0)
    model = Protenix(config).eval()
    randomize(model, seed=0)
    f = to_protenix_features(dict(np.load(work / f"features-{n_token}.npz")))
    chunk_size = model._get_dynamic_chunk_size(n_token)      # None (no chunking) up to 1,024 tokens
    kernels = {"triangle_multiplicative": config.triangle_multiplicative,
               "triangle_attention": config.triangle_attention}
    schedule = model.inference_noise_scheduler(N_step=n_step, dtype=torch.float32)

    def trunk_fn():
        return model.get_pairformer_output(f, N_cycle=1, inplace_safe=True, chunk_size=chunk_size)

    def diffusion_fn(trunk):
        s_inputs, s, z = trunk
        pair_z = model.diffusion_module.diffusion_conditioning.prepare_cache(f["relp"], z, False)
        p_lm, c_l = model.diffusion_module.atom_attention_encoder.prepare_cache(
            ref_pos=f["ref_pos"], ref_charge=f["ref_charge"], ref_mask=f["ref_mask"],
            ref_element=f["ref_element"], ref_atom_name_chars=f["ref_atom_name_chars"],
            atom_to_token_idx=f["atom_to_token_idx"], d_lm=f["d_lm"], v_lm=f["v_lm"],
            pad_info=f["pad_info"], r_l=True, z=pair_z, inplace_safe=False)
        return model.sample_diffusion(
            denoise_net=model.diffusion_module, input_feature_dict=f, s_inputs=s_inputs, s_trunk=s,
            z_trunk=None, pair_z=pair_z, p_lm=p_lm, c_l=c_l, N_sample=n_sample,
            noise_schedule=schedule, inplace_safe=True,
            enable_efficient_fusion=config.enable_efficient_fusion)          # [n_sample, N_atom, 3]

    def confidence_fn(trunk, x):
        s_inputs, s, z = trunk
        distogram = model.distogram_head(z)
        return distogram, model.run_confidence_head(
            input_feature_dict=f, s_inputs=s_inputs, s_trunk=s, z_trunk=z, pair_mask=None,
            x_pred_coords=x, inplace_safe=True, chunk_size=chunk_size, **kernels)

    with torch.no_grad():
        row, trunk = _timed_forward(trunk_fn, diffusion_fn, confidence_fn)
    np.savez(work / f"trunk-protenix-{n_token}.npz", s=trunk[1].numpy(), z=trunk[2].numpy())
    weights = work / "protenix_weights.safetensors"
    if not weights.exists():
        from safetensors.torch import save_file

        save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, str(weights))
    row["n_params"] = sum(p.numel() for p in model.parameters())
    row["chunk_size"] = chunk_size
    return row


def foldray_config(reference: str, depth: dict):
    """foldray's `full-<reference>` config with the same depths as the reference run."""
    import dataclasses

    from foldray.predictor import named_config

    r = dataclasses.replace
    c = named_config(f"full-{reference}")
    return r(c, pairformer=r(c.pairformer, n_block=depth["pairformer"]),
             msa=r(c.msa, n_block=depth["msa"]), template=r(c.template, n_block=depth["template"]),
             diffusion=r(c.diffusion, n_block=depth["diffusion"]),
             atom=r(c.atom, n_block=depth["atom"]), confidence=r(c.confidence, n_block=depth["confidence"]))


def foldray_case(work: Path, reference: str, n_token: int, n_sample: int, n_step: int,
                 depth: dict, compile_blocks: bool = False) -> dict:
    """foldray on the same features with the reference's weights (converted by the parent),
    loaded tensor by tensor so loading leaves no second copy behind. `compile_blocks`
    (RuntimeConfig.compile): compile, then one untimed warm-up forward (its seconds are
    reported as compile_seconds), then the timed one: the steady state of a batch of jobs."""
    import numpy as np
    import torch
    from safetensors import safe_open

    from foldray.features.batch import collate
    from foldray.model.alphafold3 import AlphaFold3

    torch.manual_seed(0)
    model = AlphaFold3(foldray_config(reference, depth)).eval()
    params = dict(model.state_dict(keep_vars=True))
    with safe_open(str(work / f"foldray_weights-{reference}.safetensors"), "pt") as f, torch.no_grad():
        for key in f.keys():  # noqa: SIM118 (safe_open is no dict)
            params[key].copy_(f.get_tensor(key))
    features = dict(np.load(work / f"features-{n_token}.npz"))
    batch = collate([features], token_buckets=None, atom_buckets=None)
    parts = (lambda: model.run_trunk(batch, n_cycle=1),
             lambda trunk: model.sample(batch, trunk, n_sample=n_sample, n_step=n_step),
             lambda trunk, x: model.confidence(batch, trunk, x))
    compile_seconds = None
    with torch.no_grad():
        if compile_blocks:
            model.compile_blocks()
            started = time.perf_counter()
            trunk = parts[0]()
            parts[2](trunk, parts[1](trunk))
            compile_seconds = time.perf_counter() - started
        row, trunk = _timed_forward(*parts)
    if compile_blocks:
        row["compile_seconds"] = compile_seconds
    np.savez(work / f"trunk-foldray-{n_token}.npz", s=trunk.s[0].numpy(), z=trunk.z[0].numpy())
    row["n_params"] = sum(p.numel() for p in model.parameters())
    return row


def featurize_cropped(n_token: int, out: Path) -> int:
    """A real protein (shared/data/inputs/1qgi.json, chain A) cropped to its first n_token
    residues, featurized by foldray (no MSA, no templates); returns the atom count."""
    import numpy as np

    from foldray.features.pipeline import featurize_job
    from foldray.inputs.af3_json import parse_af3_json

    data = json.loads((ROOT.parent / "shared" / "data" / "inputs" / PROTEIN).read_text())
    sequence = next(s["protein"]["sequence"] for s in data["sequences"] if "protein" in s)
    if len(sequence) < n_token:
        sequence = (sequence * (n_token // len(sequence) + 1))
    text = json.dumps({"dialect": "alphafold3", "version": 2, "name": f"crop{n_token}",
                       "modelSeeds": [1], "sequences": [{"protein": {
                           "id": "A", "sequence": sequence[:n_token], "unpairedMsa": "",
                           "pairedMsa": "", "templates": []}}]})
    (job,) = parse_af3_json(text)
    features = featurize_job(job, with_targets=False).features
    np.savez(out, **features)
    return int(features["ref_pos"].shape[0])


def _subprocess_row(python: str, args: list[str]) -> dict:
    result = subprocess.run([python, __file__, *args], capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        return {"error": (result.stderr.strip().splitlines() or ["no output"])[-1]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def _trunk_agreement(work: Path, reference: str, n_token: int) -> dict:
    """max |foldray - reference| / max |reference| of the trunk's s and z: proof that both
    sides computed the same thing."""
    import numpy as np

    ours = np.load(work / f"trunk-foldray-{n_token}.npz")
    theirs = np.load(work / f"trunk-{reference}-{n_token}.npz")
    return {k: float(np.abs(ours[k] - theirs[k]).max() / np.abs(theirs[k]).max()) for k in ("s", "z")}


def compare_main(reference: str, tokens: list[int], *, n_sample: int, n_step: int, threads: int,
                 depth: str, label: str, compile_blocks: bool = False) -> None:
    """foldray vs `reference`, one fresh subprocess per side and size; writes
    benchmarks/results/model_forward-compare-cpu.json with foldray/reference ratios, the rows
    under runs[label] (so a "before" run survives an "after" one)."""
    import torch

    from foldray.io.import_weights import convert, read_reference_checkpoint

    depths = REDUCED_DEPTH if depth == "reduced" else RELEASED_DEPTH
    venv = REFERENCE_VENVS[reference]
    ref_python = venv / "bin" / "python"
    out = ROOT / "benchmarks" / "results" / "model_forward-compare-cpu.json"
    previous = json.loads(out.read_text()) if out.exists() else {}
    references = dict(previous.get("references", {}))
    if not ref_python.exists() or (reference == "protenix" and "protenix" not in _named_configs()):
        references[reference] = {"status": "not available", "venv": str(venv)}
        print(f"{reference}: not available (no {venv} or no foldray full-{reference} config)")
    else:
        work = Path(f"/tmp/foldray-forward-compare-{reference}-{depth}-{label}")
        work.mkdir(parents=True, exist_ok=True)
        common = ["--samples", str(n_sample), "--steps", str(n_step), "--threads", str(threads),
                  "--depth", depth, "--work", str(work)]
        rows = []
        for n_token in tokens:
            n_atom = featurize_cropped(n_token, work / f"features-{n_token}.npz")
            ref_row = _subprocess_row(str(ref_python), ["--compare-case", f"{reference}:{n_token}", *common])
            converted = work / f"foldray_weights-{reference}.safetensors"
            if "error" not in ref_row and not converted.exists():
                from safetensors.torch import save_file

                state = convert(reference, read_reference_checkpoint(
                    str(work / f"{reference}_weights.safetensors")), foldray_config(reference, depths))
                save_file({k: v.contiguous() for k, v in state.items()}, str(converted))
                del state
            compile_arg = ["--foldray-compile"] if compile_blocks else []
            ours = _subprocess_row(sys.executable, ["--compare-case", f"foldray-{reference}:{n_token}",
                                                    *common, *compile_arg])
            row = {"n_token": n_token, "n_atom": n_atom, "foldray": ours, reference: ref_row}
            if "error" not in ours and "error" not in ref_row:
                row["ratio_seconds"] = ours["seconds"] / ref_row["seconds"]
                row["ratio_cpu_seconds"] = ours["cpu_seconds"] / ref_row["cpu_seconds"]
                row["ratio_peak_mem"] = ours["peak_mem_bytes"] / ref_row["peak_mem_bytes"]
                row["ratio_forward_mem"] = ours["forward_mem_bytes"] / ref_row["forward_mem_bytes"]
                row["trunk_rel_diff"] = _trunk_agreement(work, reference, n_token)
                ours_gib, ref_gib = ours["peak_mem_bytes"] / 2**30, ref_row["peak_mem_bytes"] / 2**30
                print(f"{n_token:4d} tokens: foldray {ours['seconds']:7.2f} s {ours_gib:5.2f} GiB"
                      f" | {reference} {ref_row['seconds']:7.2f} s {ref_gib:5.2f} GiB"
                      f" | ratio {row['ratio_seconds']:.2f} time ({row['ratio_cpu_seconds']:.2f} cpu),"
                      f" {row['ratio_peak_mem']:.2f} peak,"
                      f" {row['ratio_forward_mem']:.2f} forward mem | trunk rel diff {row['trunk_rel_diff']}",
                      flush=True)
            else:
                print(f"{n_token:4d} tokens: foldray {ours.get('error', 'ok')} | {reference} "
                      f"{ref_row.get('error', 'ok')}", flush=True)
            rows.append(row)
        version = subprocess.run([str(ref_python), "-c", f"import importlib.metadata as m; "
                                  f"print(m.version('{reference}'), m.version('torch'))"],
                                 capture_output=True, text=True).stdout.split()
        runs = dict(references.get(reference, {}).get("runs", {}))
        runs[label] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": rows}
        references[reference] = {
            "status": "ok", "version": version[0] if version else None,
            "reference_torch": version[1] if len(version) > 1 else None,
            "foldray_config": f"full-{reference}", "depth": depth, "blocks": depths, "runs": runs}
    result = {"name": "model_forward-compare", "device": "cpu", "cpu": cpu_model(),
              "torch": torch.__version__, "threads": threads, "git_sha": git_sha(),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "input": f"shared/data/inputs/{PROTEIN} chain A, first N residues, no MSA",
              "forward": f"trunk (1 cycle) + sampler ({n_step} steps, {n_sample} samples) + confidence head, "
                         "fp32, torch.no_grad",
              "references": references}
    latest = json.loads(out.read_text()).get("references", {}) if out.exists() else {}
    for name, entry in latest.items():     # keep other runs written meanwhile (parallel labels)
        if name == reference and "runs" in entry and "runs" in references[name]:
            references[name]["runs"] = {**entry["runs"], **references[name]["runs"]}
        elif name != reference:
            references[name] = entry
    for name in ("protenix", "openfold3"):
        if name not in references and name != reference:
            references[name] = {"status": "not run"}
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {out}")


def _named_configs() -> list[str]:
    from foldray.model.config import NAMED_CONFIGS

    return [name.removeprefix("full-") for name in NAMED_CONFIGS if name.startswith("full-")]


def compare_case(case: str, args: argparse.Namespace) -> dict:
    """One side at one size, in this (fresh) process."""
    import torch

    torch.set_num_threads(args.threads)
    side, n_token = case.split(":")
    depth = REDUCED_DEPTH if args.depth == "reduced" else RELEASED_DEPTH
    if side == "openfold3":
        return openfold3_case(args.work, int(n_token), args.samples, args.steps, depth)
    if side == "protenix":
        return protenix_case(args.work, int(n_token), args.samples, args.steps, depth)
    if side.startswith("foldray-"):
        return foldray_case(args.work, side.removeprefix("foldray-"), int(n_token), args.samples,
                            args.steps, depth, compile_blocks=args.foldray_compile)
    raise ValueError(f"no runner for {side!r}")



def _references(text: str) -> list[str]:
    """--compare's value: one reference or a comma list of them, e.g. openfold3,protenix."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in REFERENCE_VENVS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"unknown reference(s) {unknown or text!r}; "
                                         f"choose from {', '.join(REFERENCE_VENVS)}")
    return names


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tokens", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--configs", nargs="+", default=["tiny", "full"])
    parser.add_argument("--samples", type=int, default=1)
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)  # internal: one case
    parser.add_argument("--compare", default=None, type=_references,
                        help="foldray vs these references, side by side (CPU): openfold3, protenix "
                             "or a comma list of both")
    parser.add_argument("--depth", default="reduced", choices=["reduced", "full"],
                        help="with --compare: released depths, or the reduced-depth full-width stack")
    parser.add_argument("--threads", type=int, default=2, help="with --compare: torch threads, both sides")
    parser.add_argument("--steps", type=int, default=4, help="with --compare: sampler steps")
    parser.add_argument("--label", default="current", help="with --compare: name of this run in the JSON")
    parser.add_argument("--foldray-compile", action="store_true",
                        help="with --compare: foldray with RuntimeConfig.compile, timed after a warm-up")
    parser.add_argument("--compare-case", default=None, help=argparse.SUPPRESS)   # internal
    parser.add_argument("--work", type=Path, default=None, help=argparse.SUPPRESS)  # internal
    args = parser.parse_args()
    if args.compare_case:
        print(json.dumps(compare_case(args.compare_case, args)))
        return
    if args.compare:
        for reference in args.compare:
            compare_main(reference, args.tokens, n_sample=args.samples, n_step=args.steps,
                         threads=args.threads, depth=args.depth,
                         label=args.label, compile_blocks=args.foldray_compile)
        return
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

    out = ROOT / "benchmarks" / "results" / f"model_forward-{args.device.split(':')[0]}.json"
    out.write_text(json.dumps({"name": "model_forward", "device": args.device,
                               "cpu": cpu_name(),
                               "torch": torch.__version__, "git_sha": git_sha(), "rows": rows}, indent=2))
    print(f"-> {out}")


if __name__ == "__main__":
    main()
