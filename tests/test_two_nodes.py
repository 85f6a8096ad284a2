"""Two "nodes" on one machine, as README's several-nodes recipe runs them: two clones of one commit
that share a DVC remote, a rendezvous on 127.0.0.1, node 0 running the stage through `dvc repro`,
node 1 the stage's command. They must train what 2 processes on one node train.

What makes node 1 a node of its own (root only: a mount namespace): its own /dev/shm, as Streaming's
shared memory is per machine, and its clone mounted at node 0's path, as a cluster's nodes hold the
job at one path (Composer hands every rank the checkpoint folder of rank 0 by its absolute path).
Both set `cpu.threads: 1`, so that every process runs one thread in both layouts (with the default,
each "node" would take the machine's 2 threads and round differently from a node of 2 processes).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from dvcrepo import BIN, env_for, make_repo, run

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None, reason="a mount namespace needs root and unshare")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def weights(repo: Path) -> dict[str, str]:
    return {str(p.relative_to(repo)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((repo / "data/pretrain").rglob("*")) if p.is_file()}


def test_two_nodes_train_the_same_model_as_two_processes_on_one(tmp_path):
    one = make_repo(tmp_path / "one", **{"cpu.threads": 1, "train.nproc": 2})
    node0 = make_repo(tmp_path / "node0", **{"cpu.threads": 1})
    run(node0, "dvc", "remote", "add", "-d", "store", str(tmp_path / "dvc-store"))
    run(node0, "dvc", "repro", "stream-shard")  # text-pretrain's inputs, made once and shared
    run(node0, "dvc", "push")
    run(node0, "git", "add", "-A")
    run(node0, "git", "commit", "-qm", "inputs of text-pretrain")
    subprocess.run(["git", "clone", "-q", str(node0), str(tmp_path / "node1")], check=True, capture_output=True)
    node1 = tmp_path / "node1"
    run(node1, "dvc", "pull", "--with-deps", "stream-shard")
    assert "up to date" in run(node1, "dvc", "status", "stream-shard").stdout

    rendezvous = {"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    own_node = (f"mount -t tmpfs -o size=1g tmpfs /dev/shm && mount --bind {node1} {node0} && cd {node0} && "
                f"exec {BIN / 'composer'} -n 1 -m pipeline text-pretrain")
    second = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", own_node],
                              env=env_for(node0, **rendezvous, NODE_RANK="1"),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        first = run(node0, "dvc", "repro", "text-pretrain", env={**rendezvous, "NODE_RANK": "0"})
        out1, _ = second.communicate(timeout=600)
    finally:
        second.kill()
    assert second.returncode == 0, out1[-3000:]
    assert "text-pretrain: 2 processes (1 on this machine), 2 samples each per step" in first.stdout
    assert not (node1 / "data/pretrain").exists()  # only global rank 0 writes
    assert not [p for p in (node1 / "checkpoints").rglob("*") if p.is_file()]

    run(one, "dvc", "repro", "text-pretrain")
    assert weights(node0) == weights(one) and len(weights(one)) >= 5
    assert (node0 / "logs/pretrain.csv").read_text() == (one / "logs/pretrain.csv").read_text()
    # the metrics alike but their environment block, which records threads per machine: here 1 (one
    # process a machine), there 2 (two processes, one thread each); the weights above are the same
    a, b = (json.loads((repo / "metrics/pretrain.json").read_text()) for repo in (node0, one))
    env_a, env_b = a.pop("environment"), b.pop("environment")
    assert a == b and a["val_loss"]
    assert (env_a["threads"], env_b["threads"]) == (1, 2)
    assert {k: v for k, v in env_a.items() if k != "threads"} == {k: v for k, v in env_b.items() if k != "threads"}
