"""`foldray validate INPUT...`: check inputs the way prediction will read them.

Every job is parsed, tokenized and featurized (CCD codes, SMILES, MSAs, bonds, token
budget), so "valid" means "will featurize". Problems print one line each on stderr,
`error: <file>: <job name>: <field path>: <message>`; valid jobs are still reported, and
an unexpected failure of one job (a bug) is reported on its line the same way, named by
its exception class, without ending the run. Exit 0 when everything is valid, 2 when
anything is not.
"""

from __future__ import annotations

import argparse
import json
import sys

from foldray.chem.deadline import featurization_deadline
from foldray.errors import InputError, error_line, short_message
from foldray.features.pipeline import featurize_job
from foldray.features.tokenize import DEFAULT_MAX_TOKENS, TokenizedStructure
from foldray.inputs.job import Job, LigandChain
from foldray.inputs.load import iter_jobs
from foldray.progress import JobsBar, interactive


def job_summary(job: Job, tokens: TokenizedStructure) -> dict:
    """The `--json` record of one valid job."""
    chains = []
    for chain in tokens.chains:
        entity = job.entities[chain.entity_index]
        if isinstance(entity, LigandChain):
            n_residues = len(entity.ccd_codes) if entity.ccd_codes else 1
        else:
            n_residues = len(entity.sequence)
        chains.append({"id": chain.chain_id, "type": chain.mol_type, "n_residues": n_residues})
    return {"name": job.name, "n_tokens": tokens.n_tokens, "n_atoms": tokens.n_atoms,
            "chains": chains}


def format_error(err: InputError) -> str:
    return "error: " + error_line(err)


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="foldray validate", description=__doc__)
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="AF3 JSON, JSONL, mmCIF/PDB file, or a folder of them (local or URL)")
    parser.add_argument("--json", action="store_true", help="print one JSON list of valid jobs")
    parser.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS,
                        help=f"token budget per job (default {DEFAULT_MAX_TOKENS})")
    parser.add_argument("--time-limit", type=float, default=None, metavar="SECONDS",
                        help="featurization wall-clock limit per job (default: none)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar (none off a terminal)")
    return parser


def run(args: argparse.Namespace) -> int:
    records, n_errors = [], 0
    items = list(iter_jobs(args.inputs))       # parsing is quick; featurizing is the long part
    bar = JobsBar(len(items), enabled=interactive(args.quiet), desc="validate")
    for item in items:
        if isinstance(item, InputError):
            n_errors += 1
            bar.write(format_error(item), file=sys.stderr)
            bar.update(status=f"{n_errors} invalid")
            continue
        try:
            with featurization_deadline(args.time_limit):
                featurized = featurize_job(item, max_tokens=args.max_tokens, with_targets=False)
        except InputError as err:
            n_errors += 1
            bar.write(format_error(err.located(source=item.source, job=item.name)), file=sys.stderr)
            bar.update(status=f"{n_errors} invalid")
            continue
        except Exception as err:   # a bug, not bad input: this job's line, not the run's end
            n_errors += 1
            bar.write(format_error(InputError(short_message(err), source=item.source,
                                              job=item.name)), file=sys.stderr)
            bar.update(status=f"{n_errors} invalid")
            continue
        records.append(job_summary(item, featurized.tokens))
        if not args.json:
            bar.write(f"ok: {item.source}: {item.name}: {featurized.tokens.n_tokens} tokens, "
                      f"{featurized.tokens.n_atoms} atoms, {len(featurized.tokens.chains)} chains")
        bar.update()
    bar.close()
    if args.json:
        print(json.dumps(records, indent=2))
    return 2 if n_errors else 0


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
