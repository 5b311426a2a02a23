"""The `foldray` command: one subcommand per job module, each also runnable as
`python -m foldray.jobs.<name>` (e.g. under `ray job submit`)."""

from __future__ import annotations

import argparse
import os
import sys
import traceback

from foldray.jobs import (
    convert,
    example,
    featurize,
    import_weights,
    msa,
    predict,
    predict_batch,
    report,
    serve,
    train,
    validate,
)

COMMANDS = {
    "validate": (validate, "check inputs: parse, tokenize and featurize every job"),
    "predict": (predict, "predict structures locally (AF3 output layout), no Ray needed"),
    "featurize": (featurize, "featurize many jobs on Ray (local or cluster) into a folder/bucket"),
    "predict-batch": (predict_batch, "predict many jobs with Ray Data, folder/bucket to folder/bucket"),
    "report": (report, "plots and an offline HTML page for a prediction or a results table"),
    "example": (example, "print a bundled AF3 input job to start from"),
    "convert": (convert, "write Boltz YAML, FASTA, Protenix/Server JSON or mmCIF inputs as AF3 JSON"),
    "train": (train, "train or fine-tune on Ray Train from a YAML config (local or cluster)"),
    "serve": (serve, "serve the HTTP API (predictions, library screens) with Ray Serve"),
    "import-weights": (import_weights, "convert an OpenFold3/Protenix checkpoint into a foldray checkpoint"),
    "msa": (msa, "genetic search (jackhmmer/nhmmer, pyhmmer) on Ray: fill jobs' MSAs, cached"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="foldray", description="AlphaFold 3-class structure "
                                     "prediction on Ray.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in COMMANDS.items():
        module.build_parser(sub.add_parser(name, help=help_text, description=module.__doc__,
                                           formatter_class=argparse.RawDescriptionHelpFormatter))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module, _ = COMMANDS[args.command]
    try:
        return module.run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # a bug, not bad input: one line, details only when asked
        print(f"error: internal error in foldray {args.command}: {err.__class__.__name__}: {err} "
              "(set FOLDRAY_DEBUG=1 for the traceback)", file=sys.stderr)
        if os.environ.get("FOLDRAY_DEBUG"):
            traceback.print_exc()
        return 1


if __name__ == "__main__":
    sys.exit(main())
