"""Trustworthy runs: crashes resume to the same result, nothing partial is ever cached, a bad step
stops the run, and a run with other params never picks up another run's checkpoint.

The crashes are real SIGKILLs, placed by `VLM_CRASH_AT` (vlm/faults.py) so they land at the same
point every time.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml
from dvcrepo import make_repo, ran, run
from shm_segments import reading_prefixes, segments, streaming_names
from torch.utils.data import DataLoader

from vlm.config import load
from vlm.data.batches import Collator
from vlm.model.lm import LM, LMConfig
from vlm.training import resume as R
from vlm.training.composer_model import ComposerLM
from vlm.training.schedules import warmup_cosine_scheduler
from vlm.training.shared_memory import stale_segments
from vlm.training.trainer import make_trainer


def cached_dirs(repo: Path) -> set[str]:
    """The md5 of every directory manifest in the DVC cache."""
    return {p.parent.name + p.name.removesuffix(".dir") for p in (repo / ".dvc/cache").rglob("*.dir")}


# A Streaming reader SIGKILLed together with its Python resource tracker, as a scheduler kills a job.
# (A process killed alone, as VLM_CRASH_AT does, has its shared memory unlinked by its tracker.)
KILLED_READER = textwrap.dedent("""
    import os, signal, sys
    from streaming import StreamingDataset
    next(iter(StreamingDataset(local=sys.argv[1], split="train", batch_size=2)))
    os.killpg(0, signal.SIGKILL)
""")


def locked_dirs(repo: Path) -> set[str]:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    return {o["md5"].removesuffix(".dir") for st in lock.values() for o in st.get("outs", [])
            if o["md5"].endswith(".dir")}


@pytest.mark.slow
def test_killed_stages_resume_to_the_same_lock_file(tmp_path, tiny_baseline):
    """One repository, five `dvc repro`s, four SIGKILLs: mid-write in stream-shard, at step 7 of
    text-pretrain (resume checkpoints every 3 steps, branch points every 2), at step 4 of
    mixed-cooldown and at step 5 of finetune's single epoch. The end state is bit-identical to the
    uninterrupted run's: the same dvc.lock (every weight, metric and curve hash), hence the same
    final validation loss."""
    repo = make_repo(tmp_path / "repo", **{"resume.checkpoint_interval": 3})

    # 1. killed while writing data/shards: nothing partial replaces the output or enters the cache
    proc = run(repo, "dvc", "repro", check=False, env={"VLM_CRASH_AT": "write:data/shards"})
    assert proc.returncode != 0 and ran(proc)[-1] == "stream-shard"
    assert not (repo / "data/shards").exists() and (repo / "data/.shards.tmp").is_dir()
    assert "stream-shard" in run(repo, "dvc", "status").stdout
    assert cached_dirs(repo) == locked_dirs(repo)  # only the completed prepare and tokenize outputs

    # 2. text-pretrain killed after step 7: the last resume checkpoint is step 6
    proc = run(repo, "dvc", "repro", check=False, env={"VLM_CRASH_AT": "text-pretrain:step7"})
    assert proc.returncode != 0 and ran(proc)[-1] == "text-pretrain"
    assert not (repo / "data/.shards.tmp").exists()  # the next run cleared the stale temporary folder
    (folder,) = (repo / "checkpoints/text-pretrain").iterdir()
    assert os.readlink(folder / "latest-rank0.pt") == "ba6.pt"
    assert sorted(p.name for p in (folder / "branch_points").iterdir()) == ["ba2", "ba4", "ba6"]
    assert not (repo / "data/pretrain").exists()

    # a reader of the same shards killed with its resource tracker leaves its Streaming shared memory
    # (the reader alone reads this folder now; other runs on the machine have segments of their own)
    before = streaming_names()
    reader = subprocess.run([sys.executable, "-c", KILLED_READER, str(repo / "data/shards/text")],
                            start_new_session=True, capture_output=True, text=True)
    assert reader.returncode == -signal.SIGKILL, reader.stderr
    stale = set(segments(reading_prefixes({"reader": repo / "data/shards"})["reader"])) - before
    assert stale and stale <= set(stale_segments()), stale

    # 3. text-pretrain resumes, removing only that stale shared memory; mixed-cooldown is killed after
    # step 4 (checkpoint at 3)
    proc = run(repo, "dvc", "repro", check=False, env={"VLM_CRASH_AT": "mixed-cooldown:step4"})
    assert "text-pretrain: resumed from the checkpoint at step 6" in proc.stdout
    assert not stale & streaming_names(), "the resumed run left stale shared memory behind"
    assert proc.returncode != 0 and ran(proc)[-1] == "mixed-cooldown"
    assert not (repo / "checkpoints/text-pretrain").exists()  # removed once its outputs were written

    # 4. mixed-cooldown resumes; finetune (epochs, not steps) is killed mid-epoch after step 5
    proc = run(repo, "dvc", "repro", check=False, env={"VLM_CRASH_AT": "finetune:step5"})
    assert "mixed-cooldown: resumed from the checkpoint at step 3" in proc.stdout
    assert proc.returncode != 0 and ran(proc) == ["mixed-cooldown", "finetune"]

    # 5. finetune resumes mid-epoch at the Streaming loader's saved position; evaluate runs
    proc = run(repo, "dvc", "repro")
    assert "finetune: resumed from the checkpoint at step 3" in proc.stdout
    assert ran(proc) == ["finetune", "evaluate"]

    assert (repo / "dvc.lock").read_text() == (tiny_baseline.parent / "first-dvc.lock").read_text()
    first = json.loads((repo / "metrics/pretrain.json").read_text())["val_loss"]
    assert first == json.loads((tiny_baseline.parent / "first-metrics-pretrain.json").read_text())["val_loss"]
    assert cached_dirs(repo) == locked_dirs(repo)
    assert "up to date" in run(repo, "dvc", "status").stdout


@pytest.mark.slow
def test_a_job_restarted_in_another_clone_resumes_from_the_shared_resume_folder(tmp_path, tiny_baseline):
    """`resume.folder` on a file system every node sees: text-pretrain killed after step 7 in one
    clone resumes in another (a job restarted on other nodes), to the uninterrupted run's losses."""
    shared = tmp_path / "shared/checkpoints"
    params = {"resume.checkpoint_interval": 3, "resume.folder": str(shared)}
    first = make_repo(tmp_path / "first", **params)
    proc = run(first, "dvc", "repro", "text-pretrain", check=False, env={"VLM_CRASH_AT": "text-pretrain:step7"})
    assert proc.returncode != 0 and ran(proc)[-1] == "text-pretrain"
    (folder,) = (shared / "text-pretrain").iterdir()
    assert os.readlink(folder / "latest-rank0.pt") == "ba6.pt"
    assert not (first / "checkpoints").exists()

    again = make_repo(tmp_path / "again", **params)  # nothing of the first clone's but the shared folder
    proc = run(again, "dvc", "repro", "text-pretrain")
    assert "text-pretrain: resumed from the checkpoint at step 6" in proc.stdout
    val = json.loads((again / "metrics/pretrain.json").read_text())["val_loss"]
    assert val == json.loads((tiny_baseline.parent / "first-metrics-pretrain.json").read_text())["val_loss"]
    assert not (shared / "text-pretrain").exists()  # removed once the stage's outputs were written


def test_the_s3_mirror_holds_one_whole_checkpoint_and_gives_a_new_machine_the_latest(tmp_path, monkeypatch):
    """vlm/training/mirror.py against moto's in-process S3: a push uploads what is new and deletes what
    Composer dropped; a pull on an empty folder restores every file and Composer's latest pointer;
    clear empties the bucket's copy."""
    import boto3
    from moto import mock_aws

    from vlm.training.mirror import LATEST, RemoteMirror

    monkeypatch.delenv("S3_ENDPOINT_URL", raising=False)
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    uri = "s3://ckpt-bucket/runs/text-pretrain/0123abcd"
    with mock_aws():
        boto3.client("s3").create_bucket(Bucket="ckpt-bucket")
        here = tmp_path / "node0"
        (here / "branch_points/ba2").mkdir(parents=True)
        (here / "branch_points/ba2/model.safetensors").write_bytes(b"w2")
        (here / "ba3.pt").write_bytes(b"step 3")
        mirror = RemoteMirror(here, uri)
        mirror.push()
        assert sorted(mirror.remote_files()) == ["ba3.pt", "branch_points/ba2/model.safetensors"]
        (here / "ba3.pt").unlink()  # Composer keeps one checkpoint
        (here / "ba6.pt").write_bytes(b"step 6")
        mirror.push()
        assert sorted(mirror.remote_files()) == ["ba6.pt", "branch_points/ba2/model.safetensors"]

        there = tmp_path / "node1"
        RemoteMirror(there, uri).pull()
        assert (there / "ba6.pt").read_bytes() == b"step 6"
        assert (there / "branch_points/ba2/model.safetensors").read_bytes() == b"w2"
        assert os.readlink(there / LATEST) == "ba6.pt"
        mirror.clear()
        assert mirror.remote_files() == []


# ---- which checkpoint a run may resume from ------------------------------------------------------

def test_the_resume_folder_is_keyed_by_params_code_and_data(tmp_path, monkeypatch):
    from pipeline.common import resume_for

    repo = make_repo(tmp_path / "repo")
    monkeypatch.chdir(repo)
    cfg = load()
    base = resume_for("mixed-cooldown", cfg)
    assert base.folder.parent == Path("checkpoints/mixed-cooldown") and base.run_name.startswith("mixed-cooldown-")
    assert resume_for("mixed-cooldown", cfg) == base  # stable
    other_ratio = dataclasses.replace(cfg, cooldown=dataclasses.replace(cfg.cooldown, image_ratio=0.3))
    assert resume_for("mixed-cooldown", other_ratio).folder != base.folder
    other_eval = dataclasses.replace(cfg, evaluate=dataclasses.replace(cfg.evaluate, batch_size=7))
    assert resume_for("mixed-cooldown", other_eval).folder == base.folder  # not a param of this stage
    (repo / "vlm/data/mixing.py").write_text((repo / "vlm/data/mixing.py").read_text() + "\n# changed\n")
    assert resume_for("mixed-cooldown", cfg).folder != base.folder  # its code changed
    (repo / "data/branch").mkdir(parents=True)
    (repo / "data/branch/branch.json").write_text("{}")
    changed = resume_for("mixed-cooldown", cfg).folder
    (repo / "data/branch/branch.json").write_text('{"lr": 1}')
    assert resume_for("mixed-cooldown", cfg).folder != changed  # its input data changed


# ---- training health ------------------------------------------------------------------------------

IDS = {"bos": 0, "eos": 1, "pad": 2, "image": 3, "user": 4, "assistant": 5}


class NanAtStep(ComposerLM):
    """A tiny LM whose loss turns NaN at one step."""

    def __init__(self, nan_step: int):
        super().__init__(LM(LMConfig(vocab_size=40, d_model=16, n_layer=1, n_head=2, max_seq_len=32)))
        self.nan_step, self.calls = nan_step, 0

    def loss(self, outputs, batch):
        self.calls += 1
        loss = super().loss(outputs, batch)
        return loss * float("nan") if self.calls == self.nan_step else loss


def tiny_loader() -> DataLoader:
    rng = np.random.default_rng(0)
    samples = [{"tokens": rng.integers(6, 40, 12).astype(np.int32), "mask": np.ones(12, np.uint8), "image": b""}
               for _ in range(32)]
    return DataLoader(samples, batch_size=4, collate_fn=Collator(IDS))


def test_a_non_finite_loss_stops_the_run_naming_stage_and_step_before_it_is_checkpointed(tmp_path):
    resume = R.Resume(tmp_path / "ckpt", "nan-test", interval=1)
    trainer = make_trainer(NanAtStep(3), tiny_loader(), "6ba", 1e-3, warmup_cosine_scheduler(0, 0.1), "nan-test", 0,
                           curves=tmp_path / "curves.csv", resume=resume)
    with pytest.raises(FloatingPointError, match=r"nan-test: the training loss is nan at step 3"):
        trainer.fit()
    saved = sorted(p.name for p in resume.folder.glob("ba*.pt"))
    assert saved == ["ba2.pt"]  # steps 1 and 2 were checkpointed (only the latest is kept), step 3 never


def test_a_disk_too_small_for_the_checkpoint_fails_before_training(tmp_path, monkeypatch):
    model = NanAtStep(0)
    need = R.checkpoint_bytes(model)
    assert need == 3 * 4 * sum(p.numel() for p in model.parameters())  # fp32 weights + two AdamW moments
    monkeypatch.setattr(R.shutil, "disk_usage", lambda _: type("U", (), {"free": need // 2})())
    with pytest.raises(OSError, match=r"ckpt: not enough disk space for the disk-test resume checkpoint"):
        make_trainer(model, tiny_loader(), "2ba", 1e-3, warmup_cosine_scheduler(0, 0.1), "disk-test", 0,
                     curves=tmp_path / "curves.csv", resume=R.Resume(tmp_path / "ckpt", "disk-test", 1))
    monkeypatch.setattr(R.shutil, "disk_usage", lambda _: type("U", (), {"free": need * 2})())
    R.check_disk_space(tmp_path / "ckpt", need, "it")  # enough: no error


def test_crash_points_fire_only_where_named(monkeypatch):
    from vlm import faults

    killed = []
    monkeypatch.setattr(faults.os, "kill", lambda pid, sig: killed.append(sig))
    monkeypatch.setenv(faults.ENV, "text-pretrain:step7")
    faults.crash_point("text-pretrain:step6")
    faults.crash_point("mixed-cooldown:step7")
    assert killed == []
    faults.crash_point("text-pretrain:step7")
    assert len(killed) == 1

