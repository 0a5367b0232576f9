"""PyTorch <-> Flax BART checkpoint conversion: every Hugging Face weight format, streaming,
strict, lossless. torch is imported only to read or write `.bin` files."""

from convert.api import convert_checkpoint, load_flax_params, save_flax_params
from convert.errors import ConversionError
from convert.plan import classifier_rows, with_layout_of
from convert.rules import expected_flax_shapes, expected_pt_shapes, head_only_prefixes
from convert.sources import open_source
from convert.summary import Summary
from convert.tree import flax_to_pt, pt_to_flax

__all__ = [
    "ConversionError", "Summary", "classifier_rows", "convert_checkpoint", "expected_flax_shapes", "expected_pt_shapes",
    "flax_to_pt", "head_only_prefixes", "load_flax_params", "open_source", "pt_to_flax",
    "save_flax_params", "with_layout_of",
]
