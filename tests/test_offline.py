"""Pretrained parts from local files, with the network unavailable.

A real open_clip SigLIP model (ViT-B-16-SigLIP, timm tower, 203M parameters, random weights saved
as a local checkpoint) and a tokenizer.json with GPT-NeoX's vocabulary size stand in for the
published files. The stages that read them run in a network namespace of their own (`unshare -n`:
no interface but a loopback that is down) and with every Python process's socket connections and
name lookups trapped and recorded, so any attempt to reach the network is seen even if it would
fail quietly.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from dvcrepo import BIN, make_repo, set_params
from safetensors.torch import save_file
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

NEOX_VOCAB = 50_277  # GPT-NeoX-20B's tokenizer.json: 50,254 BPE tokens + 23 added tokens

GUARD = '''
import os, socket
_connect, _getaddrinfo = socket.socket.connect, socket.getaddrinfo
LOCAL = ("127.0.0.1", "::1", "localhost")

def _record(what):
    with open(os.environ["NETWORK_ATTEMPTS"], "a") as f:
        f.write(what + "\\n")
    raise OSError("the network is unavailable in this test")

def connect(self, address):
    host = address[0] if isinstance(address, tuple) else None
    if self.family in (socket.AF_INET, socket.AF_INET6) and host not in LOCAL:
        _record(f"connect {address!r}")
    return _connect(self, address)

def getaddrinfo(host, *args, **kwargs):
    if host not in LOCAL and host is not None:
        _record(f"getaddrinfo {host!r}")
    return _getaddrinfo(host, *args, **kwargs)

socket.socket.connect, socket.getaddrinfo = connect, getaddrinfo
'''


def neox_sized_tokenizer(texts: list[str], path: Path) -> int:
    """A byte-level BPE trained on `texts` with GPT-NeoX's `<|endoftext|>` (none of our special
    tokens), padded with added tokens to GPT-NeoX's vocabulary size."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    tok.add_tokens([AddedToken(f"<|extra_{i}|>", special=True) for i in range(NEOX_VOCAB - tok.get_vocab_size())])
    assert tok.get_vocab_size() == NEOX_VOCAB
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return NEOX_VOCAB


def offline(repo: Path, *cmd: str, attempts: Path) -> subprocess.CompletedProcess:
    guard = repo.parent / "guard"
    guard.mkdir(exist_ok=True)
    (guard / "sitecustomize.py").write_text(GUARD)
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "PYTHONPATH": f"{guard}:{repo}",
           "NETWORK_ATTEMPTS": str(attempts), "HF_HUB_OFFLINE": "0", "NO_PROXY": "", "no_proxy": ""}
    prefix = ["unshare", "-n"] if shutil.which("unshare") and subprocess.run(
        ["unshare", "-n", "true"], capture_output=True).returncode == 0 else []
    if not prefix and sys.platform == "linux" and os.geteuid() == 0:
        pytest.fail("unshare -n is unavailable although this runs as root")
    return subprocess.run([*prefix, *cmd], cwd=repo, env=env, capture_output=True, text=True)


def test_local_siglip_and_tokenizer_with_the_network_unavailable(small_world, tmp_path):
    import open_clip

    repo = make_repo(tmp_path / "repo")
    texts = [json.loads(line)["text"] for line in (small_world / "text.jsonl").read_text().splitlines()]
    neox_sized_tokenizer(texts, repo / "inputs/tokenizer/neox/tokenizer.json")
    siglip = open_clip.create_model("ViT-B-16-SigLIP")  # random weights: nothing is downloaded
    ckpt = repo / "inputs/encoder/siglip/open_clip_model.safetensors"
    ckpt.parent.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in siglip.state_dict().items()}, str(ckpt))
    set_params(repo, **{"tokenize.tokenizer": "inputs/tokenizer/neox/tokenizer.json",
                        "vision.model": "ViT-B-16-SigLIP", "vision.pretrained": str(ckpt.relative_to(repo)),
                        "shard.image_tokens": 196})  # 224 px in patches of 16

    attempts = tmp_path / "attempts.txt"
    for stage in ("prepare", "tokenize", "stream-shard", "train-encoder"):
        proc = offline(repo, "python", "-m", "pipeline", stage, attempts=attempts)
        assert proc.returncode == 0, f"{stage}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    size = offline(repo, "python", "-m", "pipeline.check_params", "--size", attempts=attempts)
    assert not attempts.exists(), attempts.read_text()

    vocab = json.loads((repo / "metrics/tokens.json").read_text())["vocab_size"]
    assert vocab == NEOX_VOCAB + 6  # its vocabulary, plus our six special tokens it lacks
    assert f"at a vocabulary of {vocab:,}" in size.stdout

    from vlm.model.vision import PatchEncoder, load_clip

    model, pp = load_clip(repo / "data/encoder")  # the open_clip folder later stages read
    assert pp["mean"] == [0.5, 0.5, 0.5] and pp["resize_mode"] == "squash"  # SigLIP's, from open_clip's tables
    want = siglip.visual.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in model.visual.state_dict().items())
    encoder = PatchEncoder(model.visual).freeze()
    assert encoder(torch.zeros(1, 3, 224, 224)).shape == (1, 196, 768)
    assert json.loads((repo / "metrics/encoder.json").read_text())["model"] == "ViT-B-16-SigLIP"


def test_a_hub_model_name_is_refused(tmp_path):
    from vlm.model.vision import load_named

    (tmp_path / "w.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="not one of open_clip's built-in model names"):
        load_named("hf-hub:timm/ViT-B-16-SigLIP", tmp_path / "w.bin")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="expected one weights file"):
        load_named("ViT-B-16-SigLIP", tmp_path / "empty")


def test_the_trap_sees_an_attempt(tmp_path):
    """The check above can fail: a process that tries to reach the network is recorded."""
    (tmp_path / "repo").mkdir()
    attempts = tmp_path / "attempts.txt"
    code = ("import urllib.request\ntry:\n    urllib.request.urlopen('http://example.com', timeout=2)\n"
            "except OSError:\n    pass")
    proc = offline(tmp_path / "repo", "python", "-c", code, attempts=attempts)
    assert proc.returncode == 0, proc.stderr
    assert "example.com" in attempts.read_text()
