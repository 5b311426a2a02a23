"""Protenix's constraint embedder: restraints (features/constraints.py) as a pair update.

Why: Protenix's constraint model conditions its trunk on pocket and contact restraints by
adding linear projections of raw-distance pair features to z_init, after the relative
position and token-bond terms (Protenix `get_pairformer_output`). Same computation here, so
its weights import (io/import_protenix.py); `ModelConfig.constraint_embedder` switches it on.

Protenix also embeds substructure constraints with a small transformer over all N_token^2
pairs. foldray takes no substructure input, so that feature is always "none" (all zero), and
on an all-equal input every pair gets the same vector: attention over equal keys returns the
common value, so the transformer reduces to value projection, output projection, layer norms
and feed-forward on one vector. That constant is computed from the imported weights exactly
(query/key projections and the input projection of a zero input do not enter it).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from foldray.model.primitives import LinearNoBias

# feature -> channels (as foldray.features.constraints writes them) and the module reading it
FEATURES = (("pocket", "constraint_pocket", 1), ("contact", "constraint_contact", 2),
            ("contact_atom", "constraint_contact_atom", 2))


class _SubstructureLayer(nn.Module):
    """One post-norm transformer encoder layer (ReLU feed-forward x4) on equal positions."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.attn_v = nn.Linear(hidden, hidden)
        self.attn_out = nn.Linear(hidden, hidden)
        self.norm1 = nn.LayerNorm(hidden, eps=1e-5)
        self.ff_in = nn.Linear(hidden, 4 * hidden)
        self.ff_out = nn.Linear(4 * hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden, eps=1e-5)

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm1(x + self.attn_out(self.attn_v(x)))
        return self.norm2(x + self.ff_out(torch.relu(self.ff_in(x))))


class SubstructureConstant(nn.Module):
    """The substructure embedder's output for "no substructure": one [c_z] vector."""

    def __init__(self, hidden: int, c_z: int, n_layer: int = 1) -> None:
        super().__init__()
        self.hidden = hidden
        self.layers = nn.ModuleList(_SubstructureLayer(hidden) for _ in range(n_layer))
        self.out = LinearNoBias(hidden, c_z)

    def forward(self, like: Tensor) -> Tensor:
        x = torch.zeros(self.hidden, dtype=self.out.weight.dtype, device=like.device)
        for layer in self.layers:
            x = layer(x)
        return self.out(x).to(like.dtype)


class ConstraintEmbedder(nn.Module):
    """z_init += pocket(f_pocket) + contact(f_contact) + contact_atom(f_contact_atom) [+ constant].

    Absent features (a batch with no restraints) count as zeros, as Protenix's featurizer
    writes them; the zero-initialised projections of a fresh model add nothing either.
    """

    def __init__(self, c_z: int, substructure_hidden: int = 0) -> None:
        super().__init__()
        self.pocket = LinearNoBias(1, c_z, zero_init=True)
        self.contact = LinearNoBias(2, c_z, zero_init=True)
        self.contact_atom = LinearNoBias(2, c_z, zero_init=True)
        self.substructure = SubstructureConstant(substructure_hidden, c_z) if substructure_hidden else None

    def forward(self, features: dict[str, Tensor], z: Tensor) -> Tensor:
        for module_name, feature, _ in FEATURES:
            if feature in features:
                z = z + getattr(self, module_name)(features[feature].to(z.dtype))
        if self.substructure is not None:
            z = z + self.substructure(z)
        return z
