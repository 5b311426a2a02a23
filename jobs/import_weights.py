"""`foldray import-weights --from openfold3|protenix SRC --out DST [--config NAME] [--verbose]`.

Converts a reference checkpoint you downloaded yourself (foldray never downloads weights)
into a foldray checkpoint: one safetensors file holding the weights and the model config,
usable by `foldray predict --checkpoint DST`, predict-batch, serve and train. The config is
read from SRC itself (block counts from its tensor names, widths from its shapes), with the
family's behaviour switches (`full-openfold3`, `full-protenix`), so any depth and width
imports; `--config NAME` forces a named config instead. SRC and DST may be local paths or
URLs (s3://...). The source is read as safetensors or a torch zip checkpoint with
torch.load(weights_only=True); pickle files are refused. Every tensor must map: otherwise
the error gives the counts of missing / unexpected / misshaped tensors, the first ten names
and the sizes used (`--verbose`: every name). Exit 0 on success, 2 when the checkpoint
cannot be imported.
"""

from __future__ import annotations

import argparse
import json
import sys

from foldray.config_loader import ConfigError
from foldray.io.families import FAMILY_CONFIGS, SOURCES
from foldray.jobs.options import add_model_config_argument, add_set_argument, deprecated_config_alias
from foldray.model.config import ModelConfig, is_preset, model_config_from


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="foldray import-weights", description=__doc__)
    parser.add_argument("--from", dest="source", required=True, choices=SOURCES,
                        help="which implementation wrote SRC")
    parser.add_argument("src", metavar="SRC", help="reference checkpoint (path or URL)")
    parser.add_argument("--out", required=True, metavar="DST",
                        help="foldray checkpoint to write (.safetensors, path or URL)")
    add_model_config_argument(parser, default=None, help_text=(
        "a model preset or YAML/JSON model config file to import into instead of reading the sizes "
        "from SRC (family switches come from "
        + ", ".join(f"{k}: {v}" for k, v in FAMILY_CONFIGS.items()) + ")"))
    deprecated_config_alias(parser, "model_config")
    add_set_argument(parser, "override a setting of --model-config, e.g. --set n_cycle=10")
    parser.add_argument("--verbose", action="store_true",
                        help="on a mismatch, list every missing / unexpected / misshaped tensor")
    return parser


def model_config(args: argparse.Namespace) -> str | ModelConfig | None:
    """None (read the sizes from SRC), a preset's canonical name, or a ModelConfig."""
    if args.model_config is None:
        if args.set:
            raise ConfigError("--set needs --model-config (the config it changes)", key="--set")
        return None
    if is_preset(args.model_config) and not args.set:
        return args.model_config.strip().lower().replace("_", "-")
    return model_config_from(args.model_config, args.set)


def run(args: argparse.Namespace) -> int:
    from foldray.io.import_weights import ImportMismatch, import_checkpoint  # torch: not for --help
    from foldray.io.weights import WeightsError

    try:
        summary = import_checkpoint(args.source, args.src, args.out, model_config(args))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except ImportMismatch as err:
        print(f"error: {args.src}: {err.details() if args.verbose else err}", file=sys.stderr)
        return 2
    except (WeightsError, FileNotFoundError) as err:
        print(f"error: {args.src}: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(run(build_parser().parse_args()))
