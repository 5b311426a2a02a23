"""Reference model variants as tensor names and shapes, and random checkpoints built from them.

Why: `foldray import-weights` reads a checkpoint's architecture from the checkpoint itself, so
it must be tried on every published variant, but full-size checkpoints are hundreds of MB and
their reference packages are not installed in CI. This script runs INSIDE a reference
virtual environment (openfold3 0.5.0 or protenix 2.0.0 from PyPI; see run_equivalence.py's
`ensure_venv` / `ensure_protenix_venv`), builds a variant with the reference's own config
code, and writes what CI needs to rebuild an equivalent random checkpoint:
tests/fixtures/import_shapes/<reference>_<variant>.json (names -> shapes, collapsed over block
indices; the values of small frozen tensors such as Protenix's distance bins; tensors that
the reference saves twice under two names). With `--checkpoint` it also saves a random-weight
checkpoint the way that project saves its own (OpenFold3: the plain state dict of its
released `.pt` files; Protenix: `{"model": {"module.<name>": ...}, "step": N}` as its
trainer writes), for a one-off local import check against the real reference code.

The reading side (`expand`, `random_state`, and a copy of `save_reference_checkpoint`) is
tests/import_shapes.py: tests never import benchmarks, and this script runs where neither
foldray nor the tests are installed.

Usage (in the reference venv):
    python variant_shapes.py openfold3 small OUT_DIR [--checkpoint]
    python variant_shapes.py protenix protenix_mini_default_v0.5.0 OUT_DIR [--checkpoint]
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Mapping
from pathlib import Path

import torch

BLOCK = re.compile(r"\.blocks\.(\d+)\.")
PACKAGES = {"openfold3": "openfold3==0.5.0", "protenix": "protenix==2.0.0"}
OPENFOLD3_VARIANTS = ("small", "full")
PROTENIX_VARIANTS = ("protenix_base_default_v1.0.0", "protenix_base_20250630_v1.0.0", "protenix-v2",
                     "protenix_mini_default_v0.5.0", "protenix_tiny_default_v0.5.0",
                     "protenix_base_constraint_v0.5.0")
MAX_VALUE_NUMEL = 64       # frozen tensors up to this size are stored with their values


# ------------------------------------------------------------------ fixture format (torch only)

def collapse(shapes: Mapping[str, list[int]]) -> dict[str, object]:
    """{name: shape} -> {name: shape} with `.blocks.<i>.` names of equal shape for i = 0..n-1
    folded into one `.blocks.*.` entry: {"shape": [...], "blocks": n}."""
    groups: dict[str, dict[int, list[int]]] = {}
    out: dict[str, object] = {}
    for name, shape in shapes.items():
        found = BLOCK.findall(name)
        if len(found) != 1:
            out[name] = list(shape)
            continue
        pattern = BLOCK.sub(".blocks.*.", name)
        groups.setdefault(pattern, {})[int(found[0])] = list(shape)
    for pattern, by_index in groups.items():
        first = next(iter(by_index.values()))
        if sorted(by_index) == list(range(len(by_index))) and all(s == first for s in by_index.values()):
            out[pattern] = {"shape": first, "blocks": len(by_index)}
        else:
            for i, shape in by_index.items():
                out[pattern.replace(".blocks.*.", f".blocks.{i}.")] = shape
    return dict(sorted(out.items()))


def save_reference_checkpoint(reference: str, state: Mapping[str, torch.Tensor], path: str | Path) -> None:
    """Save as the reference project saves its checkpoints (torch zip format)."""
    if reference == "openfold3":      # released OpenFold3 .pt: the model's state dict itself
        torch.save(dict(state), path)
    elif reference == "protenix":     # Protenix trainer: DDP-wrapped model under "model"
        torch.save({"model": {f"module.{k}": v for k, v in state.items()}, "step": 0}, path)
    else:
        raise ValueError(f"unknown reference {reference!r}")


# ------------------------------------------------------------------ inside a reference venv

def _ties(model: torch.nn.Module) -> dict[str, str]:
    """Prefix pairs {twin: source} of tensors the state dict holds twice (OpenFold3's sampler
    keeps a second reference to its diffusion module)."""
    state = model.state_dict(keep_vars=True)
    first: dict[int, str] = {}
    pairs: dict[str, str] = {}
    for name, tensor in state.items():
        ptr = tensor.data_ptr() if tensor.device.type != "meta" else id(tensor)
        if ptr in first and tensor.numel() and state[first[ptr]].shape == tensor.shape:
            pairs[name] = first[ptr]
        else:
            first.setdefault(ptr, name)
    prefixes: dict[str, str] = {}
    for twin, source in pairs.items():
        k = 0
        while twin[len(twin) - k - 1:] == source[len(source) - k - 1:] and k < len(source):
            k += 1
        suffix = source[len(source) - k:]
        head = suffix.split(".", 1)[0] + "."      # keep the module name inside the prefixes
        prefixes[twin[:len(twin) - len(suffix)] + head] = source[:len(source) - len(suffix)] + head
    generated = {t + k[len(s):] for t, s in prefixes.items() for k in state if k.startswith(s)}
    if generated != set(pairs):
        raise RuntimeError("tied tensors do not follow one prefix rule; extend _ties")
    return prefixes


def _frozen_values(model: torch.nn.Module, skip: set[str]) -> dict[str, list]:
    """Small frozen tensors (buffers, parameters without gradient) by name, with their values."""
    trainable = {n for n, p in model.named_parameters(remove_duplicate=False) if p.requires_grad}
    return {n: t.tolist() for n, t in model.state_dict().items()
            if n not in trainable and n not in skip and 0 < t.numel() <= MAX_VALUE_NUMEL
            and t.is_floating_point() and t.device.type != "meta"}


def openfold3_model(variant: str) -> torch.nn.Module:
    """`full`: the released config; `small`: every width cut down, one block per stack."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from openfold3.projects.of3_all_atom.model import OpenFold3
    from reference_openfold3 import full_config

    cfg = full_config()
    if variant == "small":
        a = cfg.architecture
        a.shared.c_s, a.shared.c_z, a.shared.c_s_input = 32, 16, 24 + 65
        for enc in (a.input_embedder.atom_attn_enc, a.diffusion_module.atom_attn_enc):
            enc.c_atom, enc.c_atom_pair, enc.c_hidden, enc.no_heads, enc.no_blocks = 24, 8, 12, 2, 1
        a.input_embedder.atom_attn_enc.c_token = 24
        a.diffusion_module.atom_attn_enc.c_token = 32
        dec = a.diffusion_module.atom_attn_dec
        dec.c_atom, dec.c_atom_pair, dec.c_token, dec.c_hidden, dec.no_heads, dec.no_blocks = (
            24, 8, 32, 12, 2, 1)
        t = a.template
        t.c_t = t.template_pair_embedder.c_out = 8
        s = t.template_pair_stack
        s.c_t, s.c_hidden_tri_att, s.no_heads, s.c_hidden_tri_mul, s.no_blocks = 8, 4, 2, 8, 1
        a.msa.msa_module_embedder.c_m = 8
        m = a.msa.msa_module
        m.c_m, m.c_hidden_msa_att, m.no_heads_msa, m.c_hidden_opm = 8, 4, 2, 4
        m.c_hidden_mul, m.c_hidden_pair_att, m.no_heads_pair, m.no_blocks = 8, 4, 2, 1
        for p in (a.pairformer, a.heads.pairformer_embedding.pairformer):
            p.c_hidden_pair_bias, p.no_heads_pair_bias, p.c_hidden_mul = 8, 4, 8
            p.c_hidden_pair_att, p.no_heads_pair, p.no_blocks = 4, 2, 1
        d = a.diffusion_module
        d.diffusion_module.c_token = 32
        d.diffusion_conditioning.c_fourier_emb = 16
        dt = d.diffusion_transformer
        dt.c_a, dt.c_hidden, dt.no_heads, dt.no_blocks = 32, 8, 4, 1
        return OpenFold3(cfg).eval()
    with torch.device("meta"):
        return OpenFold3(cfg)


def protenix_model(variant: str) -> torch.nn.Module:
    """A published Protenix preset from its own `model_configs`, on the CPU kernels."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import reference_protenix as rp
    from protenix.model.protenix import Protenix

    rp.MODEL_NAME = variant
    return Protenix(rp.build_config(tiny=False)).eval()


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Random trainable parameters (frozen constants such as distance bins keep their values)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1] if p.dim() > 1 else 10))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reference", choices=tuple(PACKAGES))
    parser.add_argument("variant")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--checkpoint", action="store_true",
                        help="also save a random-weight checkpoint in the project's own format")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    variants = OPENFOLD3_VARIANTS if args.reference == "openfold3" else PROTENIX_VARIANTS
    if args.variant not in variants:
        parser.error(f"variant must be one of {', '.join(variants)}")
    model = (openfold3_model if args.reference == "openfold3" else protenix_model)(args.variant)
    ties = _ties(model)
    state = model.state_dict()
    twins = {t + k[len(s):] for t, s in ties.items() for k in state if k.startswith(s)}
    fixture = {
        "reference": args.reference, "package": PACKAGES[args.reference], "variant": args.variant,
        "n_tensors": len(state),
        "n_parameters": int(sum(v.numel() for k, v in state.items() if k not in twins)),
        "ties": ties, "values": _frozen_values(model, twins),
        "shapes": collapse({k: list(v.shape) for k, v in state.items() if k not in twins}),
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.variant if args.variant.startswith(args.reference) else f"{args.reference}_{args.variant}"
    (args.out_dir / f"{stem}.json").write_text(json.dumps(fixture, indent=1) + "\n")
    print(f"{stem}: {len(state)} tensors, {fixture['n_parameters']} parameters, "
          f"{len(fixture['shapes'])} entries")
    if args.checkpoint:
        randomize(model, args.seed)
        save_reference_checkpoint(args.reference, model.state_dict(), args.out_dir / f"{stem}.pt")
        print(f"wrote {args.out_dir / f'{stem}.pt'}")


if __name__ == "__main__":
    main()
