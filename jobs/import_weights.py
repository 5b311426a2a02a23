"""`foldray import-weights --from openfold3|protenix SRC --out DST [--config NAME]`.

Converts a reference checkpoint you downloaded yourself (foldray never downloads weights)
into a foldray checkpoint: one safetensors file holding the weights and the model config
(`full-openfold3` by default for OpenFold3, `full-protenix` for Protenix), usable by
`foldray predict --checkpoint DST`, predict-batch, serve and train. SRC and DST may be local paths or URLs (s3://...).
The source is read as safetensors or a torch zip checkpoint with torch.load(weights_only=True);
pickle files are refused. Every tensor must map: otherwise the error names each missing or
unexpected tensor. Exit 0 on success, 2 when the checkpoint cannot be imported.
"""

from __future__ import annotations

import argparse
import json
import sys

from foldray.io.import_weights import DEFAULT_CONFIGS, SOURCES, import_checkpoint
from foldray.io.weights import WeightsError


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="foldray import-weights", description=__doc__)
    parser.add_argument("--from", dest="source", required=True, choices=SOURCES,
                        help="which implementation wrote SRC")
    parser.add_argument("src", metavar="SRC", help="reference checkpoint (path or URL)")
    parser.add_argument("--out", required=True, metavar="DST",
                        help="foldray checkpoint to write (.safetensors, path or URL)")
    parser.add_argument("--config", default=None,
                        help="foldray model config matching SRC (default: "
                        + ", ".join(f"{k}: {v}" for k, v in DEFAULT_CONFIGS.items()) + ")")
    return parser


def run(args: argparse.Namespace) -> int:
    try:
        summary = import_checkpoint(args.source, args.src, args.out, args.config)
    except (WeightsError, FileNotFoundError) as err:
        print(f"error: {args.src}: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(run(build_parser().parse_args()))
