"""Shared inputs for model tests: real featurized jobs and structures, batched."""

import functools
import math

import numpy as np
import torch
from torch import nn

from foldray.features.batch import collate, pad_features
from foldray.features.pipeline import FeaturizedJob, featurize_job
from foldray.inputs.af3_json import parse_af3_json
from foldray.inputs.mmcif_input import job_from_structure_file
from tests.data_paths import INPUTS, STRUCTURES


def featurized_inputs(*names: str) -> dict[str, dict[str, np.ndarray]]:
    """Features of example inputs (AF3 JSON files in shared/data/inputs) by file name."""
    out = {}
    for name in names:
        path = INPUTS / name
        (job,) = parse_af3_json(path.read_text(), source=str(path))
        out[name] = featurize_job(job).features
    return out


def randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    """Replace the zero / constant inits so every path carries signal (and gradient)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=generator) / math.sqrt(p.shape[-1]))
            else:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=generator))
    return module


@functools.cache
def featurized_structure(name: str) -> FeaturizedJob:
    """A shared/data/structures entry featurized with its ground truth."""
    path = STRUCTURES / f"{name}.cif"
    return featurize_job(job_from_structure_file(path.read_text(), source=str(path)))


def structure_batch(name: str, pad_tokens: int = 0, pad_atoms: int = 0):
    """Batched features [1, ...] padded by the given amounts, ground truth coords and mask."""
    fj = featurized_structure(name)
    n_token, n_atom = fj.n_tokens, len(fj.targets.mask)
    feats = pad_features(fj.features, n_token=n_token + pad_tokens, n_atom=n_atom + pad_atoms)
    batch = collate([feats], token_buckets=None, atom_buckets=None)
    x = torch.zeros(1, n_atom + pad_atoms, 3)
    x[0, :n_atom] = torch.from_numpy(fj.targets.coords)
    mask = torch.zeros(1, n_atom + pad_atoms, dtype=torch.bool)
    mask[0, :n_atom] = torch.from_numpy(fj.targets.mask)
    return batch, x, mask


def random_rotation(seed: int) -> torch.Tensor:
    """A proper rotation matrix (det +1) from a seeded QR decomposition."""
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(seed)))
    return q * torch.sign(torch.linalg.det(q))
