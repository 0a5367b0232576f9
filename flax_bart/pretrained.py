"""The wrapper base class: the 4.x `FlaxPreTrainedModel` surface for BART.

It owns the parameters, validates concrete inputs, and runs the linen module through `jax.jit`
functions cached per (method, static flags), so repeated calls with the same shapes never retrace.
"""

from __future__ import annotations

import logging
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from flax.core import unfreeze

from flax_bart import outputs as O
from flax_bart.attention_kernels import check_attention_impl
from flax_bart.config import BartConfig
from flax_bart.hub import one_token
from flax_bart.layer_scan import check_scan_layers
from flax_bart.validation import InputError

logger = logging.getLogger("flax_bart")

FLAX_WEIGHTS_NAME = "flax_model.msgpack"

# XLA's backend (LLVM) optimisation off, and XLA:CPU's elemental emitters instead of its fusion emitters:
# the tiny config's forward compiled 3x faster, on one core instead of two; BART-base's no faster (float16
# 1.9x) and ran 1.5-2x slower (AVX2 CPU, `python -m benchmarks.compile_bench`). It pays when a program of a
# small model runs once or twice on small inputs (tests, a notebook, the parity gate's tiny configs).
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}


def check_compiler_options(options) -> dict | None:
    """`compiler_options` as `jax.jit` takes them: None, or a dict of XLA option name -> bool/int/float/str."""
    if options is None:
        return None
    if not isinstance(options, dict):
        raise TypeError(f"compiler_options must be a dict of XLA option name -> value or None, "
                        f"got {type(options).__name__}")
    bad = {k: v for k, v in options.items()
           if not isinstance(k, str) or not isinstance(v, (bool, int, float, str))}
    if bad:
        raise TypeError(f"compiler_options: names must be str and values bool/int/float/str, got {bad!r}")
    return dict(options) or None


def _flat(tree) -> dict:
    return traverse_util.flatten_dict(unfreeze(tree)) if tree else {}


class FlaxBartPreTrainedModel:
    """Holds `config`, `module`, `params`; subclasses define `head`, `module_class` and the API methods."""

    config_class = BartConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"   # as 4.x's classes say (pipelines and trainers read it)
    framework = "flax"
    module_class: type
    head: str

    def __init__(self, config: BartConfig, input_shape=(1, 1), seed: int = 0, dtype=jnp.float32,
                 _do_init: bool = True, *, param_dtype=jnp.float32, precision=None,
                 gradient_checkpointing: bool = False, scan_layers: bool | str = False, attention_impl: str = "auto",
                 compiler_options: dict | None = None, **kwargs):
        if kwargs:
            raise TypeError(f"{type(self).__name__}() got unexpected keyword arguments {sorted(kwargs)}")
        if isinstance(config, dict):
            config = BartConfig.from_dict(config)
        if not isinstance(config, BartConfig):
            raise TypeError(f"config must be a flax_bart.BartConfig, got {type(config).__name__}")
        self._config = config
        self.dtype = jnp.dtype(dtype)
        self.param_dtype = jnp.dtype(param_dtype)
        self.precision = precision
        self.input_shape = tuple(input_shape)
        self.seed = seed
        self.key = jax.random.PRNGKey(seed)
        self._compiled: dict = {}
        # flax_bart.layer_scan: one lax.scan per stack without a cache (True), decoding steps too ("all");
        # compiles faster, and its run cost is there
        self.scan_layers = check_scan_layers(scan_layers)
        self.attention_impl = check_attention_impl(attention_impl)   # flax_bart.attention_kernels
        # XLA options for every program this model compiles (e.g. FAST_COMPILE); fixed at construction
        self.compiler_options = check_compiler_options(compiler_options)
        self._build_module(gradient_checkpointing=bool(gradient_checkpointing), remat_policy=None)
        self._mesh = None
        self._shapes = None
        self._params = None
        self.checkpoint_directory = None   # from_pretrained: the directory the checkpoint was read from
        self._is_initialized = _do_init
        if _do_init:
            self._params = self.init_weights(self.key, self.input_shape)

    # ---- parameters ---------------------------------------------------------------------------
    def _dummy_inputs(self, input_shape):
        b, t = input_shape
        ids = np.full((b, t), 3, dtype=np.int32)   # numpy: no eager program to compile
        ids[:, -1] = self.config.eos_token_ids[0] if self.config.eos_token_ids else 2
        return ids

    def init_weights(self, rng, input_shape=(1, 1), params: dict | None = None) -> dict:
        """Random parameters; with `params`, only the missing leaves are drawn (4.x semantics)."""
        fresh = unfreeze(self.module.init({"params": rng, "dropout": rng}, **self._init_args(input_shape))["params"])
        if params is None:
            return fresh
        flat, given = _flat(fresh), _flat(params)
        flat.update({k: v for k, v in given.items() if k in flat})
        return traverse_util.unflatten_dict(flat)

    @property
    def config(self) -> BartConfig:
        return self._config

    @config.setter
    def config(self, config) -> None:
        """A whole new config: the module is rebuilt on it (gradient checkpointing kept), and the model's
        own params must fit it (else a ValueError naming them, and nothing changes)."""
        if isinstance(config, dict):
            config = BartConfig.from_dict(config)
        if not isinstance(config, BartConfig):
            raise TypeError(f"config must be a flax_bart.BartConfig, got {type(config).__name__}")
        old = self._config
        self._config = config
        try:
            self._build_module(gradient_checkpointing=self.module.gradient_checkpointing,
                               remat_policy=self.module.remat_policy)
            self._follow_config()
        except BaseException:
            self._config = old
            self._build_module(gradient_checkpointing=self.module.gradient_checkpointing,
                               remat_policy=self.module.remat_policy)
            self._follow_config()
            raise

    def _follow_config(self) -> None:
        """Drop the programs and shapes built from the config's earlier values after an assignment to it
        (`model.config.output_hidden_states = True` takes effect on the next call, as in 4.x); the
        model's own params must still fit (a changed `num_labels` is named, not a flax shape error)."""
        version = self.config.version
        if self.__dict__.get("_config_version", version) != version:
            self._compiled.clear()
            self.__dict__.pop("_generate_programs", None)
            self._shapes = None
            self.__dict__["_config_version"] = version
            if self._params is not None:
                try:
                    self.check_params(self._params)
                except ValueError as e:
                    self.__dict__["_config_version"] = None   # checked again on the next call, until it fits
                    raise InputError(f"after the config changed: {e}") from None
        self.__dict__["_config_version"] = version

    def params_shape_tree(self) -> dict:
        """{path tuple: ShapeDtypeStruct} of this model's parameters, computed without allocating."""
        self._follow_config()
        if self._shapes is None:
            abstract = jax.eval_shape(
                lambda: self.module.init({"params": jax.random.PRNGKey(0)}, **self._init_args((1, 1)))["params"]
            )
            self._shapes = _flat(abstract)
        return self._shapes

    @property
    def required_params(self) -> set:
        return set(self.params_shape_tree())

    @property
    def params(self) -> dict:
        if not self._is_initialized:
            raise ValueError(
                "params cannot be read from a model created with _do_init=False: keep the params returned "
                "by from_pretrained (or init_weights) and pass them as `params=`, or set `model.params = ...`"
            )
        return self._params

    @params.setter
    def params(self, params) -> None:
        self.check_params(params)
        self._params = unfreeze(params)
        self._is_initialized = True

    def check_params(self, params) -> None:
        """Raise naming every missing, unexpected or wrongly shaped parameter."""
        if not isinstance(params, dict) and not hasattr(params, "items"):
            raise TypeError(f"params must be a nested dict, got {type(params).__name__}")
        want, got = self.params_shape_tree(), _flat(params)
        problems = [f"missing {'/'.join(k)} {tuple(want[k].shape)}" for k in want if k not in got]
        problems += [f"unexpected {'/'.join(k)}" for k in got if k not in want]
        problems += [
            f"{'/'.join(k)}: shape {tuple(np.shape(got[k]))}, expected {tuple(want[k].shape)}"
            for k in want if k in got and tuple(np.shape(got[k])) != tuple(want[k].shape)
        ]
        if problems:
            raise ValueError(f"params do not fit {type(self).__name__}: " + "; ".join(problems))

    def _cast(self, params, dtype, mask=None):
        def cast(x, m=True):
            kind = x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype   # jnp.asarray would compile
            return x.astype(dtype) if m and jnp.issubdtype(kind, jnp.floating) else x
        if mask is None:
            return jax.tree_util.tree_map(cast, params)
        return jax.tree_util.tree_map(cast, params, mask)

    def to_bf16(self, params, mask=None):
        """A new tree with floating leaves (where `mask` is True) in bfloat16; `params` is not changed."""
        return self._cast(params, jnp.bfloat16, mask)

    def to_fp16(self, params, mask=None):
        return self._cast(params, jnp.float16, mask)

    def to_fp32(self, params, mask=None):
        return self._cast(params, jnp.float32, mask)

    @property
    def mesh(self):
        """The `jax.sharding.Mesh` the model runs on (None: one device). With a mesh, every batch is
        split over its `dp`/`fsdp` axes and decoding caches follow the params (see `flax_bart.sharding`)."""
        return self._mesh

    @mesh.setter
    def mesh(self, mesh) -> None:
        if mesh is not None:
            from flax_bart.sharding import auto_mesh

            mesh = auto_mesh(mesh)
        self._mesh = mesh
        self._compiled.clear()

    # ---- gradient checkpointing ---------------------------------------------------------------
    def _build_module(self, **remat) -> None:
        """(Re)build the linen module; programs traced with the previous one are dropped."""
        self.module = self.module_class(config=self.config, dtype=self.dtype, param_dtype=self.param_dtype,
                                        precision=self.precision, scan_layers=self.scan_layers,
                                        attention_impl=self.attention_impl, **remat)
        self._compiled.clear()
        self.__dict__.pop("_generate_programs", None)

    def enable_gradient_checkpointing(self, policy=None) -> None:
        """Recompute each encoder and decoder layer in the backward pass (`nn.remat`) instead of
        keeping its activations. `policy`: a name from `jax.checkpoint_policies` (`nothing_saveable`,
        `dots_saveable`, ...) or a policy callable; None recomputes everything. Parameters unchanged."""
        from flax_bart.remat import resolve_policy

        self._build_module(gradient_checkpointing=True, remat_policy=resolve_policy(policy))

    def disable_gradient_checkpointing(self) -> None:
        self._build_module(gradient_checkpointing=False, remat_policy=None)

    @property
    def is_gradient_checkpointing(self) -> bool:
        return self.module.gradient_checkpointing

    # ---- running the module -------------------------------------------------------------------
    def _resolve_params(self, params):
        if params is not None:
            return params
        return self.params

    def _rngs(self, train: bool, dropout_rng):
        if not train:
            return None
        if dropout_rng is None:
            c = self.config
            rates = (c.dropout, c.attention_dropout, c.activation_dropout, c.classifier_dropout or 0.0,
                     c.encoder_layerdrop, c.decoder_layerdrop)
            if any(r > 0 for r in rates):
                raise InputError("train=True with nonzero dropout/layerdrop rates needs dropout_rng (a PRNG key)")
            return None
        return {"dropout": dropout_rng}

    def _apply(self, method: str, params, arrays: dict, attn: bool, hid: bool, ret: bool, train: bool,
               dropout_rng, past_key_values=None):
        """Run `method` with the output flags; a cache is updated and returned in `past_key_values`."""
        out, cache = self._run(method, self._resolve_params(params), arrays,
                               dict(output_attentions=attn, output_hidden_states=hid, deterministic=not train),
                               rngs=self._rngs(train, dropout_rng), cache=past_key_values,
                               mutable=past_key_values is not None)
        if cache is not None:
            out = out.replace(past_key_values=cache)
        return O.returned(out, ret)

    def _run(self, method: str, params, arrays: dict, static: dict, rngs=None, cache=None, mutable=False,
             cache_only=False):
        """Apply `module.<method>` through a cached `jax.jit`; returns (output, cache or None).
        `cache_only` (with `mutable`) returns (None, cache): the program computes only what the new
        cache holds, as XLA drops the rest (a cache is built without compiling a whole decoder step)."""
        key = (method, tuple(sorted(static.items())), cache is not None, bool(mutable), rngs is not None,
               bool(cache_only), tuple(sorted(k for k, v in arrays.items() if v is not None)))
        self._follow_config()
        fn = self._compiled.get(key)
        mesh = self._mesh
        if mesh is not None:
            from flax_bart.sharding import cache_shardings, shard_batch

            arrays = shard_batch(arrays, mesh)
        if fn is None:
            module = self.module

            def run(params, arrays, rngs, cache):
                variables = {"params": params}
                if cache is not None:
                    variables["cache"] = cache
                res = module.apply(variables, **arrays, **static, rngs=rngs, method=method,
                                   mutable=["cache"] if mutable else False)
                if mutable:
                    out, state = res
                    new_cache = state["cache"]
                    if mesh is not None:  # keep the cache where the heads and the batch are
                        new_cache = jax.lax.with_sharding_constraint(new_cache, cache_shardings(new_cache, mesh))
                    return (None if cache_only else out), new_cache
                return res, None

            fn = jax.jit(run, compiler_options=self.compiler_options)
            self._compiled[key] = fn
        out, new_cache = fn(params, arrays, rngs, cache)
        return out, (unfreeze(new_cache) if new_cache is not None else None)

    def _make_cache(self, method, arrays, max_length, params):
        if params is None and self._is_initialized:
            params = self._params
        static = dict(init_cache=True, cache_length=int(max_length))
        if params is not None:
            _, cache = self._run(method, params, arrays, static, mutable=True, cache=None, cache_only=True)
            leaf = next(iter(jax.tree_util.tree_leaves(params)), None)
            if self._mesh is None and isinstance(leaf, jax.Array):
                # A cache that reads no parameter comes out of its program uncommitted (jit drops the
                # unused arguments), the caches the decoding steps return are committed to the
                # parameters' device: place it there, or the first step compiles a second program.
                cache = jax.device_put(cache, leaf.sharding)
            return cache
        # No params: an empty cache (zeros, index 0) from the shapes alone; nothing is initialised or compiled.
        shapes = jax.eval_shape(lambda a: self.module.init(jax.random.PRNGKey(0), **a, **static, method=method),
                                arrays)
        flat = traverse_util.flatten_dict(shapes["cache"])
        cache = traverse_util.unflatten_dict({k: jnp.zeros(v.shape, v.dtype) for k, v in flat.items()
                                              if "encoder_attn" not in k})
        if self._mesh is not None:
            from flax_bart.sharding import cache_shardings, place

            cache = jax.tree_util.tree_map(place, cache, cache_shardings(cache, self._mesh))
        return cache

    def _flags(self, output_attentions, output_hidden_states, return_dict):
        c = self.config
        return (
            c.output_attentions if output_attentions is None else bool(output_attentions),
            c.output_hidden_states if output_hidden_states is None else bool(output_hidden_states),
            c.return_dict if return_dict is None else bool(return_dict),
        )

    @classmethod
    def can_generate(cls) -> bool:
        """Whether the class has `generate` (as 4.x: True for ForConditionalGeneration and ForCausalLM)."""
        return False

    # ---- loading and saving -------------------------------------------------------------------
    def _loaded_from(self, directory: str, settings: dict) -> None:
        """Called by `from_pretrained` on the new model, with the keyword arguments that updated the config
        (the generating classes read `generation_config.json` here)."""

    def _save_extra_files(self, directory: str) -> None:
        """Called by `save_pretrained` after config.json (the generating classes write generation_config.json)."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, dtype=jnp.float32, *model_args, config=None,
                        _do_init: bool = True, from_pt: bool = False, ignore_mismatched_sizes: bool = False,
                        cache_dir=None, revision=None, local_files_only: bool = False, force_download=False,
                        token=None, use_auth_token=None, subfolder: str = "", seed: int = 0, input_shape=(1, 1),
                        param_dtype=None, precision=None, mesh=None, partition_rules=None, tune_allocator: bool = True,
                        gradient_checkpointing: bool = False, scan_layers: bool | str = False,
                        attention_impl: str = "auto", compiler_options: dict | None = None, **config_overrides):
        """Load a checkpoint: Flax msgpack (sharded too), Flax or PyTorch safetensors, pytorch_model.bin.

        As in 4.x, `dtype` may be the second positional argument, and further positional arguments are the
        constructor's (`input_shape`, `seed`). PyTorch weights are recognised without `from_pt`;
        `from_pt=True` prefers them when both exist. `subfolder` reads the checkpoint from a folder inside
        the directory or hub repository. From the hub only the config and one format's weights are
        downloaded. Keyword arguments that are not loading options update the config.
        Returns the model, or `(model, params)` when `_do_init=False` (like 4.x).

        With `mesh` (a `jax.sharding.Mesh`), each parameter is read slice by slice straight into its
        sharding, from `partition_rules` (a preset name or (regex, PartitionSpec) pairs; default:
        `flax_bart.sharding.DEFAULT_RULES`, axes `dp`, `fsdp`, `tp`), and the model then runs on the mesh.

        On a CPU backend, glibc's allocator is tuned so that XLA:CPU reuses its buffers instead of
        page-faulting them in again on every call (`flax_bart.host_memory`, process-wide); pass
        `tune_allocator=False` (or set `FLAX_BART_TUNE_ALLOCATOR=0`) to leave it alone.

        `scan_layers`, `attention_impl`, `gradient_checkpointing` and `compiler_options` are passed to the
        model's constructor."""
        from flax_bart.loading import load_pretrained

        if len(model_args) > 2:
            raise TypeError(f"from_pretrained takes at most 2 positional arguments after dtype (input_shape, "
                            f"seed), got {len(model_args)}")
        if isinstance(dtype, (BartConfig, dict)):
            raise TypeError(f"from_pretrained's second positional argument is dtype (as in 4.x), got a "
                            f"{type(dtype).__name__}: pass the config as config=")
        if model_args:
            input_shape = model_args[0]
        if len(model_args) > 1:
            seed = model_args[1]
        if not (isinstance(input_shape, (tuple, list)) and len(input_shape) == 2
                and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in input_shape)):
            raise TypeError(f"from_pretrained: input_shape must be (batch, length) of positive ints, got {input_shape!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"from_pretrained: seed must be an int, got {seed!r}")
        revision = _loader_only_options(config_overrides, revision)
        if tune_allocator:
            from flax_bart.host_memory import tune_for_cpu

            tune_for_cpu()
        loaded = load_pretrained(
            cls, pretrained_model_name_or_path, config=config, dtype=dtype, _do_init=_do_init, from_pt=from_pt,
            ignore_mismatched_sizes=ignore_mismatched_sizes, cache_dir=cache_dir, revision=revision,
            local_files_only=local_files_only, force_download=force_download,
            token=one_token(token, use_auth_token), seed=seed, param_dtype=param_dtype,
            precision=precision, config_overrides=config_overrides, mesh=mesh, partition_rules=partition_rules,
            subfolder=subfolder,
            model_kwargs=dict(input_shape=input_shape, gradient_checkpointing=bool(gradient_checkpointing),
                              scan_layers=check_scan_layers(scan_layers),
                              attention_impl=check_attention_impl(attention_impl),
                              compiler_options=check_compiler_options(compiler_options)),
        )
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        model._loaded_from(model.checkpoint_directory, config_overrides)
        return loaded

    def save_pretrained(self, save_directory, params=None, push_to_hub: bool = False,
                        max_shard_size: int | str | None = "10GB", token: str | bool | None = None,
                        safe_serialization: bool = False, **kwargs) -> str:
        """Write `config.json` (and `generation_config.json` for the generating classes) and
        `flax_model.msgpack` (or Flax safetensors) that 4.x Flax BART reads; 4.x's positional order.

        `push_to_hub=True` then uploads the directory's files with huggingface_hub, as 4.x: to `repo_id`
        (default: the directory's name, in the namespace of `token`), created if needed (`private`), with
        `commit_message`, `commit_description`, `create_pr` and `revision` from the keyword arguments."""
        from convert import save_flax_params

        token = one_token(token, kwargs.pop("use_auth_token", None))
        hub = {k: kwargs.pop(k) for k in _PUSH_OPTIONS if k in kwargs}
        if kwargs:
            raise TypeError(f"save_pretrained() got unexpected keyword arguments {sorted(kwargs)}")
        if hub and not push_to_hub:
            raise TypeError(f"save_pretrained(): {sorted(hub)} apply only with push_to_hub=True")
        if os.path.isfile(save_directory):
            raise InputError(f"save_directory {save_directory!r} is a file, expected a directory")
        params = self._resolve_params(params)
        self.check_params(params)
        os.makedirs(save_directory, exist_ok=True)
        # as 4.x wrote it: the PyTorch class name ("BartForConditionalGeneration"), which transformers'
        # Auto classes and PyTorch users read
        self.config.replace(architectures=[type(self).__name__.removeprefix("Flax")]).save_pretrained(save_directory)
        self._save_extra_files(save_directory)
        # as 4.x: past max_shard_size the shards are msgpack, safe_serialization or not (4.x reads no
        # sharded safetensors; flax_bart and `flax-bart convert --format safetensors` do)
        save_flax_params(jax.device_get(params), save_directory,
                         format="safetensors" if safe_serialization else "msgpack", max_shard_size=max_shard_size,
                         sharded_format="msgpack")
        logger.info("saved %s to %s", type(self).__name__, save_directory)
        if push_to_hub:
            push_directory(save_directory, token=token, **hub)
        return save_directory

    def push_to_hub(self, repo_id: str, use_temp_dir: bool | None = None, commit_message: str | None = None,
                    private: bool | None = None, token=None, max_shard_size: int | str | None = "5GB",
                    create_pr: bool = False, safe_serialization: bool = True, revision: str | None = None,
                    commit_description: str | None = None, params=None):
        """4.x's `model.push_to_hub(repo_id, ...)`: saves into a temporary directory (`save_pretrained`,
        Flax safetensors by default as 4.x) and uploads it to `repo_id`, created if needed. `use_temp_dir`
        is accepted for 4.x's order; a temporary directory is always used."""
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp, params=params, max_shard_size=max_shard_size,
                                 safe_serialization=safe_serialization)
            return push_directory(tmp, repo_id=repo_id, token=token, private=private, commit_message=commit_message,
                                  commit_description=commit_description, create_pr=create_pr, revision=revision)


# save_pretrained(push_to_hub=True)'s keyword arguments, as 4.x's
_PUSH_OPTIONS = ("repo_id", "private", "commit_message", "commit_description", "create_pr", "revision")


def push_directory(directory, repo_id: str | None = None, token=None, private: bool | None = None,
                   commit_message: str | None = None, commit_description: str | None = None,
                   create_pr: bool = False, revision: str | None = None):
    """Upload the files of a saved checkpoint `directory` to the hub repository `repo_id` (default: the
    directory's name), creating it if needed. Returns huggingface_hub's commit info."""
    import huggingface_hub

    if repo_id is None:
        repo_id = os.path.basename(os.path.normpath(os.fspath(directory)))
    repo_id = huggingface_hub.create_repo(repo_id, token=token, private=private, exist_ok=True).repo_id
    return huggingface_hub.upload_folder(
        repo_id=repo_id, folder_path=os.fspath(directory), commit_message=commit_message or "Upload model",
        commit_description=commit_description, token=token, create_pr=create_pr, revision=revision,
    )


def warn(msg: str) -> None:
    logger.warning(msg)
    warnings.warn(msg, stacklevel=3)


# 4.x's from_pretrained took these loading options besides the config's fields; they must not end up in
# the config. Those that mean nothing here are dropped (with a warning where 4.x gave one).
_IGNORED_LOADER_OPTIONS = ("resume_download", "mirror", "_from_auto", "_from_pipeline", "adapter_kwargs")


def _loader_only_options(kwargs: dict, revision):
    """Take 4.x's loading-only keywords out of `kwargs` (the config overrides); the revision to use."""
    for name in _IGNORED_LOADER_OPTIONS:
        kwargs.pop(name, None)
    if kwargs.pop("trust_remote_code", None) is True:
        logger.warning("trust_remote_code=True has no effect here (no code is ever loaded from a checkpoint)")
    if kwargs.pop("proxies", None):
        logger.warning("proxies= is ignored: huggingface_hub reads HTTP(S)_PROXY from the environment")
    commit = kwargs.pop("_commit_hash", None)
    return revision if revision is not None else commit

