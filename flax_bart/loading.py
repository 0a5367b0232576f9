"""`from_pretrained`: resolve, read the config, load weights of any format through `convert`, and
fit them to the class: new head weights are drawn (with a warning naming them), nothing else is."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from flax_bart.config import CONFIG_NAME, BartConfig, ConfigError
from flax_bart.hub import MODEL, CheckpointNotFoundError, resolve_checkpoint_dir
from flax_bart.pretrained import logger, warn


def _fresh_leaf(path: tuple, shape, dtype, config: BartConfig, key):
    name = path[-1]
    if name in ("kernel", "embedding"):
        return (config.init_std * jax.random.normal(key, shape, jnp.float32)).astype(dtype)
    if name == "scale":
        return jnp.ones(shape, dtype)
    return jnp.zeros(shape, dtype)  # biases, final_logits_bias


def _draw(keys, shapes: dict, config: BartConfig, seed: int) -> dict:
    out = {}
    for i, k in enumerate(sorted(keys)):
        spec = shapes[k]
        out[k] = np.asarray(_fresh_leaf(k, spec.shape, spec.dtype, config, jax.random.PRNGKey(seed + i)))
    return out


def load_pretrained(cls, path_or_id, *, config, dtype, _do_init, from_pt, ignore_mismatched_sizes, cache_dir,
                    revision, local_files_only, force_download, token, seed, param_dtype, precision,
                    config_overrides, mesh=None, partition_rules=None, model_kwargs=None, subfolder=""):
    from convert import head_only_prefixes, load_flax_params

    path = os.fspath(path_or_id)
    directory = resolve_checkpoint_dir(path, cache_dir=cache_dir, revision=revision,
                                       local_files_only=local_files_only or None, token=token,
                                       force_download=force_download, subfolder=subfolder, files=MODEL,
                                       prefer="pt" if from_pt else None)
    weights = path if os.path.isfile(path) else directory
    if config is None or isinstance(config, (str, os.PathLike)):
        cfg_dir = directory if config is None else resolve_checkpoint_dir(
            config, cache_dir=cache_dir, revision=revision, local_files_only=local_files_only or None, token=token,
            files=(CONFIG_NAME,))
        cfg_path = os.path.join(cfg_dir, CONFIG_NAME)
        if not os.path.exists(cfg_path):   # a FIFO or a folder there: read_json_file names it
            raise CheckpointNotFoundError(f"{cfg_dir}: no {CONFIG_NAME} (pass config= explicitly)")
        config = BartConfig.from_json_file(cfg_path)
    elif isinstance(config, dict):
        config = BartConfig.from_dict(config)
    # the checkpoint's own config.json: with ignore_mismatched_sizes the weights are read against it, whatever
    # config= asks for (4.x's fine-tuning pattern: a config object or file with another num_labels)
    own_path = os.path.join(directory, CONFIG_NAME)
    file_config = None
    if ignore_mismatched_sizes and os.path.isfile(own_path):
        try:
            file_config = BartConfig.from_json_file(own_path)
        except ConfigError as e:   # config= was given (else it was read above): the weights are read against it
            logger.warning("ignore_mismatched_sizes: the checkpoint's own %s cannot be read (%s); reading its "
                           "weights against the config given", CONFIG_NAME, e)
    if config_overrides:
        unknown = sorted(k for k in config_overrides if not config.knows(k))
        if unknown:   # 4.x: passed on to the module's constructor, which refused them
            raise TypeError(f"{cls.__name__}.from_pretrained() got unexpected keyword arguments {unknown}: neither "
                            "a from_pretrained option nor an attribute of the config (its fields, its config.json's "
                            "keys, 4.x's PretrainedConfig attributes)")
        config = config.replace(**config_overrides)
    fill = [c for c in (config, file_config) if c is not None and (not c.labels_given or not c.tie_word_embeddings)]
    if fill:
        # What config.json leaves open, the weights say: the label count (v5 drops default label
        # fields) and whether the input embeddings are separate parameters (v5, untied).
        from convert import classifier_rows, open_source, with_layout_of

        source = open_source(weights, prefer="pt" if from_pt else "flax")
        rows = classifier_rows(source.infos, source.framework)
        if any(c is config for c in fill):
            config = with_layout_of(config.with_labels_from_weights(rows, path), source.infos, source.framework,
                                    source.read, cls.head, path)
        if file_config is not None:
            file_config = file_config.with_labels_from_weights(rows, path, log=False)
            if config.separate_input_embeddings and not file_config.tie_word_embeddings:
                file_config = file_config.replace(separate_input_embeddings=True)

    model = cls(config, dtype=dtype, _do_init=False, seed=seed, param_dtype=param_dtype or jnp.float32,
                precision=precision, **(model_kwargs or {}))
    model.checkpoint_directory = directory
    want = model.params_shape_tree()
    # With ignore_mismatched_sizes the weights are read against the checkpoint's own config, and
    # whatever then does not fit the requested config is drawn anew (with a warning).
    load_config = file_config if (ignore_mismatched_sizes and file_config is not None) else config
    if mesh is not None:
        return _load_sharded(model, path, weights, config, load_config, mesh, partition_rules,
                             ignore_mismatched_sizes=ignore_mismatched_sizes, seed=seed, param_dtype=param_dtype,
                             _do_init=_do_init)
    params, summary = load_flax_params(
        weights, load_config, cls.head, allow_missing=head_only_prefixes(load_config, cls.head),
        allow_unexpected=True, prefer="pt" if from_pt else "flax",
    )
    flat = traverse_util.flatten_dict(params)
    _note_ignored(cls, path, summary.unexpected, summary.unused)
    mismatched = sorted(k for k in want if k in flat and tuple(np.shape(flat[k])) != tuple(want[k].shape))
    _note_mismatched(cls, path, {k: tuple(np.shape(flat[k])) for k in mismatched}, want, ignore_mismatched_sizes)
    for k in mismatched:
        del flat[k]
    missing = sorted(k for k in want if k not in flat)
    if missing:
        _note_missing(cls, path, missing, mismatched, seed)
        flat.update(_draw(missing, want, config, seed))
    extra = sorted(k for k in flat if k not in want)
    for k in extra:  # e.g. a head of another size the converter already reported as unused
        del flat[k]
    for k in list(flat):  # onto the device once, leaf by leaf (one host copy at a time), not per call
        leaf = flat[k] if param_dtype is None else np.asarray(flat[k]).astype(param_dtype)
        flat[k] = jax.device_put(leaf)
    params = traverse_util.unflatten_dict(flat)
    if _do_init:
        model.params = params
        return model
    model.check_params(params)
    return model, params


def _note_ignored(cls, path, unexpected, unused) -> None:
    if unexpected:
        warn(f"{cls.__name__}.from_pretrained({path!r}): ignored {len(unexpected)} tensors that are "
             f"not BART parameters: {unexpected[:20]}")
    if unused:
        logger.info("%s.from_pretrained(%r): unused weights of other heads: %s", cls.__name__, path, unused[:20])


def _note_mismatched(cls, path, mismatched: dict, want, ignore_mismatched_sizes: bool) -> None:
    """`mismatched`: {path tuple: checkpoint shape} of params whose shape differs from the model's."""
    if not mismatched:
        return
    if not ignore_mismatched_sizes:  # only reachable if load_config == config: converter checked shapes
        raise ValueError(f"shape mismatch for {['/'.join(k) for k in mismatched]}")
    detail = [f"{'/'.join(k)}: checkpoint {shape} -> model {tuple(want[k].shape)}" for k, shape in mismatched.items()]
    warn(f"{cls.__name__}.from_pretrained({path!r}): ignore_mismatched_sizes=True, newly initialised: {detail}")


def _note_missing(cls, path, missing, mismatched, seed) -> None:
    names = ["/".join(k) for k in missing if k not in set(mismatched)]
    if names:
        warn(f"{cls.__name__}.from_pretrained({path!r}): the checkpoint has no weights for {names}; they are "
             f"newly initialised (seed {seed}) and need training before use")


def _draw_sharded(keys, shapes: dict, shardings: dict, config: BartConfig, seed: int) -> dict:
    """`_draw` (same values), each new leaf then placed into its sharding; one leaf on the host at a time."""
    out = {}
    for i, k in enumerate(sorted(keys)):
        spec = shapes[k]
        host = np.asarray(_fresh_leaf(k, spec.shape, spec.dtype, config, jax.random.PRNGKey(seed + i)))
        out[k] = jax.make_array_from_callback(host.shape, shardings[k], lambda idx, h=host: h[idx])
        del host
    return out


def _load_sharded(model, path, weights, config, load_config, mesh, partition_rules, *, ignore_mismatched_sizes,
                  seed, param_dtype, _do_init):
    """The `mesh=` path of `load_pretrained`: every parameter is read slice by slice into its
    sharding (see `flax_bart.shard_loading`); no host copy of the whole model is made."""
    from convert import head_only_prefixes
    from flax_bart.shard_loading import load_into_shards
    from flax_bart.sharding import auto_mesh, tree_shardings

    cls = type(model)
    mesh = auto_mesh(mesh)
    want = model.params_shape_tree()
    shardings = tree_shardings(want, mesh, partition_rules, config=config)
    flat, report = load_into_shards(weights, load_config, cls.head, want, shardings, dtype=param_dtype,
                                    allow_missing=head_only_prefixes(load_config, cls.head))
    _note_ignored(cls, path, report.unexpected, report.unused)
    _note_mismatched(cls, path, {k: shape for k, shape in report.mismatched}, want, ignore_mismatched_sizes)
    mismatched = sorted(k for k, _ in report.mismatched)
    missing = sorted(k for k in want if k not in flat)
    if missing:
        _note_missing(cls, path, missing, mismatched, seed)
        flat.update(_draw_sharded(missing, want, shardings, config, seed))
    logger.info("%s.from_pretrained(%r): %d tensors read into shards on mesh %s (%d bytes read, %d whole-tensor reads)",
                cls.__name__, path, report.tensors, dict(mesh.shape), report.bytes_read, report.whole_tensor_reads)
    params = traverse_util.unflatten_dict(flat)
    model.mesh = mesh
    if _do_init:
        model.params = params
        return model
    model.check_params(params)
    return model, params
