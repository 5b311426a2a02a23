"""CCD start-up cost per process: decoding biotite's CCD vs loading foldray's decoded cache.

Every process that sizes or featurizes a job (the CLI driver, each Ray stage actor, each
Serve replica) needs the CCD. Each case runs in fresh processes, side by side in one run:
`FOLDRAY_CACHE_DIR=off` (decode every time) vs a cache folder filled by the first process
(`foldray.chem.ccd_cache`). Timed: `foldray.chem.ccd.warm_up()` (the CCD plus the standard
residues' components, what a stage actor does in its constructor), median of --repeats.
Writes benchmarks/results/ccd_load-cpu.json.

    python benchmarks/ccd_load.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from provenance import git_sha, machine_summary  # noqa: E402  (benchmarks/provenance.py)

PROBE = ("import time, resource; from foldray.chem import ccd; t = time.perf_counter(); ccd.warm_up(); "
         "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)")


def _run(cache: str) -> tuple[float, int]:
    env = {**os.environ, "FOLDRAY_CACHE_DIR": cache}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True,
                         check=True, timeout=600).stdout.split()
    return float(out[0]), int(out[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="fresh processes per case (default 5)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ccd_load-cpu.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fr-ccd-") as folder:
        first = _run(folder)                       # decodes and stores the cache
        runs: dict[str, list[tuple[float, int]]] = {"decode": [], "cached": []}
        for _ in range(args.repeats):              # alternating, so load changes hit both
            runs["decode"].append(_run("off"))
            runs["cached"].append(_run(folder))
        size = sum(p.stat().st_size for p in Path(folder).glob("ccd-*.npz"))
    result = {"name": "ccd_load", "git_sha": git_sha(), "machine": machine_summary(),
              "repeats": args.repeats, "cache_bytes": size,
              "first_process_decode_and_store_seconds": round(first[0], 3),
              **{f"{case}_seconds_median": round(statistics.median(t for t, _ in values), 3)
                 for case, values in runs.items()},
              **{f"{case}_peak_rss_bytes_median": int(statistics.median(m for _, m in values))
                 for case, values in runs.items()}}
    result["speedup"] = round(result["decode_seconds_median"] / result["cached_seconds_median"], 2)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
