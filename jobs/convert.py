"""`foldray convert INPUT... [--to af3] [--out FOLDER]`: any input foldray reads, as AF3 JSON.

Reads AlphaFold 3 JSON, AlphaFold Server and Protenix JSON lists, JSONL, Boltz YAML, FASTA
(plain, ColabFold `:` complexes, Boltz `>A|protein|msa.a3m` headers) and mmCIF/PDB exactly
as `predict` does, and writes each job as the AlphaFold 3 input JSON (dialect "alphafold3",
MSAs inlined as AF3 writes its data JSON). One job prints as an object, several as a list;
with `--out`, one `<job name>.json` per job. Problems print one located line each on
stderr (as `validate` prints them); the exit code is 2 when any input was bad.

    foldray convert complex.yaml > complex.json
    foldray convert jobs.fasta protenix_jobs.json --out af3_jobs/
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from foldray.errors import InputError
from foldray.inputs.af3_json_writer import job_to_af3_json
from foldray.jobs.validate import format_error

TARGETS = ("af3",)


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="foldray convert", description=__doc__,
                                               formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="input files or folders (any format foldray reads; local or URL)")
    parser.add_argument("--to", choices=TARGETS, default="af3",
                        help="output format (default: af3, the AlphaFold 3 input JSON)")
    parser.add_argument("--out", default=None, metavar="FOLDER",
                        help="write one <job name>.json per job here instead of printing")
    return parser


def run(args: argparse.Namespace) -> int:
    from foldray.inputs.load import iter_jobs  # RDKit, gemmi: here, so --help stays fast

    converted, bad = [], 0
    for item in iter_jobs(args.inputs):
        if isinstance(item, InputError):
            print(format_error(item), file=sys.stderr)
            bad += 1
            continue
        converted.append((item.safe_name, job_to_af3_json(item)))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        for name, data in converted:    # safe_name: one path component, no separators
            with open(os.path.join(args.out, f"{name}.json"), "w") as handle:
                json.dump(data, handle, indent=2)
                handle.write("\n")
        print(f"wrote {len(converted)} job(s) to {args.out}", file=sys.stderr)
    elif converted:
        payload = converted[0][1] if len(converted) == 1 else [data for _, data in converted]
        json.dump(payload, sys.stdout, indent=2)
        sys.stdout.write("\n")
    return 2 if bad else 0


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
