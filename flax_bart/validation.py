"""Checks on user inputs, run whenever the wrapper sees concrete arrays.

Inside a caller's own `jax.jit` the values are tracers and cannot be inspected; there the model is
built so that bad values show up as NaN instead of a plausible number: out-of-vocabulary ids and
out-of-range positions give NaN embeddings, and a classification batch with a missing or uneven
`<eos>` count gives NaN logits. Shapes are static, so shape checks always run.
"""

from __future__ import annotations

import jax
import numpy as np


class InputError(ValueError):
    """An argument whose value the model cannot take; the message names it."""


def is_concrete(x) -> bool:
    return x is not None and not isinstance(x, jax.core.Tracer)


def check_ids(name: str, ids, vocab_size: int) -> None:
    if ids is None:
        raise InputError(f"{name} is required")
    if getattr(ids, "ndim", None) != 2:
        raise InputError(f"{name} must have shape (batch_size, sequence_length), got shape {np.shape(ids)}")
    if ids.shape[0] == 0 or ids.shape[1] == 0:
        raise InputError(f"{name} is empty (shape {tuple(ids.shape)})")
    if not np.issubdtype(np.dtype(ids.dtype), np.integer):
        raise InputError(f"{name} must hold integer token ids, got dtype {ids.dtype}")
    if is_concrete(ids):
        a = np.asarray(ids)
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi >= vocab_size:
            bad = lo if lo < 0 else hi
            raise InputError(
                f"{name} holds token id {bad}, outside the vocabulary [0, vocab_size={vocab_size})"
            )


def check_length(name: str, length: int, max_positions: int, start: int = 0) -> None:
    if start + length > max_positions:
        raise InputError(
            f"{name} needs positions up to {start + length - 1}, but max_position_embeddings is "
            f"{max_positions} (positions 0..{max_positions - 1})"
        )


def check_positions(name: str, positions, max_positions: int) -> None:
    if is_concrete(positions):
        a = np.asarray(positions)
        if a.size and (a.min() < 0 or a.max() >= max_positions):
            raise InputError(
                f"{name} holds positions in [{a.min()}, {a.max()}], outside [0, max_position_embeddings="
                f"{max_positions})"
            )


def check_mask(name: str, mask, expected_shape: tuple, alternatives: tuple = ()) -> None:
    if mask is None:
        return
    shape = tuple(np.shape(mask))
    if shape != tuple(expected_shape) and shape not in [tuple(a) for a in alternatives]:
        want = " or ".join(str(tuple(s)) for s in (expected_shape, *alternatives))
        raise InputError(f"{name} has shape {shape}, expected {want}")


def check_eos_rows(input_ids, eos_ids: tuple[int, ...]) -> None:
    """Sequence classification reads the state at the last `<eos>`: every row needs one, equally many."""
    if not is_concrete(input_ids):
        return
    counts = np.isin(np.asarray(input_ids), np.asarray(eos_ids)).sum(axis=1)
    if (counts == 0).any() or (counts != counts[0]).any():
        raise InputError(
            f"input_ids: sequence classification needs the same number (>= 1) of <eos> tokens "
            f"(ids {list(eos_ids)}) in every row; got counts per row {counts.tolist()}"
        )
