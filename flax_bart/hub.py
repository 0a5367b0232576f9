"""Resolve a local checkpoint directory or a hub id (through huggingface_hub's cache).

A hub repository often holds the same weights several times (`flax_model.msgpack`, `model.safetensors`,
`pytorch_model.bin`, TensorFlow and Rust files): BART-large's come to several GB each. Callers say which
files they need (`files`): the model's config and the weights of one format, chosen as the loader would
choose among them; the tokenizer's files; or named files. Only those are downloaded. Offline (or with
`local_files_only`), the cached snapshot is used as it is.
"""

from __future__ import annotations

import os
import posixpath
from typing import Iterable

CONFIG_FILES = ("config.json", "generation_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "added_tokens.json")
MODEL = "model"          # files=MODEL: config files + one format's weights
TOKENIZER = "tokenizer"  # files=TOKENIZER: the tokenizer's files


class CheckpointNotFoundError(OSError):
    pass


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def one_token(token, use_auth_token):
    """The hub token from 4.x's two spellings: `use_auth_token` alone is taken; both given is a ValueError,
    as in 4.x."""
    if use_auth_token is None:
        return token
    if token is not None:
        raise ValueError("token and use_auth_token are both given; pass only token")
    return use_auth_token


def check_subfolder(subfolder) -> str:
    """`subfolder` as a relative path inside a checkpoint ('' for none); no absolute path or '..'."""
    if subfolder is None:
        return ""
    if not isinstance(subfolder, (str, os.PathLike)):
        raise TypeError(f"subfolder must be a string, got {type(subfolder).__name__}")
    sub = os.fspath(subfolder).replace(os.sep, "/").strip("/")
    parts = [p for p in sub.split("/") if p not in ("", ".")]
    if os.path.isabs(os.fspath(subfolder)) or ".." in parts:
        raise CheckpointNotFoundError(f"subfolder {os.fspath(subfolder)!r}: expected a relative path inside "
                                      "the checkpoint, without '..'")
    return "/".join(parts)


def _weight_formats() -> list[tuple[str, str, str]]:
    """(format, single file, index file) in the loader's default order: convert.sources.WEIGHT_FILES."""
    from convert.sources import WEIGHT_FILES

    return [(fmt, single, index) for fmt, (single, index) in WEIGHT_FILES.items()]


def weight_files(names: Iterable[str], prefer: str | None = None) -> list[str]:
    """The weight files to fetch among a repository folder's file `names`: one format's single file, or
    its index and its shards (`model-00001-of-00002.safetensors`, ...). Flax first, then safetensors, then
    `.bin` (the loader's order); with `prefer="pt"`, safetensors and `.bin` before msgpack."""
    names = set(names)
    order = _weight_formats()
    if prefer == "pt":
        order = order[1:] + order[:1]
    for fmt, single, index in order:
        if single in names:
            return [single]
        if index in names:   # the shards, named as transformers names them (not e.g. optimizer.bin)
            from convert.sources import shard_pattern

            shard = shard_pattern(single)
            return [index] + sorted(n for n in names if shard.match(n))
    return []


def _wanted(files, repo_names: list[str] | None, sub: str, prefer: str | None) -> list[str] | None:
    """allow_patterns for snapshot_download (None: everything)."""
    if files is None:
        return None
    if files == MODEL:
        wanted = list(CONFIG_FILES)
        if repo_names is None:   # no listing: every BART weight format rather than the whole repository
            wanted += [n for _, single, index in _weight_formats() for n in (single, index)]
            wanted += ["*.msgpack", "*.safetensors", "*.bin"]
        else:
            prefix = sub + "/" if sub else ""
            here = [n[len(prefix):] for n in repo_names if n.startswith(prefix) and "/" not in n[len(prefix):]]
            wanted += weight_files(here, prefer)
    elif files == TOKENIZER:
        wanted = list(TOKENIZER_FILES)
    else:
        wanted = list(files)
    return [posixpath.join(sub, n) if sub else n for n in wanted]


def _list_repo(repo: str, revision, token) -> list[str] | None:
    import huggingface_hub

    try:
        return list(huggingface_hub.list_repo_files(repo, revision=revision, token=token))
    except Exception:  # not reachable, gated, ...: snapshot_download below says what is wrong, or uses the cache
        return None


def resolve_checkpoint_dir(
    path_or_id: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
    revision: str | None = None,
    local_files_only: bool | None = None,
    token: str | bool | None = None,
    force_download: bool = False,
    subfolder: str = "",
    files=None,
    prefer: str | None = None,
) -> str:
    """A local directory as is (its `subfolder` when given); a file's directory; otherwise a hub id, from
    the cache when offline. `files`: None (the whole repository), MODEL, TOKENIZER or a list of names."""
    path = os.fspath(path_or_id)
    sub = check_subfolder(subfolder)
    if os.path.isdir(path):
        return _inside(path, sub, path)
    if os.path.isfile(path):
        return os.path.dirname(os.path.abspath(path))
    if os.path.isabs(path) or path.startswith((".", "~")) or path.count("/") > 1 or not path.strip():
        raise CheckpointNotFoundError(f"{path!r}: no such checkpoint directory or file")
    import huggingface_hub
    from huggingface_hub import constants as hub_constants   # submodules: not attributes of a bare import
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    offline = bool(local_files_only) or _offline()
    try:
        if offline:
            patterns = None  # the cached snapshot as it is
        else:
            validate_repo_id(path)
            patterns = _wanted(files, _list_repo(path, revision, token) if files == MODEL else None, sub, prefer)
        directory = huggingface_hub.snapshot_download(
            repo_id=path,
            revision=revision,
            cache_dir=os.fspath(cache_dir) if cache_dir is not None else None,
            local_files_only=offline,
            token=token,
            force_download=force_download,
            allow_patterns=patterns,
        )
    except HFValidationError as e:
        raise CheckpointNotFoundError(f"{path!r} is neither a local path nor a valid hub id: {e}") from None
    except Exception as e:  # huggingface_hub raises several types for "not cached"/"not reachable"
        where = f"the hub cache ({cache_dir or hub_constants.HF_HUB_CACHE})"
        mode = "offline" if offline else "online"
        raise CheckpointNotFoundError(
            f"{path!r}: not a local directory, and not found in {where} ({mode}"
            f"{', revision ' + revision if revision else ''}): {type(e).__name__}: {e}"
        ) from None
    return _inside(directory, sub, f"{path!r} (snapshot {directory})")


def _inside(directory: str, sub: str, where: str) -> str:
    if not sub:
        return directory
    inner = os.path.join(directory, *sub.split("/"))
    if not os.path.isdir(inner):
        raise CheckpointNotFoundError(f"{where}: no subfolder {sub!r} there")
    return inner
