"""Training run configuration (SI 5.2-5.4, Table 6; data mixture SI 2.5), loaded from YAML.

One YAML file describes one run; `key=value` overrides with dotted keys change single
values (`optimizer.lr=5e-4`, `stage.name=finetune1`). Frozen, keyword-only dataclasses like
`foldray.model.config`; unknown keys are errors, so a typo never trains the wrong thing.
Every key is documented in `configs/README.md`.

What the model *is* comes from `model` (a preset plus dotted overrides, or the config stored
in `finetune.init_checkpoint`); the training stage (`stage`) picks crop size, diffusion batch
and loss weights of SI Table 6; everything about Ray (workers, GPUs, storage) is in
`scaling` and `run`, and only `foldray.jobs.train` / `foldray.actors.train_worker` read it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from foldray.config_loader import (
    ConfigError,
    apply_overrides,
    load_dataclass,
    merge,
    read_mapping,
    to_plain,
)
from foldray.model.config import NAMED_CONFIGS, LossConfig, ModelConfig, RuntimeConfig, is_preset

StageName = Literal["initial", "finetune1", "finetune2", "finetune3"]


@dataclass(frozen=True, kw_only=True)
class StagePreset:
    """One column of SI Table 6 (and the 5.3 loss weights that change with it)."""

    crop_size: int
    diffusion_batch: int
    loss: dict[str, float]


# SI Table 6 / 5.2 / 5.3. Fine-tuning 1 turns smooth lDDT off and the polymer-ligand bond
# loss on; stage 2 keeps that; stage 3 trains the PAE head only (structure and distogram
# losses off, alpha_pae = 1). The dataset-mixture rows of Table 6 (distillation sets, max
# chains) belong to the data sources of a run, not to this table.
STAGES: dict[str, StagePreset] = {
    "initial": StagePreset(crop_size=384, diffusion_batch=48,
                           loss={"alpha_bond": 0.0, "alpha_smooth_lddt": 1.0, "alpha_pae": 0.0}),
    "finetune1": StagePreset(crop_size=640, diffusion_batch=32,
                             loss={"alpha_bond": 1.0, "alpha_smooth_lddt": 0.0, "alpha_pae": 0.0}),
    "finetune2": StagePreset(crop_size=768, diffusion_batch=32,
                             loss={"alpha_bond": 1.0, "alpha_smooth_lddt": 0.0, "alpha_pae": 0.0}),
    "finetune3": StagePreset(crop_size=768, diffusion_batch=32,
                             loss={"alpha_bond": 1.0, "alpha_smooth_lddt": 0.0, "alpha_pae": 1.0,
                                   "alpha_diffusion": 0.0, "alpha_distogram": 0.0}),
}


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """A ModelConfig preset by name (any of `foldray.model.config.NAMED_CONFIGS`: tiny, full,
    tiny-openfold3, full-protenix, ...; `_` works for `-`) plus dotted overrides, e.g.
    pairformer.n_block: 4."""

    preset: str = "full"
    overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not is_preset(self.preset):
            raise ConfigError(f"unknown model preset {self.preset!r} "
                              f"(choose from {', '.join(NAMED_CONFIGS)})", key="preset")

    def build(self) -> ModelConfig:
        data = merge(to_plain(ModelConfig.preset(self.preset)), self.overrides, where="model.overrides")
        return ModelConfig.from_dict(data, where="model.overrides")


@dataclass(frozen=True, kw_only=True)
class StageConfig:
    """The SI training stage; explicit values override the stage's Table 6 column."""

    name: StageName = "initial"
    crop_size: int | None = None
    diffusion_batch: int | None = None
    loss: dict[str, int | float] = field(default_factory=dict)   # LossConfig field -> value

    @property
    def preset(self) -> StagePreset:
        return STAGES[self.name]

    def resolved_crop_size(self) -> int:
        return self.crop_size if self.crop_size is not None else self.preset.crop_size

    def resolved_diffusion_batch(self) -> int:
        return self.diffusion_batch if self.diffusion_batch is not None else self.preset.diffusion_batch

    def loss_config(self, base: LossConfig) -> LossConfig:
        """`base` (the model's LossConfig) with the stage's weights, then the explicit ones."""
        values = {**self.preset.loss, **self.loss,
                  "diffusion_batch": self.resolved_diffusion_batch()}
        # typed like every setting: mini_rollout_steps stays an int, unknown names are errors
        return load_dataclass(LossConfig, {**to_plain(base), **values}, where="stage.loss")


@dataclass(frozen=True, kw_only=True)
class OptimizerConfig:
    """SI 5.4 (Adam, warm-up, step decay, clipping) and 5.6 (EMA for inference)."""

    lr: float = 1.8e-3
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    warmup_steps: int = 1000       # linear from 0
    decay_factor: float = 0.95
    decay_every: int = 50_000
    grad_clip_norm: float | None = 10.0
    ema_decay: float = 0.999


@dataclass(frozen=True, kw_only=True)
class DataSource:
    """One dataset of the mixture (SI 2.5, Table 3).

    `path`: a folder or s3:// prefix of mmCIF files (.cif, .cif.gz, .mmcif), or a Parquet
    manifest (.parquet, see foldray.training.data). `msa_dir`: a3m files matched by name,
    `<structure>_<chain>.a3m` (unpaired) and `<structure>_<chain>_paired.a3m`. `weight`: the
    dataset's share of draws. `crop_dataset`: its row of SI Table 4 (crop strategy weights).
    `names`: only these structures (file stems), e.g. to hold some out for validation.
    """

    path: str
    msa_dir: str | None = None
    weight: float = 1.0
    crop_dataset: str = "weighted_pdb"
    names: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    train: tuple[DataSource, ...] = ()
    validation: tuple[DataSource, ...] = ()
    batch_size: int = 1                # structures per worker per micro-step (SI: 256 in all)
    loader_workers: int = 2            # featurizing DataLoader processes per train worker
    prefetch_factor: int = 4           # batches each loader process keeps ready
    max_msa_rows: int = 16384
    msa_rows: int | None = None        # MSA rows the model samples per recycle (None = all)
    max_validation_structures: int = 8
    validation_max_tokens: int = 384   # larger validation structures are cropped to this


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig:
    """Start from a foldray checkpoint and train part of the model on new data."""

    init_checkpoint: str | None = None   # a safetensors file or a train checkpoint folder
    use_ema: bool = True                 # from a train checkpoint: start from its EMA weights
    freeze_trunk: bool = False           # train only diffusion module and heads
    train_modules: tuple[str, ...] = ()  # only these top-level modules (e.g. confidence_head)
    lr: float | None = None              # replaces optimizer.lr


@dataclass(frozen=True, kw_only=True)
class ScalingSpec:
    """Ray Train ScalingConfig: worker count and what each worker gets."""

    num_workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    resources_per_worker: dict[str, float] = field(default_factory=dict)
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"


@dataclass(frozen=True, kw_only=True)
class CallbackSpec:
    """Extension point: a TrainCallback (foldray.training.loop) added on every train worker.

    `path` names a factory, "package.module:name", importable on the workers; each worker
    calls it with `options` as keyword arguments."""

    path: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class RunSpec:
    """Length, cadence, storage and fault tolerance of the run."""

    storage_path: str = "foldray_out/train"   # local folder or s3:// prefix
    max_steps: int = 1000
    grad_accumulation: int = 1
    report_every: int = 10
    checkpoint_every: int = 500
    validate_every: int | None = None
    keep_checkpoints: int = 3
    max_failures: int = 2
    # how the model runs, the same RuntimeConfig (and keys) as predict and serve: precision
    # (bf16 autocast applies on GPU only), kernels, compile, chunk_size, diffusion_chunk,
    # checkpoint_activations
    runtime: RuntimeConfig = field(default_factory=lambda: RuntimeConfig(precision="bf16"))
    n_cycle: int | None = None                    # None: U{1..model n_cycle} per step
    validation_n_sample: int = 1
    validation_n_step: int | None = None          # sampler steps (None: the model's)
    callbacks: tuple[CallbackSpec, ...] = ()      # extra TrainCallbacks (CallbackSpec)


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    name: str = "foldray-train"
    seed: int = 0
    model: ModelSpec = field(default_factory=ModelSpec)
    stage: StageConfig = field(default_factory=StageConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    scaling: ScalingSpec = field(default_factory=ScalingSpec)
    run: RunSpec = field(default_factory=RunSpec)

    def loss_config(self, model: ModelConfig) -> LossConfig:
        return self.stage.loss_config(model.loss)

    def runtime(self) -> RuntimeConfig:
        return self.run.runtime

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """From a mapping; configs (and checkpoints) written before `run.runtime` still load."""
        config = load_dataclass(cls, upgrade(data))
        config.validate()
        return config

    def validate(self) -> None:
        """Cross-field checks that the types alone cannot express."""
        if self.stage.resolved_crop_size() < 1 or self.stage.resolved_diffusion_batch() < 1:
            raise ConfigError("crop_size and diffusion_batch must be >= 1", key="stage")
        if self.run.grad_accumulation < 1 or self.data.batch_size < 1:
            raise ConfigError("run.grad_accumulation and data.batch_size must be >= 1")
        if min(self.run.report_every, self.run.checkpoint_every, self.run.max_steps) < 1:
            raise ConfigError("report_every, checkpoint_every, max_steps must be >= 1", key="run")
        if self.scaling.num_workers < 1:
            raise ConfigError("must be >= 1", key="scaling.num_workers")
        if self.finetune.freeze_trunk and self.finetune.train_modules:
            raise ConfigError("give freeze_trunk or train_modules, not both", key="finetune")
        if any(s.weight <= 0 for s in self.data.train):
            raise ConfigError("every source weight must be > 0", key="data.train")
        self.model.build()                    # model.overrides name real fields
        self.stage.loss_config(LossConfig())  # stage.loss names real LossConfig fields


# run.<key> before the runtime section existed -> run.runtime.<key> (same names)
MOVED_TO_RUNTIME = ("precision", "chunk_size", "checkpoint_activations")


def upgrade(data: Mapping[str, Any]) -> dict[str, Any]:
    """`data` with the pre-`run.runtime` keys moved into it: `run.precision`, `run.chunk_size`
    and `run.checkpoint_activations` keep meaning what they meant. Giving one both ways is a
    ConfigError naming the old key."""
    out = dict(data)
    for key in MOVED_TO_RUNTIME:          # top-level dotted spelling (`run.precision: bf16`)
        if f"run.{key}" in out:
            out[f"run.runtime.{key}"] = out.pop(f"run.{key}")
    run = out.get("run")
    if not isinstance(run, Mapping) or not any(key in run for key in MOVED_TO_RUNTIME):
        return out
    run = dict(run)
    runtime = run.get("runtime") or {}
    if not isinstance(runtime, Mapping):
        return out                        # the loader reports the bad run.runtime
    runtime = dict(runtime)
    for key in MOVED_TO_RUNTIME:
        if key not in run:
            continue
        if key in runtime or f"run.runtime.{key}" in out:
            raise ConfigError(f"given twice: also as run.runtime.{key}; keep that one", key=f"run.{key}")
        runtime[key] = run.pop(key)
    run["runtime"] = runtime
    return out | {"run": run}


def _upgrade_override(item: str) -> str:
    key, sep, value = item.partition("=")
    name = key.strip().removeprefix("run.")
    moved = key.strip() == f"run.{name}" and name in MOVED_TO_RUNTIME
    return f"run.runtime.{name}{sep}{value}" if moved else item


def load_train_config(text_or_path: str, overrides: Sequence[str] = ()) -> TrainConfig:
    """A TrainConfig from YAML text or a local/URL path, with `key=value` overrides applied
    (dotted keys, YAML values); errors are ConfigErrors naming the key (and the file)."""
    source = text_or_path.strip() if "\n" not in text_or_path else ""
    data = read_mapping(text_or_path, kind="training config")
    try:   # an old-spelling override (`run.precision=fp32`) still overrides the file's runtime
        data = upgrade(data)
        apply_overrides(data, [_upgrade_override(item) for item in overrides])
        return TrainConfig.from_dict(data)
    except ConfigError as err:
        raise err.located(source=source if source.endswith((".yaml", ".yml", ".json")) else "") from None
