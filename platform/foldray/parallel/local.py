"""Run one function on P local worker processes joined in a torch.distributed group.

For one machine without Ray (tests, benchmarks, `foldray predict --devices N` on a
workstation): each worker gets its rank, joins a gloo (CPU) or NCCL (one GPU per rank)
group over a free localhost port, runs `fn(shard_rank, world, *args)` and sends back what
it returns. foldray.actors does the same on Ray workers in a placement group.
"""

from __future__ import annotations

import io
import os
import queue
import socket
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def init_group(rank: int, world: int, address: str, port: int, backend: str) -> None:
    """Join the default process group (what each worker does first)."""
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = address, str(port)
    if backend == "nccl":
        torch.cuda.set_device(rank % torch.cuda.device_count())
    dist.init_process_group(backend, rank=rank, world_size=world)


def _worker(rank: int, world: int, port: int, backend: str, fn: Callable[..., Any], args: tuple,
            results: Any) -> None:
    init_group(rank, world, "127.0.0.1", port, backend)
    try:
        results.put((rank, _to_bytes(fn(rank, world, *args)), None))
    except BaseException as err:   # noqa: BLE001  (reported to the parent, which raises)
        results.put((rank, None, f"{type(err).__name__}: {err}"))
        raise
    finally:
        dist.destroy_process_group()


def run_local(fn: Callable[..., Any], world: int, *args: Any, backend: str = "gloo",
              threads_per_worker: int | None = None) -> list[Any]:
    """[fn(0, world, *args), ..., fn(world - 1, world, *args)], each in its own process.

    `fn` must be importable (a module-level function); it returns tensors, numbers, strings
    and lists/tuples/dicts of them (what `torch.load(weights_only=True)` reads back).
    """
    context = mp.get_context("spawn")
    results = context.Queue()
    port = free_port()
    if threads_per_worker is not None:
        os.environ["OMP_NUM_THREADS"] = str(threads_per_worker)
    processes = [context.Process(target=_worker, args=(rank, world, port, backend, fn, args, results),
                                 daemon=True) for rank in range(world)]
    for process in processes:
        process.start()
    collected: dict[int, Any] = {}
    errors = []
    while len(collected) < world:
        try:
            rank, value, error = results.get(timeout=1.0)
        except queue.Empty:
            dead = [r for r, p in enumerate(processes) if p.exitcode not in (None, 0) and r not in collected]
            if dead:   # died without reporting (killed, crashed in init): the others would wait forever
                for process in processes:
                    process.kill()
                raise RuntimeError(f"worker(s) {dead} exited with codes "
                                   f"{[processes[r].exitcode for r in dead]} before reporting") from None
            continue
        collected[rank] = None if value is None else torch.load(io.BytesIO(value), weights_only=True)
        if error:
            errors.append(f"rank {rank}: {error}")
    for process in processes:
        process.join()
    if errors:
        raise RuntimeError("; ".join(errors))
    return [collected[rank] for rank in range(world)]


def _to_bytes(value: Any) -> bytes:
    """Results travel by value (torch.save; read back with weights_only=True): a tensor sent
    through a multiprocessing queue as shared memory dies with the worker that made it."""
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()
