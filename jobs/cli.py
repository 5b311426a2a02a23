"""The `foldray` command: one subcommand per job module, each also runnable as
`python -m foldray.jobs.<name>` (e.g. under `ray job submit`)."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from collections.abc import Iterable
from types import ModuleType

# name -> (module in foldray.jobs, one-line help). Modules are imported only for the command
# that runs (or whose --help is asked for), so `foldray --help` starts in a fraction of a second.
COMMANDS = {
    "validate": ("validate", "check inputs: parse, tokenize and featurize every job"),
    "predict": ("predict", "predict structures locally (AF3 output layout), no Ray needed"),
    "featurize": ("featurize", "featurize many jobs on Ray (local or cluster) into a folder/bucket"),
    "predict-batch": ("predict_batch", "predict many jobs with Ray Data, folder/bucket to folder/bucket"),
    "screen": ("screen", "screen one target against a ligand library (SMILES/SDF/CSV/Parquet) on Ray Data"),
    "report": ("report", "plots and an offline HTML page for a prediction or a results table"),
    "example": ("example", "print a bundled AF3 input job to start from"),
    "convert": ("convert", "write Boltz YAML, FASTA, Protenix/Server JSON or mmCIF inputs as AF3 JSON"),
    "train": ("train", "train or fine-tune on Ray Train from a YAML config (local or cluster)"),
    "serve": ("serve", "serve the HTTP API (predictions, library screens) with Ray Serve"),
    "import-weights": ("import_weights",
                       "convert an OpenFold3/Protenix checkpoint into a foldray checkpoint"),
    "msa": ("msa", "genetic search (jackhmmer/nhmmer, pyhmmer) on Ray: fill jobs' MSAs, cached"),
}


def command_module(name: str) -> ModuleType:
    """The job module of a subcommand (imported on first use)."""
    return importlib.import_module(f"foldray.jobs.{COMMANDS[name][0]}")


def version_text() -> str:
    """`foldray <version>`, then torch/Ray versions read from package metadata (no import, so fast)."""
    from importlib import metadata

    import foldray

    parts = []
    for dist in ("torch", "ray"):
        try:
            parts.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{dist} not installed")
    return f"foldray {foldray.__version__}\n" + ", ".join(parts)


class _VersionAction(argparse.Action):
    """Like argparse's "version" action, but builds the text only when asked."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)  # type: ignore[arg-type]

    def __call__(self, parser: argparse.ArgumentParser, namespace: object, values: object,
                 option_string: str | None = None) -> None:
        print(version_text())
        parser.exit()


def build_parser(commands: Iterable[str] | None = None) -> argparse.ArgumentParser:
    """The `foldray` parser; the flags of `commands` only (None: every command's). The others
    are listed in the help but not built, so their modules are not imported."""
    wanted = set(COMMANDS if commands is None else commands)
    parser = argparse.ArgumentParser(prog="foldray", description="AlphaFold 3-class structure "
                                     "prediction on Ray.")
    parser.add_argument("--version", action=_VersionAction, help="print the foldray, torch and Ray versions")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text) in COMMANDS.items():
        if name in wanted:
            module = command_module(name)
            module.build_parser(sub.add_parser(name, help=help_text, description=module.__doc__,
                                               formatter_class=argparse.RawDescriptionHelpFormatter))
        else:
            sub.add_parser(name, help=help_text)
    return parser


def _requested(argv: list[str]) -> list[str]:
    """The subcommand named in argv (the first word not an option), if it is one."""
    word = next((arg for arg in argv if not arg.startswith("-")), None)
    return [word] if word in COMMANDS else []


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(_requested(argv))
    if not argv:  # bare `foldray`: the help, not a usage error
        parser.print_help()
        return 0
    args = parser.parse_args(argv)
    module = command_module(args.command)
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
