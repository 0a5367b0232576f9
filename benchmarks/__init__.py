"""Side-by-side performance runs (not tests): `python -m benchmarks [--quick]` or `flax-bart bench`."""
