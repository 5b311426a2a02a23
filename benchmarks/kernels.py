"""Per-kernel micro-benchmark: each Triton kernel against its PyTorch reference.

Cases are the model's real shapes at `--tokens` (full config): attention with pair bias
(pairformer, 16 heads x 24), triangle attention (4 heads x 32, bias shared over rows),
diffusion attention (16 heads x 48, bias shared over samples), atom windows (4 x 32, 32
queries x 128 keys), LayerNorm over the pair representation (c_z = 128), the triangle
multiplicative update's fused ops (gated_linear, gated_norm_linear) and whole outgoing module
(c_z = c_hidden = 128), and adaptive LayerNorm (c_a = 768, c_s = 384). Each case reports
forward and forward+backward milliseconds and peak CUDA memory for both implementations,
plus the max relative difference of the outputs. Writes benchmarks/results/kernels-<device>.json.

    python benchmarks/kernels.py [--tokens 256 512] [--dtype bf16|fp32] [--repeat 10]
    python benchmarks/kernels.py --interpret     # CPU smoke test: tiny shapes, the interpreter
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from provenance import git_sha, gpu_name, python_version  # noqa: E402  (benchmarks/provenance.py)


def attention_cases(n: int, n_atom: int, n_sample: int) -> dict[str, dict]:
    """name -> shapes of q [*, H, Q, c], k [*, H, K, c], bias, key mask [*, K]."""
    n_row = min(n, 64)      # triangle attention rows per chunk: the rows share one bias
    n_block = max(1, n_atom // 32)
    return {
        "pairformer_attention": dict(q=(1, 16, n, 24), k=(1, 16, n, 24), bias=(1, 16, n, n), mask=(1, n)),
        "triangle_attention": dict(q=(n_row, 4, n, 32), k=(n_row, 4, n, 32), bias=(1, 4, n, n),
                                   mask=(n_row, n)),
        "diffusion_attention": dict(q=(n_sample, 16, n, 48), k=(n_sample, 16, n, 48), bias=(16, n, n),
                                    mask=None),
        "atom_window_attention": dict(q=(n_block, 4, 32, 32), k=(n_block, 4, 128, 32),
                                      bias=(n_block, 4, 32, 128), mask=(n_block, 128)),
    }


def _inputs(shapes: dict, dtype, device: str, grad: bool):
    import torch

    g = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(shapes["q"], generator=g, device=device, dtype=dtype)
    k = torch.randn(shapes["k"], generator=g, device=device, dtype=dtype)
    v = torch.randn(shapes["k"], generator=g, device=device, dtype=dtype)
    bias = torch.randn(shapes["bias"], generator=g, device=device, dtype=dtype)
    mask = None
    if shapes["mask"] is not None:
        mask = torch.rand(shapes["mask"], generator=g, device=device) > 0.1
    for t in (q, k, v, bias):
        t.requires_grad_(grad)
    return q, k, v, bias, mask


def _measure(fn: Callable[[], object], device: str, repeat: int) -> tuple[float, int, object]:
    """Median milliseconds of fn(), the peak memory one call adds (CUDA; 0 on CPU), and the
    last call's result."""
    import torch

    if device == "cuda":
        fn()                               # warm-up (compiles the Triton kernel)
    times, out = [], None
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    for _ in range(repeat):
        started = time.perf_counter()
        out = fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - started) * 1e3)
    peak = torch.cuda.max_memory_allocated() - base if device == "cuda" else 0
    return sorted(times)[len(times) // 2], peak, out


def run(args: argparse.Namespace) -> list[dict]:
    import torch

    from foldray import kernels

    device = "cpu" if args.interpret else "cuda"
    dtype = torch.float32 if args.interpret or args.dtype == "fp32" else torch.bfloat16
    rows = []
    for n in args.tokens:
        cases = attention_cases(n, n_atom=8 * n, n_sample=args.samples)
        for name, shapes in cases.items():
            for backward in (False, True):
                row = {"name": name, "n_token": n, "backward": backward, "shapes": shapes}
                outputs = {}
                for mode in ("torch", "triton"):
                    q, k, v, bias, mask = _inputs(shapes, dtype, device, backward)

                    def step(mode=mode, q=q, k=k, v=v, bias=bias, mask=mask, backward=backward):
                        with kernels.use(mode), torch.set_grad_enabled(backward):
                            out = kernels.attention(q, k, v, bias, mask)
                            if backward:
                                out.float().square().mean().backward()
                        return out

                    try:
                        ms, peak, out = _measure(step, device, args.repeat)
                        outputs[mode] = out.detach().float()
                        row[mode] = {"ms": ms, "peak_mem_bytes": peak}
                    except torch.cuda.OutOfMemoryError:
                        row[mode] = {"ms": None, "peak_mem_bytes": None, "error": "out of memory"}
                        torch.cuda.empty_cache()
                if len(outputs) == 2:
                    ref = outputs["torch"]
                    row["max_rel_diff"] = ((outputs["triton"] - ref).abs().max()
                                           / ref.abs().max().clamp_min(1e-6)).item()
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "shapes"}), flush=True)
        rows.append(_layer_norm_row(n, dtype, device, args.repeat))
        print(json.dumps(rows[-1]), flush=True)
        for name, make in _fused_cases(n, args.samples, device == "cuda").items():
            for backward in (False, True):
                rows.append(_fused_row(name, make, n, backward, dtype, device, args.repeat))
                print(json.dumps({k: v for k, v in rows[-1].items() if k != "shapes"}), flush=True)
    return rows


def _fused_cases(n: int, n_sample: int, full: bool) -> dict[str, Callable]:
    """name -> make(dtype, device, grad) returning (fn, shapes): the triangle multiplicative
    update ops and module (c_z = c_hidden = 128) and adaptive LayerNorm of the diffusion
    transformer (c_a = 768, c_s = 384, n_sample samples); small channels on CPU."""
    import torch

    from foldray import kernels
    from foldray.model.triangle import TriangleMultiplicationOutgoing

    c_z, c_mul, c_a, c_s = (128, 128, 768, 384) if full else (16, 16, 24, 16)

    def rand(*shape, dtype, device, grad):
        g = torch.Generator(device=device).manual_seed(len(shape) + shape[-1])
        return torch.randn(shape, generator=g, device=device, dtype=dtype).requires_grad_(grad)

    def pair_mask(device):
        mask = torch.ones(n, n, dtype=torch.bool, device=device)
        mask[-max(1, n // 10):] = False
        return mask

    def gated_linear(dtype, device, grad):
        x = rand(n, n, c_z, dtype=dtype, device=device, grad=grad)
        w_g, w_p = (rand(2 * c_mul, c_z, dtype=dtype, device=device, grad=grad) for _ in range(2))
        mask = pair_mask(device)
        return (lambda: kernels.gated_linear(x, w_g, w_p, mask, feature_dim=-3)), {"x": [n, n, c_z]}

    def gated_norm_linear(dtype, device, grad):
        p = rand(c_mul, n, n, dtype=dtype, device=device, grad=False).movedim(0, -1).requires_grad_(grad)
        z = rand(n, n, c_z, dtype=dtype, device=device, grad=grad)
        ln_w, ln_b = rand(c_mul, dtype=dtype, device=device, grad=grad), None
        w_o, w_g = (rand(c_z, k, dtype=dtype, device=device, grad=grad) for k in (c_mul, c_z))
        return (lambda: kernels.gated_norm_linear(p, z, ln_w, ln_b, w_o, w_g)), {"p": [n, n, c_mul]}

    def triangle_mult(dtype, device, grad):
        torch.manual_seed(0)
        module = TriangleMultiplicationOutgoing(c_z, c_mul).to(device=device, dtype=dtype)
        module.requires_grad_(grad)
        z = rand(1, n, n, c_z, dtype=dtype, device=device, grad=grad)
        mask = pair_mask(device)[None]
        return (lambda: module(z, mask)), {"z": [1, n, n, c_z]}

    def ada_layer_norm(dtype, device, grad):
        a = rand(n_sample, n, c_a, dtype=dtype, device=device, grad=grad)
        s = rand(n, c_s, dtype=dtype, device=device, grad=grad)
        w_n, w_sc, b_sc, w_sh = (rand(*shape, dtype=dtype, device=device, grad=grad)
                                 for shape in ((c_s,), (c_a, c_s), (c_a,), (c_a, c_s)))
        return (lambda: kernels.ada_layer_norm(a, s, w_n, None, w_sc, b_sc, w_sh)), {"a": [n_sample, n, c_a]}

    return {"gated_linear": gated_linear, "gated_norm_linear": gated_norm_linear,
            "triangle_mult_outgoing": triangle_mult, "ada_layer_norm": ada_layer_norm}


def _fused_row(name: str, make: Callable, n: int, backward: bool, dtype, device: str, repeat: int) -> dict:
    import torch

    from foldray import kernels

    row: dict = {"name": name, "n_token": n, "backward": backward}
    outs = {}
    for mode in ("torch", "triton"):
        fn, row["shapes"] = make(dtype, device, backward)

        def step(mode=mode, fn=fn):
            with kernels.use(mode), torch.set_grad_enabled(backward):
                out = fn()
                if backward:
                    out.float().square().mean().backward()
            return out

        try:
            ms, peak, out = _measure(step, device, repeat)
            outs[mode] = out.detach().float()
            row[mode] = {"ms": ms, "peak_mem_bytes": peak}
        except torch.cuda.OutOfMemoryError:
            row[mode] = {"ms": None, "peak_mem_bytes": None, "error": "out of memory"}
            torch.cuda.empty_cache()
    if len(outs) == 2:
        row["max_rel_diff"] = ((outs["triton"] - outs["torch"]).abs().max()
                               / outs["torch"].abs().max().clamp_min(1e-6)).item()
    return row


def _layer_norm_row(n: int, dtype, device: str, repeat: int) -> dict:
    import torch

    from foldray import kernels

    g = torch.Generator(device=device).manual_seed(0)
    c = 128 if device == "cuda" else 16                                     # c_z (small on CPU)
    x = torch.randn(n, n, c, generator=g, device=device, dtype=dtype, requires_grad=True)
    w = torch.randn(c, generator=g, device=device, requires_grad=True)
    b = torch.randn(c, generator=g, device=device, requires_grad=True)
    row: dict = {"name": "layer_norm_pair", "n_token": n, "backward": True, "shapes": {"x": [n, n, c]}}
    outs = {}
    for mode in ("torch", "triton"):
        def step(mode=mode):        # as in the model: bf16 activations, fp32 weights, autocast
            with kernels.use(mode), torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
                y = kernels.layer_norm(x, w, b)
                y.float().square().mean().backward()
            return y

        ms, peak, out = _measure(step, device, repeat)
        outs[mode] = out.detach().float()
        row[mode] = {"ms": ms, "peak_mem_bytes": peak}
    row["max_rel_diff"] = ((outs["triton"] - outs["torch"]).abs().max()
                           / outs["torch"].abs().max()).item()
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[256, 512, 768])
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--interpret", action="store_true",
                        help="CPU smoke test under TRITON_INTERPRET=1 (tiny shapes, fp32)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.interpret:
        os.environ["TRITON_INTERPRET"] = "1"       # before triton is imported
        args.tokens, args.repeat, args.samples = [8], 1, 2
    import torch

    if not args.interpret and not torch.cuda.is_available():
        print("benchmarks/kernels.py: no CUDA device here; run it on a GPU machine, "
              "or use --interpret for a CPU smoke test.")
        return 0
    device_name = "interpret" if args.interpret else gpu_name()
    rows = run(args)
    result = {"name": "kernels", "device": device_name, "torch": torch.__version__,
              "git_sha": git_sha(short=False), "python": python_version(),
              "config": {"dtype": "fp32" if args.interpret else args.dtype, "repeat": args.repeat,
                         "n_sample": args.samples}, "rows": rows}
    out = args.out or ROOT / "benchmarks" / "results" / f"kernels-{device_name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    bad = [r["name"] for r in rows if r.get("max_rel_diff", 0) > (1e-4 if args.interpret else 5e-2)]
    if bad:
        print(f"kernel output differs from the reference: {bad}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
