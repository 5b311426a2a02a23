"""`foldray example [NAME]`: print a bundled AlphaFold 3 input job, a first input to try.

    foldray example > job.json                 # Trp-cage + ibuprofen (SMILES)
    foldray example tiny_protein_dna > dna.json
    foldray example --list
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources

DEFAULT_EXAMPLE = "tiny_protein_ligand_smiles"


def examples() -> dict[str, str]:
    """Bundled example name -> AF3 JSON text."""
    folder = resources.files("foldray") / "examples"
    return {entry.name.removesuffix(".json"): entry.read_text()
            for entry in sorted(folder.iterdir(), key=lambda e: e.name) if entry.name.endswith(".json")}


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="foldray example", description=__doc__)
    parser.add_argument("name", nargs="?", default=DEFAULT_EXAMPLE,
                        help="which example (default %(default)s; --list shows them)")
    parser.add_argument("--list", action="store_true", help="list the examples")
    return parser


def run(args: argparse.Namespace) -> int:
    available = examples()
    if args.list:
        print("\n".join(available))
        return 0
    if args.name not in available:
        print(f"error: no example {args.name!r}; examples: {', '.join(available)}", file=sys.stderr)
        return 2
    sys.stdout.write(available[args.name])
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
