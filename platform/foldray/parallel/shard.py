"""A pair representation split by rows over the workers of a torch.distributed group.

Each of P workers holds rows [rank * R, (rank + 1) * R) of z [N, N, c] (R = N / P; callers
pad N to a multiple of P with masked tokens, which every op ignores). Row-local work needs
no communication; the rest moves data in three patterns, all collective (every rank calls
them in the same order):
- `transpose`: row-sharded z -> row-sharded z^T with one all-to-all (what column-wise ops
  need: incoming triangle update, ending-node attention);
- `gather_rows`: every rank gets all rows of a small tensor (attention biases: c = heads);
- `ring`: each rank's block broadcast in turn, so a product over all rows never holds more
  than one block beside the local ones (the triangle update's sum over k).
Works with NCCL (GPUs) and gloo (CPUs); no Ray here (foldray.actors starts the workers).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class PairShard:
    """This worker's place in the group and the (padded) token count N."""

    rank: int
    world: int
    n_token: int
    group: dist.ProcessGroup | None = None

    def __post_init__(self) -> None:
        if self.n_token % self.world:
            raise ValueError(f"n_token={self.n_token} is not a multiple of world={self.world}: pad it "
                             "(padded_size)")

    @property
    def rows(self) -> int:
        return self.n_token // self.world

    @property
    def row_slice(self) -> slice:
        return slice(self.rank * self.rows, (self.rank + 1) * self.rows)

    def gather_rows(self, x: Tensor, dim: int = -3) -> Tensor:
        """[.., R, ..] on every rank -> [.., N, ..] on every rank (concatenated along `dim`)."""
        if self.world == 1:
            return x
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(self.world)]
        dist.all_gather(parts, x, group=self.group)
        return torch.cat(parts, dim=dim)

    def transpose(self, z_rows: Tensor) -> Tensor:
        """Rows of z [*, R, N, c] -> the same rows of z^T [*, R, N, c] (z^T_ij = z_ji)."""
        if self.world == 1:
            return z_rows.transpose(-2, -3).contiguous()
        # [P, *, R, R, c]: block r (columns of rank r) goes to rank r. all_to_all_single, not
        # all_to_all: gloo lacks the list form before PyTorch 2.12.
        blocks = torch.stack(z_rows.split(self.rows, dim=-2))
        received = torch.empty_like(blocks)
        dist.all_to_all_single(received, blocks, group=self.group)   # from rank r: z[rows_r, my cols]
        return torch.cat(received.unbind(0), dim=-3).transpose(-2, -3).contiguous()

    def ring(self, x: Tensor) -> Iterator[tuple[int, Tensor]]:
        """(source rank, its `x`) for every rank in turn; `x` must have one shape everywhere."""
        if self.world == 1:
            yield 0, x
            return
        x = x.contiguous()
        for source in range(self.world):
            block = x if source == self.rank else torch.empty_like(x)
            dist.broadcast(block, src=_global_rank(source, self.group), group=self.group)
            yield source, block


def padded_size(n_token: int, world: int) -> int:
    """The smallest multiple of `world` holding n_token tokens."""
    return -(-n_token // world) * world


def _global_rank(group_rank: int, group: dist.ProcessGroup | None) -> int:
    return group_rank if group is None else dist.get_global_rank(group, group_rank)
