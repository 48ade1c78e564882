"""Speed benchmarks: keras_vit against a peer implementation, as ratios.

Run `python -m benchmarks [NAME ...] [--quick]` (or `make bench`); see
`benchmarks/README.md`.
"""

import os

# Before anything imports keras: the Makefile exports these, `python -m benchmarks`
# run by hand may not.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
