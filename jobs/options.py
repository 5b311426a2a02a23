"""Flags every command spells the same way (one config system, docs/configuration in
configs/README.md):

- `--model-config PRESET_OR_FILE`: a model preset by name (tiny, full, tiny-openfold3,
  full-protenix, ...; `_` works for `-`) or a YAML/JSON ModelConfig file;
- `--config FILE`: only the command's own settings file (training run, msa.yaml, serve.yaml);
- `--set KEY=VALUE` (repeatable): dotted overrides with YAML values, applied last;
- the runtime group `--precision --kernels --chunk-size --diffusion-chunk --compile`
  (RuntimeConfig) wherever a model runs: predict, predict-batch, serve.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from foldray.config_loader import ConfigError, apply_overrides, load_dataclass, to_plain
from foldray.model.config import NAMED_CONFIGS, ModelConfig, RuntimeConfig, is_preset, model_config_from

PRESETS_HELP = ", ".join(NAMED_CONFIGS)


def add_model_config_argument(parser: argparse.ArgumentParser, *, default: str | None = "tiny",
                              help_text: str | None = None) -> None:
    parser.add_argument("--model-config", dest="model_config", default=default, metavar="PRESET_OR_FILE",
                        help=help_text or (f"model preset ({PRESETS_HELP}) or a YAML/JSON model config "
                                           f"file, used when no checkpoint is given (default {default})"))


def add_set_argument(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument("--set", dest="set", action="append", default=[], metavar="KEY=VALUE",
                        help=f"{help_text} (repeatable; dotted key, YAML value)")


def add_runtime_arguments(parser: argparse.ArgumentParser, *, defaults: bool = True) -> None:
    """The RuntimeConfig flags. `defaults=False` leaves unset flags None (serve: its settings
    file then decides); `runtime_overrides` turns the given ones into `runtime.*` overrides."""
    d = RuntimeConfig() if defaults else None
    title = "runtime (how the model runs; never what it computes)" + (
        "" if defaults else "; unset flags keep the settings' runtime.*")
    group = parser.add_argument_group(title)
    group.add_argument("--precision", default=d and d.precision, choices=("fp32", "bf16"),
                       help="bf16 autocast on GPU (default fp32)")
    group.add_argument("--kernels", default=d and d.kernels, choices=("auto", "triton", "torch"),
                       help="Triton kernels on CUDA when available (auto), always (triton), or never "
                            f"(torch) (default {RuntimeConfig().kernels})")
    group.add_argument("--chunk-size", type=int, default=None,
                       help="pair-stack chunk size (default: chosen from free memory)")
    group.add_argument("--diffusion-chunk", type=int, default=None,
                       help="samples denoised and scored at once (default: all); lowers peak memory")
    group.add_argument("--compile", action="store_true", default=False if defaults else None,
                       help="torch.compile the repeated blocks (GPU; one-off compile per input size)")


def parse_devices(text: str) -> int | str:
    """`N` (>= 1) or `auto` (devices per job from the memory plan, foldray.parallel.plan)."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return int(text)      # >= 1 is checked by the command, with its own message
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes N or auto, got {text!r}") from None


def runtime_overrides(args: argparse.Namespace) -> list[str]:
    """The runtime flags that were given, as `runtime.<field>=<value>` overrides."""
    out = []
    for name in ("precision", "kernels", "chunk_size", "diffusion_chunk", "compile"):
        value = getattr(args, name, None)
        if value is not None and not (name == "compile" and value is False):
            out.append(f"runtime.{name}={str(value).lower() if isinstance(value, bool) else value}")
    return out


def split_overrides(items: Sequence[str], sections: Sequence[str]) -> dict[str, list[str]]:
    """`--set` items grouped by their first key part (`model.n_cycle=2` -> model: `n_cycle=2`);
    a key outside `sections` is a ConfigError naming it."""
    groups: dict[str, list[str]] = {name: [] for name in sections}
    for item in items:
        key, sep, value = item.partition("=")
        head, dot, rest = key.strip().partition(".")
        if not sep:
            raise ConfigError(f"--set {item!r} is not key=value (dotted key, YAML value)")
        if head not in groups or not dot or not rest:
            raise ConfigError(f"--set takes {' or '.join(f'{s}.<field>' for s in sections)} here",
                              key=key.strip())
        groups[head].append(f"{rest}={value}")
    return groups


def resolve_model_and_runtime(args: argparse.Namespace) -> tuple[str | ModelConfig, RuntimeConfig]:
    """predict / predict-batch: the model (a canonical preset name, or a ModelConfig when a file
    or `--set model.*` changes it) and the RuntimeConfig from the runtime flags and
    `--set runtime.*`. Raises ConfigError naming the bad key."""
    groups = split_overrides(args.set, ("model", "runtime"))
    flags = [item.removeprefix("runtime.") for item in runtime_overrides(args)]
    runtime_data = apply_overrides(to_plain(RuntimeConfig()), flags + groups["runtime"], where="--set")
    runtime = load_dataclass(RuntimeConfig, runtime_data, where="runtime")
    spec = args.model_config
    if is_preset(spec) and not groups["model"]:
        return spec.strip().lower().replace("_", "-"), runtime
    if groups["model"] and getattr(args, "checkpoint", None):
        raise ConfigError("--set model.* changes the preset's model; a checkpoint carries its own config",
                          key="model")
    try:
        return model_config_from(spec, groups["model"]), runtime
    except ConfigError as err:
        raise err.located(field_prefix="model") from None


def deprecated_config_alias(parser: argparse.ArgumentParser, dest: str) -> None:
    """Old spelling `--config NAME` for what is now `--model-config`: still accepted, hidden."""
    parser.add_argument("--config", dest=dest, help=argparse.SUPPRESS)
