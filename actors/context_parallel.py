"""One complex across several devices on Ray: P workers in a placement group, joined in one
torch.distributed group (NCCL with a GPU each, gloo on CPUs), running a sharded function.

    results = run_sharded(fn, world=2, args=(...), num_gpus=1)   # fn(rank, world, *args)

The placement group holds the workers' resources before any of them starts (PACK: one
node while it fits, across nodes otherwise; STRICT_PACK to forbid that), rank 0's node
address and a free port there make the rendezvous, and the workers and the group are
removed afterwards whatever happened, so a failed job leaves nothing reserved.
The library half (what a worker runs) is foldray.parallel; this module only places it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy


@ray.remote(num_cpus=0)
class ShardWorker:
    """One rank: joins the group once, then runs what it is given."""

    def rendezvous(self) -> tuple[str, int]:
        from foldray.parallel.local import free_port

        return ray.util.get_node_ip_address(), free_port()

    def join(self, rank: int, world: int, address: str, port: int, backend: str) -> None:
        from foldray.parallel.local import init_group

        init_group(rank, world, address, port, backend)

    def run(self, fn: Callable[..., Any], rank: int, world: int, args: tuple) -> Any:
        return fn(rank, world, *args)

    def setup(self, fn: Callable[..., Any], rank: int, world: int, args: tuple) -> None:
        """Keep fn(rank, world, *args) (a loaded model) for the calls of `run_kept`."""
        self.kept = fn(rank, world, *args)

    def run_kept(self, fn: Callable[..., Any], rank: int, world: int, args: tuple) -> Any:
        return fn(self.kept, rank, world, *args)

    def leave(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def run_sharded(fn: Callable[..., Any], world: int, args: tuple = (), *, num_cpus: float = 1.0,
                num_gpus: float = 0.0, strategy: str = "PACK", placement_timeout_s: float = 120.0
                ) -> list[Any]:
    """[fn(rank, world, *args) for each rank], run by `world` Ray workers in one group."""
    bundle = {"CPU": num_cpus, **({"GPU": num_gpus} if num_gpus else {})}
    group = placement_group([dict(bundle) for _ in range(world)], strategy=strategy)
    workers: list[Any] = []
    try:
        ready, _ = ray.wait([group.ready()], timeout=placement_timeout_s)
        if not ready:
            raise RuntimeError(f"the cluster cannot place {world} workers of {bundle} ({strategy}) "
                               f"within {placement_timeout_s:.0f} s")
        workers = [ShardWorker.options(
            num_cpus=num_cpus, num_gpus=num_gpus,
            scheduling_strategy=PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=rank),
        ).remote() for rank in range(world)]
        address, port = ray.get(workers[0].rendezvous.remote())
        backend = "nccl" if num_gpus else "gloo"
        ray.get([w.join.remote(rank, world, address, port, backend) for rank, w in enumerate(workers)])
        try:
            return ray.get([w.run.remote(fn, rank, world, args) for rank, w in enumerate(workers)])
        finally:
            ray.get([w.leave.remote() for w in workers])
    finally:
        for worker in workers:
            ray.kill(worker)
        remove_placement_group(group)


class ShardGroup:
    """`world` workers in one placement group and one torch.distributed group, started once
    and kept across jobs: `setup` runs once per worker (load the checkpoint), `run` once per
    job with what setup returned. `close()` removes workers and placement group."""

    def __init__(self, world: int, *, num_cpus: float = 1.0, num_gpus: float = 0.0, strategy: str = "PACK",
                 placement_timeout_s: float = 120.0, name: str = "") -> None:
        self.world = world
        bundle = {"CPU": num_cpus, **({"GPU": num_gpus} if num_gpus else {})}
        self._group: Any = placement_group([dict(bundle) for _ in range(world)], strategy=strategy, name=name)
        self._workers: list[Any] = []
        try:
            ready, _ = ray.wait([self._group.ready()], timeout=placement_timeout_s)
            if not ready:
                raise RuntimeError(f"the cluster cannot place {world} workers of {bundle} ({strategy}) "
                                   f"within {placement_timeout_s:.0f} s")
            self._workers = [ShardWorker.options(
                num_cpus=num_cpus, num_gpus=num_gpus,
                scheduling_strategy=PlacementGroupSchedulingStrategy(self._group,
                                                                     placement_group_bundle_index=rank),
            ).remote() for rank in range(world)]
            address, port = ray.get(self._workers[0].rendezvous.remote())
            backend = "nccl" if num_gpus else "gloo"
            ray.get([w.join.remote(rank, world, address, port, backend)
                     for rank, w in enumerate(self._workers)])
        except BaseException:
            self.close()
            raise

    def setup(self, fn: Callable[..., Any], args: tuple = ()) -> None:
        shared = ray.put(args)
        ray.get([w.setup.remote(fn, rank, self.world, shared) for rank, w in enumerate(self._workers)])

    def run(self, fn: Callable[..., Any], args: tuple = ()) -> list[Any]:
        """[fn(kept, rank, world, *args) for each rank]; args go to the object store once."""
        shared = ray.put(args)
        return ray.get([w.run_kept.remote(fn, rank, self.world, shared)
                        for rank, w in enumerate(self._workers)])

    def close(self) -> None:
        for worker in self._workers:
            ray.kill(worker)
        self._workers = []
        if self._group is not None:
            remove_placement_group(self._group)
            self._group = None


def remove_groups(name: str) -> int:
    """Remove every live placement group called `name`; how many. A placement group made by
    an actor lives until its driver exits, not until the actor dies: the engine removes its
    named groups after a run, and a restarted stage those its dead predecessor left."""
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup

    removed = 0
    for group_id, entry in ray.util.placement_group_table().items():
        if entry.get("name") == name and entry.get("state") != "REMOVED":
            remove_placement_group(PlacementGroup(PlacementGroupID(bytes.fromhex(group_id))))
            removed += 1
    return removed
