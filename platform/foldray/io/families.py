"""The reference families whose checkpoints import, and the config that carries each one's
behaviour switches. Torch-free, so `foldray import-weights --help` can list them quickly."""

from __future__ import annotations

SOURCES = ("openfold3", "protenix")
# the family's switches; sizes come from the checkpoint (foldray.io.infer_config)
FAMILY_CONFIGS = {"openfold3": "full-openfold3", "protenix": "full-protenix"}
