"""Context parallelism: one complex across several devices (pair representation sharded by rows)."""
