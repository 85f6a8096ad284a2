"""Shards and artifacts on S3-compatible object storage, against a local S3 server (moto) on the
loopback address with dummy credentials: Streaming uploads and streams the shards
(`shard.remote`), DVC pushes and pulls every artifact (a `dvc remote` with dvc-s3), resume
checkpoints live on S3 (`resume.folder`)."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import socket
from pathlib import Path

import boto3
import pytest
from dvcrepo import make_repo, ran, run
from moto.server import ThreadedMotoServer

from pipeline.paths import shards_key

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3(tmp_path_factory) -> dict[str, str]:
    """A local S3 server with three buckets; the environment that points boto3, Streaming and DVC at it."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "S3_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    client = boto3.client("s3", endpoint_url=env["S3_ENDPOINT_URL"], aws_access_key_id="testing",
                          aws_secret_access_key="testing", region_name="us-east-1")
    for bucket in ("vlm-shards", "vlm-dvc", "vlm-ckpt"):
        client.create_bucket(Bucket=bucket)
    yield {**env, "client": client}
    server.stop()


def objects(client, bucket: str, prefix: str = "") -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_shards_upload_to_s3_under_their_content_key_and_training_streams_them_back(s3, tiny_baseline, tmp_path):
    env = {k: v for k, v in s3.items() if k != "client"}
    repo = make_repo(tmp_path / "repo", **{"shard.remote": "s3://vlm-shards/tiny"})
    proc = run(repo, "dvc", "repro", "text-pretrain", env=env)
    key = shards_key(repo / "data/shards")
    assert f"uploading the shards to s3://vlm-shards/tiny/{key}" in proc.stdout

    uploaded = objects(s3["client"], "vlm-shards", "tiny/")
    assert uploaded and all(name.startswith(f"tiny/{key}/") for name in uploaded)
    for source in ("text", "captions", "instruct"):
        for split in ("train", "val"):
            index = json.loads((repo / f"data/shards/{source}/{split}/index.json").read_text())
            names = {s["raw_data"]["basename"] for s in index["shards"]}
            assert {f"tiny/{key}/{source}/{split}/{n}" for n in names | {"index.json"}} <= set(uploaded)
            assert all(s["raw_data"]["hashes"]["sha1"] for s in index["shards"])  # the index pins the contents

    # text-pretrain read the uploaded copy through Streaming's local cache (under the same key), not data/shards
    cached = list((repo / "cache/streams" / key).glob("text/train/shard.*.mds"))
    assert cached, "no shard was streamed from the remote"
    assert {p.read_bytes() for p in cached} <= {p.read_bytes() for p in (repo / "data/shards/text/train").glob("*.mds")}
    # and trained the same model as from the local shards (the session's tiny run)
    first = json.loads((tiny_baseline.parent / "first-metrics-pretrain.json").read_text())
    assert json.loads((repo / "metrics/pretrain.json").read_text())["val_loss"] == first["val_loss"]


def test_two_experiments_on_one_remote_never_read_each_others_shards(s3, tmp_path):
    """Two experiments with other shards (another validation split) upload to the same `shard.remote`:
    each lands under its own content key. A shard changed on the remote after upload (here: the other
    experiment's bytes under this one's name) stops training with Streaming's checksum failure."""
    env = {k: v for k, v in s3.items() if k != "client"}
    client = s3["client"]
    a = make_repo(tmp_path / "a", **{"shard.remote": "s3://vlm-shards/shared"})
    b = make_repo(tmp_path / "b", **{"shard.remote": "s3://vlm-shards/shared", "shard.val_fraction": 0.2})
    run(a, "dvc", "repro", "stream-shard", env=env)
    run(b, "dvc", "repro", "stream-shard", env=env)
    ka, kb = shards_key(a / "data/shards"), shards_key(b / "data/shards")
    assert ka != kb
    assert {name.split("/")[1] for name in objects(client, "vlm-shards", "shared/")} == {ka, kb}
    for repo, key in ((a, ka), (b, kb)):  # each key holds exactly its own experiment's indexes
        for index in (repo / "data/shards").glob("*/*/index.json"):
            rel = index.relative_to(repo / "data/shards").as_posix()
            remote = client.get_object(Bucket="vlm-shards", Key=f"shared/{key}/{rel}")["Body"].read()
            assert remote == index.read_bytes(), rel

    shard = "text/train/shard.00000.mds"
    other = client.get_object(Bucket="vlm-shards", Key=f"shared/{kb}/{shard}")["Body"].read()
    assert other != (a / "data/shards" / shard).read_bytes()
    client.put_object(Bucket="vlm-shards", Key=f"shared/{ka}/{shard}", Body=other)
    proc = run(a, "dvc", "repro", "text-pretrain", env=env, check=False)
    assert proc.returncode != 0
    assert "Checksum failure" in proc.stdout + proc.stderr and "shard.00000.mds" in proc.stdout + proc.stderr


def test_dvc_pushes_and_pulls_every_artifact_through_s3(s3, tmp_path):
    env = {k: v for k, v in s3.items() if k != "client"}
    repo = make_repo(tmp_path / "repo")
    run(repo, "dvc", "repro", "text-pretrain", env=env)
    run(repo, "dvc", "remote", "add", "-d", "store", "s3://vlm-dvc/cache")
    run(repo, "dvc", "remote", "modify", "store", "endpointurl", env["S3_ENDPOINT_URL"])
    before = digests(repo / "data")
    run(repo, "dvc", "push", "--with-deps", "text-pretrain", env=env)
    assert objects(s3["client"], "vlm-dvc", "cache/"), "dvc push stored nothing"

    shutil.rmtree(repo / ".dvc/cache")
    for out in (repo / "data").iterdir():  # every output; data/.gitignore (in git) stays
        if out.is_dir():
            shutil.rmtree(out)
    assert "deleted" in run(repo, "dvc", "status", "text-pretrain", env=env).stdout
    run(repo, "dvc", "pull", "--with-deps", "text-pretrain", env=env)
    assert "up to date" in run(repo, "dvc", "status", "text-pretrain", env=env).stdout
    assert digests(repo / "data") == before


def test_a_job_restarted_in_another_clone_resumes_from_checkpoints_on_s3(s3, tiny_baseline, tmp_path):
    """`resume.folder: s3://...`: text-pretrain killed after step 7 in one clone (checkpoints every 3
    steps, branch points every 2) has its last checkpoint and every branch point on S3; another
    clone, sharing nothing else, resumes from them to the uninterrupted run's losses, then clears S3."""
    env = {k: v for k, v in s3.items() if k != "client"}
    client = s3["client"]
    params = {"resume.checkpoint_interval": 3, "resume.folder": "s3://vlm-ckpt/runs"}
    first = make_repo(tmp_path / "first", **params)
    proc = run(first, "dvc", "repro", "text-pretrain", check=False, env={**env, "VLM_CRASH_AT": "text-pretrain:step7"})
    assert proc.returncode != 0 and ran(proc)[-1] == "text-pretrain"
    names = objects(client, "vlm-ckpt", "runs/text-pretrain/")
    (run_folder,) = {n.split("/")[2] for n in names}  # runs/text-pretrain/<fingerprint>/...
    files = {n.split("/", 3)[3] for n in names}
    assert "ba6.pt" in files and not {f for f in files if f.endswith(".pt")} - {"ba6.pt"}  # the last one only
    assert {f.split("/")[1] for f in files if f.startswith("branch_points/")} == {"ba2", "ba4", "ba6"}
    local = first / "checkpoints/text-pretrain" / run_folder
    assert files == {p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file() and not p.is_symlink()}

    again = make_repo(tmp_path / "again", **params)  # nothing of the first clone's but the bucket
    proc = run(again, "dvc", "repro", "text-pretrain", env=env)
    assert f"text-pretrain: resumed from the checkpoint at step 6 in s3://vlm-ckpt/runs/text-pretrain/{run_folder}" \
        in proc.stdout
    val = json.loads((again / "metrics/pretrain.json").read_text())["val_loss"]
    assert val == json.loads((tiny_baseline.parent / "first-metrics-pretrain.json").read_text())["val_loss"]
    assert (again / "data/pretrain").is_dir() and not (again / "checkpoints/text-pretrain").exists()
    assert objects(client, "vlm-ckpt", "runs/") == []  # removed once the stage's outputs were written
