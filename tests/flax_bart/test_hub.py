"""Hub resolution: which files are fetched (one weight format, not the whole repository), `subfolder`,
and 4.x's loading keywords (positional dtype, loader-only options that must not reach the config)."""

import os
import shutil

import huggingface_hub
import jax.numpy as jnp
import numpy as np
import pytest

from flax_bart import BartConfig, BartTokenizer, FlaxBartForConditionalGeneration, FlaxBartForQuestionAnswering
from flax_bart.hub import MODEL, TOKENIZER, CheckpointNotFoundError, resolve_checkpoint_dir, weight_files
from tests.bart_helpers import batch, torch_model

FULL_REPO = ["config.json", "generation_config.json", "flax_model.msgpack", "model.safetensors",
             "pytorch_model.bin", "tf_model.h5", "rust_model.ot", "vocab.json", "merges.txt", "tokenizer.json",
             "README.md"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("hubsub")
    tm = torch_model("lm", seed=5)
    tm.save_pretrained(d / "sub" / "inner")
    return d, tm


def test_weight_files_choose_one_format():
    assert weight_files(FULL_REPO) == ["flax_model.msgpack"]
    assert weight_files(FULL_REPO, prefer="pt") == ["model.safetensors"]
    assert weight_files(["pytorch_model.bin", "tf_model.h5"]) == ["pytorch_model.bin"]
    sharded = ["model.safetensors.index.json", "model-00001-of-00002.safetensors",
               "model-00002-of-00002.safetensors", "pytorch_model.bin", "adapter.safetensors"]
    assert weight_files(["pytorch_model.bin.index.json", "pytorch_model-00001-of-00001.bin", "optimizer.bin",
                         "training_args.bin"]) == ["pytorch_model.bin.index.json", "pytorch_model-00001-of-00001.bin"]
    assert weight_files(sharded) == ["model.safetensors.index.json", "model-00001-of-00002.safetensors",
                                     "model-00002-of-00002.safetensors"]
    assert weight_files(["tf_model.h5"]) == []


class _FakeHub:
    """Records what would be downloaded; answers as an online hub holding `names`."""

    def __init__(self, names, snapshot, listing_fails=False):
        self.names, self.snapshot, self.listing_fails, self.calls = names, snapshot, listing_fails, []

    def list_repo_files(self, repo_id, revision=None, token=None):
        if self.listing_fails:
            raise ConnectionError("no route to host")
        return list(self.names)

    def snapshot_download(self, repo_id, **kw):
        self.calls.append(kw)
        return str(self.snapshot)


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def make(names, listing_fails=False):
        (tmp_path / "snap" / "sub").mkdir(parents=True, exist_ok=True)
        hub = _FakeHub(names, tmp_path / "snap", listing_fails)
        monkeypatch.setattr(huggingface_hub, "list_repo_files", hub.list_repo_files)
        monkeypatch.setattr(huggingface_hub, "snapshot_download", hub.snapshot_download)
        return hub

    return make


def test_online_model_fetches_config_and_one_format(fake_hub):
    hub = fake_hub(FULL_REPO)
    resolve_checkpoint_dir("acme/bart", files=MODEL)
    assert hub.calls[-1]["allow_patterns"] == ["config.json", "generation_config.json", "flax_model.msgpack"]
    resolve_checkpoint_dir("acme/bart", files=MODEL, prefer="pt", revision="v1")
    assert hub.calls[-1]["allow_patterns"][-1] == "model.safetensors" and hub.calls[-1]["revision"] == "v1"
    resolve_checkpoint_dir("acme/bart", files=TOKENIZER)
    assert "merges.txt" in hub.calls[-1]["allow_patterns"] and "tf_model.h5" not in hub.calls[-1]["allow_patterns"]
    resolve_checkpoint_dir("acme/bart")                      # files=None: the whole repository, as before
    assert hub.calls[-1]["allow_patterns"] is None


def test_online_subfolder_and_listing_failure(fake_hub):
    hub = fake_hub(["config.json", "pytorch_model.bin", "sub/config.json", "sub/model.safetensors.index.json",
                    "sub/model-00001-of-00001.safetensors"])
    out = resolve_checkpoint_dir("acme/bart", files=MODEL, subfolder="sub/")
    assert out == os.path.join(hub.snapshot, "sub")
    assert hub.calls[-1]["allow_patterns"] == ["sub/config.json", "sub/generation_config.json",
                                               "sub/model.safetensors.index.json",
                                               "sub/model-00001-of-00001.safetensors"]
    hub = fake_hub(FULL_REPO, listing_fails=True)        # unlisted: every BART format, still no tf/rust files
    resolve_checkpoint_dir("acme/bart", files=MODEL)
    patterns = hub.calls[-1]["allow_patterns"]
    assert "flax_model.msgpack" in patterns and "pytorch_model.bin.index.json" in patterns
    assert not any(p.endswith((".h5", ".ot")) for p in patterns)


_FRESH_ONLINE = """
import os, sys
import huggingface_hub
from flax_bart.hub import MODEL, CheckpointNotFoundError, resolve_checkpoint_dir
huggingface_hub.list_repo_files = lambda repo, revision=None, token=None: ["config.json", "model.safetensors"]
huggingface_hub.snapshot_download = lambda repo_id, **kw: sys.argv[1]
print(resolve_checkpoint_dir("acme/bart", files=MODEL))
def unreachable(repo_id, **kw):
    raise ConnectionError("no route to host")
huggingface_hub.snapshot_download = unreachable
try:
    resolve_checkpoint_dir("acme/bart", files=MODEL)
except CheckpointNotFoundError as e:
    print(e)
"""


def test_online_resolution_in_a_fresh_process(tmp_path):
    """A bare `import huggingface_hub` does not load its `utils`/`constants` submodules: the online path
    (HF_HUB_OFFLINE unset, the default) must import what it uses, not find it loaded by an earlier call."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))), env.get("PYTHONPATH")]))
    res = subprocess.run([sys.executable, "-c", _FRESH_ONLINE, str(tmp_path)], capture_output=True, text=True,
                         env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    found, error = res.stdout.splitlines()[:2]
    assert found == str(tmp_path)
    assert "'acme/bart': not a local directory, and not found in the hub cache (" in error
    assert "(online): ConnectionError: no route to host" in error


def test_subfolder_must_stay_inside(tmp_path):
    for bad in ("../x", "/abs", "a/../../b"):
        with pytest.raises(CheckpointNotFoundError, match="subfolder"):
            resolve_checkpoint_dir(tmp_path, subfolder=bad)
    with pytest.raises(CheckpointNotFoundError, match="no subfolder 'missing'"):
        resolve_checkpoint_dir(tmp_path, subfolder="missing")


def test_from_pretrained_subfolder_local_and_offline_cache(ckpt, tmp_path, monkeypatch):
    root, tm = ckpt
    ids, mask = batch(seed=1)
    m = FlaxBartForConditionalGeneration.from_pretrained(root, subfolder="sub/inner")
    assert m.checkpoint_directory == os.path.join(root, "sub", "inner")
    assert "subfolder" not in m.config.extra
    import torch

    with torch.no_grad():
        ref = tm(input_ids=torch.tensor(ids).long(), attention_mask=torch.tensor(mask), use_cache=False).logits
    np.testing.assert_allclose(np.asarray(m(ids, attention_mask=mask).logits)[mask.astype(bool)],
                               ref.numpy()[mask.astype(bool)], atol=1e-5)
    with pytest.raises(CheckpointNotFoundError):             # no weights at the top level
        FlaxBartForConditionalGeneration.from_pretrained(root, subfolder="sub")

    cache = tmp_path / "hub"
    repo = cache / "models--acme--nested"
    shutil.copytree(root, repo / "snapshots" / ("b" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("b" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    m2 = FlaxBartForConditionalGeneration.from_pretrained("acme/nested", cache_dir=cache, subfolder="sub/inner")
    assert m2.config.to_dict() == m.config.to_dict()
    assert BartConfig.from_pretrained("acme/nested", cache_dir=cache, subfolder="sub/inner").d_model == m.config.d_model
    # a commit hash given as 4.x's _commit_hash selects that snapshot
    m3 = FlaxBartForConditionalGeneration.from_pretrained("acme/nested", cache_dir=cache, subfolder="sub/inner",
                                                          _commit_hash="b" * 40)
    assert m3.config.vocab_size == m.config.vocab_size


def test_4x_positional_dtype_and_loader_only_keywords(ckpt, caplog):
    root, _ = ckpt
    path = root / "sub" / "inner"
    m = FlaxBartForQuestionAnswering.from_pretrained(path, jnp.bfloat16)        # 4.x: dtype is positional
    assert m.dtype == jnp.bfloat16
    m = FlaxBartForQuestionAnswering.from_pretrained(path, jnp.float32, (1, 4), 7)  # then input_shape, seed
    assert m.input_shape == (1, 4) and m.seed == 7
    with pytest.raises(TypeError, match="at most 2 positional"):
        FlaxBartForQuestionAnswering.from_pretrained(path, jnp.float32, (1, 1), 0, "extra")
    m = FlaxBartForQuestionAnswering.from_pretrained(
        path, resume_download=True, proxies={"https": "http://proxy:1"}, trust_remote_code=True, _from_auto=True,
        _from_pipeline="question-answering", mirror=None, gradient_checkpointing=True, dropout=0.25)
    loader_only = {"resume_download", "proxies", "trust_remote_code", "_from_auto", "_from_pipeline", "mirror",
                   "gradient_checkpointing"}
    assert not loader_only & set(m.config.extra) and not loader_only & set(m.config.to_dict())
    assert m.config.dropout == 0.25                                            # a config field still overrides
    assert m.is_gradient_checkpointing
    assert "trust_remote_code" in caplog.text and "proxies" in caplog.text


def test_tokenizer_subfolder(tmp_path):
    from tests.tokenizer_utils import write_bart_tokenizer

    write_bart_tokenizer(tmp_path / "tok" / "inner")
    tok = BartTokenizer.from_pretrained(tmp_path / "tok", subfolder="inner")
    assert tok("hello")["input_ids"][0] == tok.bos_token_id


def test_positional_arguments_are_checked(ckpt):
    root, _ = ckpt
    path = root / "sub" / "inner"
    with pytest.raises(TypeError, match="second positional argument is dtype"):
        FlaxBartForQuestionAnswering.from_pretrained(path, BartConfig())
    with pytest.raises(TypeError, match="input_shape must be"):
        FlaxBartForQuestionAnswering.from_pretrained(path, jnp.float32, "abc")
    with pytest.raises(TypeError, match="seed must be an int"):
        FlaxBartForQuestionAnswering.from_pretrained(path, jnp.float32, (1, 1), "7")
