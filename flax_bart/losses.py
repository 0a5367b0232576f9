"""Fine-tuning losses with PyTorch BART's semantics (transformers v5), as pure jit-friendly functions.

Every loss is computed in float32 whatever the logits' dtype, and is a masked mean: there is no
Python control flow on array values, so each function works eagerly, under `jax.jit` and under
`jax.grad`. Shapes and dtypes are checked always (they are static) and raise `InputError` naming the
argument; target values are checked when they are concrete. Inside a `jit` an invalid target (a
class id outside `[0, num_classes)` that is not the ignore index) makes the loss NaN, where PyTorch
would raise: never a plausible number.

A batch in which every target is ignored has loss NaN (0 / 0), as in PyTorch, and its gradient
with respect to the logits is zero, as in PyTorch. A training loop that can meet such a batch
should skip it (or `jnp.where` its loss) rather than rely on a finite value.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from flax_bart.config import PROBLEM_TYPES
from flax_bart.validation import InputError, is_concrete

IGNORE_INDEX = -100


def _is_int(x) -> bool:
    dtype = x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype
    return np.issubdtype(np.dtype(dtype), np.integer)


def check_class_ids(name: str, targets, shape: tuple, num_classes: int, what: str,
                    ignore_index: int = IGNORE_INDEX) -> None:
    """`targets` are class ids: integer, of `shape` (a None entry matches any size, named by `what`),
    each in `[0, num_classes)` or equal to `ignore_index` (values checked when concrete)."""
    got = tuple(np.shape(targets))
    if len(got) != len(shape) or any(s is not None and s != g for s, g in zip(shape, got)):
        want = "(" + ", ".join(what if s is None else str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"
        raise InputError(f"{name} has shape {got}, expected {want}")
    if not _is_int(targets):
        raise InputError(f"{name} must hold integer class ids, got dtype {np.asarray(targets).dtype}")
    if is_concrete(targets) and np.size(targets):
        a = np.asarray(targets)
        bad = a[(a != ignore_index) & ((a < 0) | (a >= num_classes))]
        if bad.size:
            raise InputError(f"{name} holds {int(bad.flat[0])}, expected a class id in [0, {num_classes}) "
                             f"or {ignore_index} (ignored)")


def _check_smoothing(label_smoothing) -> None:
    if is_concrete(label_smoothing) and not 0.0 <= float(label_smoothing) <= 1.0:
        raise InputError(f"label_smoothing must be in [0, 1], got {float(label_smoothing)}")


def _mean_cross_entropy(logits_NxC, targets_N, ignore_index: int, label_smoothing=0.0):
    """torch `cross_entropy(..., ignore_index, label_smoothing, reduction="mean")` on rows of logits.

    With smoothing eps each kept row costs (1 - eps) * nll + eps * mean over classes of -log p,
    i.e. eps / C of the mass on every class including the target (PyTorch's definition), and the
    mean runs over kept rows only. Out-of-range targets give NaN."""
    logp_NxC = jax.nn.log_softmax(logits_NxC.astype(jnp.float32), axis=-1)
    classes = logits_NxC.shape[-1]
    kept_N = targets_N != ignore_index
    in_range_N = (targets_N >= 0) & (targets_N < classes)
    safe_N = jnp.where(in_range_N, targets_N, 0)
    per_row_N = -jnp.take_along_axis(logp_NxC, safe_N[:, None], axis=-1)[:, 0]
    # Only a Python 0 skips the smoothing term (then -inf logits stay harmless, as in PyTorch);
    # a traced value always computes it.
    if not (isinstance(label_smoothing, (int, float)) and label_smoothing == 0):
        eps = jnp.asarray(label_smoothing, jnp.float32)
        per_row_N = (1.0 - eps) * per_row_N + eps * -logp_NxC.mean(axis=-1)
    per_row_N = jnp.where(in_range_N, per_row_N, jnp.nan)
    total = jnp.where(kept_N, per_row_N, 0.0).sum()
    return total / kept_N.sum().astype(jnp.float32)


def lm_loss(logits, labels, label_smoothing=0.0):
    """Token cross-entropy as BartForConditionalGeneration and BartForCausalLM compute it.

    logits: (..., vocab_size); labels: integer, `logits.shape[:-1]`, -100 = ignored. `labels[..., i]`
    is the target of `logits[..., i, :]`: nothing is shifted here (the seq2seq decoder inputs are the
    shifted labels; see `causal_lm_loss` for a shift inside). Returns the mean over non-ignored tokens,
    a float32 scalar, equal to torch `CrossEntropyLoss(ignore_index=-100, label_smoothing=...)`."""
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    check_class_ids("labels", labels, tuple(logits.shape[:-1]), logits.shape[-1], "")
    _check_smoothing(label_smoothing)
    v = logits.shape[-1]
    return _mean_cross_entropy(logits.reshape(-1, v), labels.reshape(-1), IGNORE_INDEX, label_smoothing)


def causal_lm_loss(logits, labels, label_smoothing=0.0):
    """Next-token loss with the shift inside, as transformers' `ForCausalLMLoss`: the *labels* move one
    step left (`labels[..., 1:]`, padded at the end with -100), so `logits[..., i, :]` is scored
    against `labels[..., i + 1]` and the last position scores nothing. Pass `labels = input_ids`
    (with -100 where no loss is wanted).

    Note: transformers v5 (checked: 5.24) `BartForCausalLM` does not shift; its loss, and so
    `FlaxBartForCausalLM(..., labels=...)`, is `lm_loss` on labels the caller has already shifted."""
    if np.ndim(labels) < 1:
        raise InputError(f"labels has shape {tuple(np.shape(labels))}, expected (batch_size, sequence_length)")
    labels = jnp.asarray(labels)
    pad = jnp.full(labels.shape[:-1] + (1,), IGNORE_INDEX, labels.dtype)
    return lm_loss(logits, jnp.concatenate([labels[..., 1:], pad], axis=-1), label_smoothing)


def _as_positions(name: str, positions, batch: int):
    """(batch,) integer positions; (batch, 1) is squeezed like PyTorch's `squeeze(-1)`."""
    shape = tuple(np.shape(positions))
    if shape not in ((batch,), (batch, 1)):
        raise InputError(f"{name} has shape {shape}, expected ({batch},) or ({batch}, 1)")
    positions = jnp.asarray(positions)
    if not _is_int(positions):
        raise InputError(f"{name} must hold integer token positions, got dtype {positions.dtype}")
    return positions.reshape(batch)


def qa_loss(start_logits, end_logits, start_positions, end_positions):
    """Span loss of BartForQuestionAnswering: (CE(start) + CE(end)) / 2.

    start/end_logits: (batch, seq_len). Positions are clamped to `[0, seq_len]` and `seq_len` is the
    ignore index, so a position past the end (an answer cut off by truncation) is ignored, while a
    negative one becomes 0 (PyTorch's clamp does the same). All ignored: NaN, as in PyTorch."""
    start_logits, end_logits = jnp.asarray(start_logits), jnp.asarray(end_logits)
    for name, x in (("start_logits", start_logits), ("end_logits", end_logits)):
        if np.ndim(x) != 2:
            raise InputError(f"{name} has shape {tuple(np.shape(x))}, expected (batch_size, sequence_length)")
    if tuple(end_logits.shape) != tuple(start_logits.shape):
        raise InputError(f"end_logits has shape {tuple(end_logits.shape)}, expected {tuple(start_logits.shape)} "
                         "(the shape of start_logits)")
    batch, seq_len = start_logits.shape
    losses = []
    for logits, name, positions in ((start_logits, "start_positions", start_positions),
                                    (end_logits, "end_positions", end_positions)):
        targets = jnp.clip(_as_positions(name, positions, batch), 0, seq_len)
        losses.append(_mean_cross_entropy(logits, targets, ignore_index=seq_len))
    return (losses[0] + losses[1]) / 2


def problem_type_for(num_labels: int, labels_dtype, problem_type: str | None = None) -> str:
    """The classification problem type, picked like PyTorch when `problem_type` is None: one label is
    regression, integer labels are single-label classes, anything else is multi-label.

    PyTorch counts only int32/int64 as integer (other integer dtypes would reach BCE and fail there);
    here every integer dtype means class ids, and bool means multi-label. Unlike PyTorch this does
    not write the choice back into the config, so each call decides from its own labels."""
    if problem_type is not None:
        if problem_type not in PROBLEM_TYPES:
            raise InputError(f"problem_type is {problem_type!r}, expected one of {list(PROBLEM_TYPES)} or None")
        return problem_type
    if num_labels == 1:
        return "regression"
    if np.issubdtype(np.dtype(labels_dtype), np.integer):
        return "single_label_classification"
    return "multi_label_classification"


def _mse(pred, target):
    return jnp.mean(jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32)))


def _bce_with_logits(logits, targets):
    """torch `BCEWithLogitsLoss()`: mean over every element; targets may be soft (floats in [0, 1])."""
    x, y = logits.astype(jnp.float32), targets.astype(jnp.float32)
    return -jnp.mean(y * jax.nn.log_sigmoid(x) + (1.0 - y) * jax.nn.log_sigmoid(-x))


def classification_loss(logits, labels, problem_type: str | None = None, num_labels: int | None = None):
    """The loss of BartForSequenceClassification. logits: (batch, num_labels).

    - regression: MSE; with one label, logits and labels are flattened to (batch,) (PyTorch squeezes);
      otherwise labels have the logits' shape.
    - single_label_classification: CE over labels of `batch` class ids (shape (batch,) or (batch, 1)),
      -100 ignored.
    - multi_label_classification: BCE-with-logits against labels of the logits' shape, mean over all.
    `problem_type=None` picks one with `problem_type_for`; `num_labels` defaults to the logits' last
    axis and must equal it when given."""
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    if logits.ndim != 2:
        raise InputError(f"logits has shape {tuple(logits.shape)}, expected (batch_size, num_labels)")
    batch, classes = logits.shape
    if num_labels is not None and num_labels != classes:
        raise InputError(f"num_labels is {num_labels}, but the logits have {classes} labels (shape {tuple(logits.shape)})")
    kind = problem_type_for(classes, labels.dtype, problem_type)
    shape = tuple(labels.shape)
    if kind == "single_label_classification":
        if int(np.prod(shape)) != batch:
            raise InputError(f"labels has shape {shape}, expected ({batch},) class ids for {kind}")
        labels = labels.reshape(batch)
        check_class_ids("labels", labels, (batch,), classes, "")
        return _mean_cross_entropy(logits, labels, IGNORE_INDEX)
    if kind == "regression" and classes == 1:
        if int(np.prod(shape)) != batch:
            raise InputError(f"labels has shape {shape}, expected ({batch},) or ({batch}, 1) for regression")
        return _mse(logits.reshape(batch), labels.reshape(batch))
    if shape != (batch, classes):
        raise InputError(f"labels has shape {shape}, expected {(batch, classes)} for {kind}")
    if kind == "regression":
        return _mse(logits, labels)
    return _bce_with_logits(logits, labels)
