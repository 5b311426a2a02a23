"""Rebuild random reference checkpoints from the shape fixtures in tests/fixtures/import_shapes.

The fixtures are written by benchmarks/equivalence/variant_shapes.py inside a reference's own
virtual environment (see tests/fixtures/import_shapes/README.md); this is the reading side, for
tests/lib/io/test_import_variants.py. It lives under tests/ because tests never import
benchmarks; the script keeps its own writer of the reference checkpoint format, since it runs
where neither foldray nor the tests are installed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

import torch


def load_fixture(path: str | Path) -> dict[str, object]:
    return json.loads(Path(path).read_text())


def expand(fixture: Mapping[str, object]) -> dict[str, tuple[int, ...]]:
    """The fixture's names and shapes, block patterns unfolded, tied twins included."""
    shapes: dict[str, tuple[int, ...]] = {}
    for name, entry in fixture["shapes"].items():
        if isinstance(entry, dict):
            for i in range(entry["blocks"]):
                shapes[name.replace(".blocks.*.", f".blocks.{i}.")] = tuple(entry["shape"])
        else:
            shapes[name] = tuple(entry)
    for twin, source in fixture.get("ties", {}).items():
        shapes.update({twin + k[len(source):]: s for k, s in list(shapes.items()) if k.startswith(source)})
    return shapes


def random_state(fixture: Mapping[str, object], seed: int = 0,
                 shared_buffer: bool = False) -> dict[str, torch.Tensor]:
    """A random (or, with `shared_buffer`, all-zero views of one buffer: full-size shapes at the
    memory of the largest tensor) state dict of the fixture's variant. Stored values (distance
    bins) are restored; tied twins share their tensor as in the reference."""
    shapes = expand({**fixture, "ties": {}})
    if shared_buffer:
        base = torch.zeros(max(math.prod(s) for s in shapes.values()))
        state = {k: base[:math.prod(s)].view(s) for k, s in shapes.items()}
    else:
        g = torch.Generator().manual_seed(seed)
        state = {}
        for name, shape in shapes.items():
            noise = torch.randn(shape, generator=g)
            if len(shape) >= 2:       # matrices ~ N(0, 1/fan_in); norm scales ~ 1; biases small
                state[name] = noise / math.sqrt(shape[-2] if len(shape) == 3 else shape[-1])
            elif name.endswith("weight"):
                state[name] = 1.0 + 0.1 * noise
            else:
                state[name] = 0.1 * noise
    for name, value in fixture.get("values", {}).items():
        state[name] = torch.tensor(value, dtype=torch.float32)
    for twin, source in fixture.get("ties", {}).items():
        state.update({twin + k[len(source):]: v for k, v in list(state.items()) if k.startswith(source)})
    return state


def save_reference_checkpoint(reference: str, state: Mapping[str, torch.Tensor], path: str | Path) -> None:
    """Save as the reference project saves its checkpoints (torch zip format)."""
    if reference == "openfold3":      # released OpenFold3 .pt: the model's state dict itself
        torch.save(dict(state), path)
    elif reference == "protenix":     # Protenix trainer: DDP-wrapped model under "model"
        torch.save({"model": {f"module.{k}": v for k, v in state.items()}, "step": 0}, path)
    else:
        raise ValueError(f"unknown reference {reference!r}")
