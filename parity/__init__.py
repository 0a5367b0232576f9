"""Parity harness: run a PyTorch reference BART and flax_bart on the same inputs and compare.

Submodules are imported on use (`parity.reference` needs torch, `parity.inputs` only numpy), so that
importing this package costs nothing.
"""
