"""Memory planning for one sharded prediction: how many workers and which pair-stack chunk
size a job of N tokens needs, from the model's widths and the memory free per device.

    plan = plan_memory(n_token, config, available_bytes=free, worlds=(1, 2, 4), job="big")
    plan.world, plan.chunk_size       # the fewest workers that fit, the largest chunk there

Why an estimate and not a trial run: a run that does not fit fails after minutes (or takes
the node down on CPU); the estimate costs nothing and says before any work whether the job
can run at all. Per worker, with R = ceil(N / P) rows of z and C = min(chunk, R):

    pair stack  = z's own rows                                   R N c_z
                + row-local work (projections, ring block, LN)   ROW_COPIES R N c_z
                + gathered attention biases (triangle + single)  BIAS_COPIES N^2 (H_tri + H_single)
                + the chunk's transition hidden layer            CHUNK_COPIES C N c_z transition_n
    diffusion   = z's rows and the pair conditioning's rows      DIFFUSION_COPIES R N c_z
    outputs     = gathered whole on the first worker: z, the distogram, PAE and PDE logits
                  N^2 (c_z + bins_distogram + samples (bins_pae + bins_pde))

The peak is the larger of the pair stack (trunk, confidence head) and diffusion, plus the
outputs, which no number of workers lowers (the first worker holds them as one device
does); values times the bytes per value (4 fp32, 2 under bf16 autocast, an approximation:
some tensors stay fp32). Calibration: the pair-stack copies are fitted to the per-worker
peak of the Pairformer pair stack (benchmarks/results/context_parallel-cpu.json, full
widths, 256 and 512 tokens, P = 1, 2, 4, chunk 64 and unchunked): 0.76-1.28x the
measurement. The whole estimate against whole sharded predictions (full widths, 1 block
per stack, 4 samples, chunk 64): 1.17-1.21x on one H200 at 1,024-4,096 tokens
(context_parallel-model-cuda.json), 1.07-1.39x on 16 CPU cores at 256 and 512 tokens,
P = 1, 2, 4 (context_parallel-model-cpu16.json): never below the measurement. A plan fits
when SAFETY x the estimate is within the memory free (the margin is for what those runs
did not have: deep MSAs, many atoms per token). No Ray, no model: arithmetic on a ModelConfig.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from foldray.model.config import ModelConfig

ROW_COPIES = 6.0             # row-local transients, in units of this worker's rows of z
BIAS_COPIES = 8.6            # gathered [N, N, heads] biases (gather buffers + concatenation)
CHUNK_COPIES = 2.8           # the pair transition's hidden layer over one row chunk
DIFFUSION_COPIES = 4.0       # z's rows, the pair conditioning's rows and their transition
SAFETY = 1.2                 # estimate x SAFETY must fit (module docstring)
# Pair-stack row chunks tried, largest first (None: unchunked, fastest)
CHUNK_CHOICES: tuple[int | None, ...] = (None, 512, 256, 128, 64, 32, 16, 8, 4, 2, 1)


DEFAULT_SHARD_ABOVE = 1024  # tokens; below this a job runs on one device


@dataclass(frozen=True)
class ShardSettings:
    """Which batch jobs run sharded (`predict-batch --devices-per-job N --shard-above TOKENS`)."""

    devices_per_job: int | Literal["auto"] = 1   # 1: no sharding; auto: planned per job
    shard_above: int = DEFAULT_SHARD_ABOVE       # jobs with more tokens than this are sharded
    memory_per_device: int | None = None         # bytes planned for; None: measured free memory

    @property
    def enabled(self) -> bool:
        return self.devices_per_job != 1


class MemoryPlanError(ValueError):
    """The job does not fit even sharded over the most workers allowed."""


@dataclass(frozen=True)
class MemoryPlan:
    world: int                  # workers (devices) for the job
    chunk_size: int | None      # pair-stack rows per chunk (None: unchunked)
    peak_bytes: int             # estimated peak per worker
    available_bytes: int        # memory free per device the plan was made for


def value_bytes(precision: str, device_type: str) -> int:
    """Bytes per activation value: bf16 autocast runs on CUDA only (Predictor._forward)."""
    return 2 if precision == "bf16" and device_type == "cuda" else 4


def free_memory(device: str = "cpu") -> int:
    """Bytes free for new tensors now: CUDA free memory on a GPU, available RAM on CPU."""
    import torch

    if device.startswith("cuda"):
        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    import psutil

    return int(psutil.virtual_memory().available)


def _rows(n_token: int, world: int) -> int:
    return -(-n_token // world)


def pair_stack_bytes(n_token: int, config: ModelConfig, *, world: int = 1, chunk_size: int | None = None,
                     dtype_bytes: int = 4) -> int:
    """Estimated peak per worker of the Pairformer pair stack (module docstring)."""
    rows = _rows(n_token, world)
    chunk = rows if chunk_size is None else min(chunk_size, rows)
    pf = config.pairformer
    values = ((1.0 + ROW_COPIES) * rows * n_token * config.c_z
              + BIAS_COPIES * n_token * n_token * (pf.n_head_tri + pf.n_head)
              + CHUNK_COPIES * chunk * n_token * config.c_z * pf.transition_n)
    return int(values * dtype_bytes)


def diffusion_bytes(n_token: int, config: ModelConfig, *, world: int = 1, dtype_bytes: int = 4) -> int:
    """Estimated peak per worker while sampling (pair conditioning on rows)."""
    return int(DIFFUSION_COPIES * _rows(n_token, world) * n_token * config.c_z * dtype_bytes)


def output_bytes(n_token: int, config: ModelConfig, *, n_sample: int = 5) -> int:
    """The outputs the first worker gathers whole (fp32 logits, z): the floor of sharding."""
    c = config.confidence
    per_pair = config.c_z + c.n_bins_distogram + n_sample * (c.n_bins_pae + c.n_bins_pde)
    return n_token * n_token * per_pair * 4


def peak_bytes(n_token: int, config: ModelConfig, *, world: int = 1, chunk_size: int | None = None,
               dtype_bytes: int = 4, n_sample: int = 5) -> int:
    """Estimated peak of one prediction on its busiest (first) worker."""
    work = max(pair_stack_bytes(n_token, config, world=world, chunk_size=chunk_size, dtype_bytes=dtype_bytes),
               diffusion_bytes(n_token, config, world=world, dtype_bytes=dtype_bytes))
    return work + output_bytes(n_token, config, n_sample=n_sample)


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def plan_memory(n_token: int, config: ModelConfig, *, available_bytes: int, worlds: Iterable[int] = (1,),
                chunk_size: int | None = None, fixed_chunk: bool = False, dtype_bytes: int = 4,
                n_sample: int = 5, shared: bool = False, job: str = "") -> MemoryPlan:
    """The fewest workers (of `worlds`) whose estimate fits `available_bytes` per device, and
    there the largest chunk that fits (or `chunk_size` itself when `fixed_chunk`). `shared`:
    all workers draw on the one `available_bytes` (CPU workers on one node).
    Raises MemoryPlanError naming the job, its tokens, the smallest estimate and the memory."""
    worlds = sorted(set(worlds))
    if not worlds or worlds[0] < 1:
        raise ValueError(f"worlds must be >= 1, got {worlds}")
    chunks = (chunk_size,) if fixed_chunk else CHUNK_CHOICES
    for world in worlds:
        for chunk in chunks:
            peak = peak_bytes(n_token, config, world=world, chunk_size=chunk, dtype_bytes=dtype_bytes,
                              n_sample=n_sample)
            per_device = available_bytes // world if shared else available_bytes
            if peak * SAFETY <= per_device:
                return MemoryPlan(world, chunk, peak, per_device)
    world = worlds[-1]
    least = min(peak_bytes(n_token, config, world=world, chunk_size=c, dtype_bytes=dtype_bytes,
                           n_sample=n_sample) for c in chunks)
    name = f"job {job!r} " if job else "a job of "
    free = (f"{_gb(available_bytes)} is free for all {world} workers" if shared and world > 1
            else f"{_gb(available_bytes)} is free per device")
    raise MemoryPlanError(
        f"{name}({n_token} tokens) does not fit even over {world} device(s): it needs about "
        f"{_gb(least * SAFETY)} per device (estimate {_gb(least)} x {SAFETY:g} margin); {free}")
