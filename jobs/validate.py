"""`foldray validate INPUT...`: check inputs the way prediction will read them.

Every job is parsed, tokenized and featurized (CCD codes, SMILES, MSAs, bonds, token
budget), so "valid" means "will featurize". Problems print one line each on stderr,
`error: <file>: <job name>: <field path>: <message>`, every problem of a job (each entity
and bond checked on its own, up to 20 per job); valid jobs are still reported, and
an unexpected failure of one job (a bug) is reported on its line the same way, named by
its exception class, without ending the run. A job read from mmCIF/PDB gets a `note:` line
(stdout; with --json, the record's "dropped" list) naming what clean-up dropped (waters,
crystallization aids, hydrogens, alternate locations, extra models). Exit 0 when everything
is valid, 2 when anything is not.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from foldray.chem.deadline import featurization_deadline
from foldray.errors import MAX_ERRORS_PER_JOB, InputError, InputErrors, all_errors, error_line, short_message
from foldray.limits import DEFAULT_MAX_TOKENS
from foldray.progress import JobsBar, interactive

if TYPE_CHECKING:   # the chemistry stack (RDKit, gemmi) is imported where used: fast --help
    from foldray.features.tokenize import TokenizedStructure
    from foldray.inputs.job import Job


def job_summary(job: Job, tokens: TokenizedStructure) -> dict:
    """The `--json` record of one valid job."""
    from foldray.inputs.job import LigandChain

    chains = []
    for chain in tokens.chains:
        entity = job.entities[chain.entity_index]
        if isinstance(entity, LigandChain):
            n_residues = len(entity.ccd_codes) if entity.ccd_codes else 1
        else:
            n_residues = len(entity.sequence)
        chains.append({"id": chain.chain_id, "type": chain.mol_type, "n_residues": n_residues})
    record = {"name": job.name, "n_tokens": tokens.n_tokens, "n_atoms": tokens.n_atoms,
              "chains": chains}
    if job.ground_truth is not None:      # a structure file: what its clean-up dropped
        record["dropped"] = list(job.ground_truth.dropped)
    return record


def format_error(err: InputError) -> str:
    return "error: " + error_line(err)


def entity_errors(job: Job, positions: tuple[int, ...] | None = None) -> list[InputError]:
    """Each entity's chemistry (CCD codes, SMILES, modifications) checked on its own, so one
    bad entity does not hide the next. `positions[k]`: where `job.entities[k]` sat in the
    input's `sequences` (a PartialJob lacks its bad entities)."""
    from foldray.chem.ccd import parse_user_ccd
    from foldray.features.tokenize import entity_components

    try:
        user_ccd = parse_user_ccd(job.user_ccd, source=job.source) if job.user_ccd else None
    except InputError as err:
        return [err.located(source=job.source, job=job.name)]
    errors = []
    for k in range(len(job.entities)):
        where = positions[k] if positions is not None else k
        try:
            entity_components(job, k, user_ccd)
        except InputError as err:
            if where != k and err.field.startswith(f"sequences[{k}]"):
                err = InputError(err.message, source=err.source, job=err.job,
                                 field=f"sequences[{where}]" + err.field[len(f"sequences[{k}]"):])
            errors.append(err)
        except Exception as err:   # a bug, not bad input: reported on this entity's line
            errors.append(InputError(short_message(err), source=job.source, job=job.name,
                                     field=f"sequences[{where}]"))
    return errors


def job_errors(first: InputError, job: Job | None, time_limit: float | None) -> list[InputError]:
    """Every problem of a job up to MAX_ERRORS_PER_JOB: `first` (a parse or featurization
    failure, possibly several), then what each entity's own check finds."""
    from foldray.inputs.af3_json import PartialJob

    errors = all_errors(first)
    more = first.more if isinstance(first, InputErrors) else 0
    partial = first.partial
    positions = None
    if isinstance(partial, PartialJob):
        job, positions = partial.job, partial.positions
    if job is not None and job.entities:
        try:
            with featurization_deadline(time_limit):
                extra = entity_errors(job, positions)
        except InputError as err:    # the time limit
            extra = [err.located(source=job.source, job=job.name)]
        seen = {error_line(err) for err in errors}
        errors += [err for err in extra if error_line(err) not in seen]
    more += max(0, len(errors) - MAX_ERRORS_PER_JOB)
    errors = errors[:MAX_ERRORS_PER_JOB]
    if more:
        last = errors[-1]
        errors.append(InputError(f"... and {more} more problem{'s' if more > 1 else ''} (not listed)",
                                 source=last.source, job=last.job))
    return errors


def cleanup_note(job: Job) -> str | None:
    """`note: ...` naming what mmCIF/PDB clean-up dropped from a structure-file input."""
    dropped = job.ground_truth.dropped if job.ground_truth is not None else ()
    if not dropped:
        return None
    return f"note: {job.source or '-'}: {job.name}: structure clean-up dropped {', '.join(dropped)}"


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
    from foldray.features.pipeline import featurize_job
    from foldray.inputs.load import iter_jobs

    records, n_errors = [], 0
    items = list(iter_jobs(args.inputs))       # parsing is quick; featurizing is the long part
    bar = JobsBar(len(items), enabled=interactive(args.quiet), desc="validate")
    for item in items:
        if isinstance(item, InputError):
            n_errors += 1
            for err in job_errors(item, None, args.time_limit):
                bar.write(format_error(err), file=sys.stderr)
            bar.update(status=f"{n_errors} invalid")
            continue
        note = cleanup_note(item)
        if note and not args.json:     # --json: the record's "dropped" list says it
            bar.write(note)
        try:
            with featurization_deadline(args.time_limit):
                featurized = featurize_job(item, max_tokens=args.max_tokens, with_targets=False)
        except InputError as err:
            n_errors += 1
            for each in job_errors(err.located(source=item.source, job=item.name), item, args.time_limit):
                bar.write(format_error(each), file=sys.stderr)
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
