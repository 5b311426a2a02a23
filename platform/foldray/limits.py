"""Limits that command-line flags show as defaults, in a module with no heavy imports, so
building a parser (`foldray <command> --help`) does not load RDKit, gemmi or torch."""

DEFAULT_MAX_TOKENS = 8192   # token budget per job (tokenize, predict/validate/featurize --max-tokens)

# The batch engine (foldray.actors.batch; predict-batch, screen, featurize flags):
DEFAULT_PLACEMENT_TIMEOUT_S = 600.0        # actor pools that cannot start by then stop the run
# Per job: featurization past this (a huge flexible ligand's conformer search) is that
# job's error row, not a CPU worker stalled for the rest of the run.
DEFAULT_FEATURIZE_TIME_LIMIT_S = 600.0
