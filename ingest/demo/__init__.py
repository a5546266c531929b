"""`ingest demo`: the whole pipeline end to end on one machine, checked against the simulator's
ground truth (dev tooling)."""
