"""dp's benchmarks: `make bench` (or `python -m bench [NAME ...]`)."""
