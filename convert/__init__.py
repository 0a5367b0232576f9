"""PyTorch <-> Flax BART checkpoint conversion: every Hugging Face weight format, streaming,
strict, lossless. torch is imported only to read or write `.bin` files."""

from convert.api import convert_checkpoint, load_flax_params, save_flax_params
from convert.errors import ConversionError
from convert.rules import expected_flax_shapes, expected_pt_shapes, head_only_prefixes
from convert.summary import Summary
from convert.tree import flax_to_pt, pt_to_flax

__all__ = [
    "ConversionError", "Summary", "convert_checkpoint", "expected_flax_shapes", "expected_pt_shapes",
    "flax_to_pt", "head_only_prefixes", "load_flax_params", "pt_to_flax", "save_flax_params",
]
