"""Multi-process training under Composer's launcher (`composer -n ${train.nproc}`, gloo on the CPU).

The global batch stays the param's batch size: each of N processes takes batch / N samples, Streaming
gives each process a disjoint part of every epoch, and only the first process writes outputs. With
the same global batches in the same order, 2 processes must train the same model as 1.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from dvcrepo import BIN, ROOT, csv_column, run, set_params
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

# Runs in each process of `composer -n 2`: records the sample ids the process reads in two epochs of
# the text shards through our `dataset()`, and lets SaveWeightsAt save into a per-process folder.
PROBE = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from types import SimpleNamespace

    from composer.devices import DeviceCPU
    from composer.utils import dist

    from vlm.model.lm import LM, lm_config
    from vlm.training.callbacks import SaveWeightsAt
    from vlm.training.data import dataset

    shards, out = Path(sys.argv[1]), Path(sys.argv[2])
    dist.initialize_dist(DeviceCPU())
    rank = dist.get_global_rank()
    ds = dataset(shards / "text", "train", batch_size=2, seed=0)
    seen = []
    read = ds.get_item
    ds.get_item = lambda i, *a, **k: (seen.append(int(i)), read(i, *a, **k))[1]
    epochs = []
    for _ in range(2):
        seen.clear()
        for _ in ds:
            pass
        epochs.append(list(seen))
    (out / f"rank{rank}.json").write_text(json.dumps({"epochs": epochs, "size": ds.num_samples}))
    state = SimpleNamespace(timestamp=SimpleNamespace(batch=SimpleNamespace(value=3)))
    SaveWeightsAt(LM(lm_config("tiny", 300, 64)), {3}, out / f"weights-rank{rank}").batch_end(state, None)
    dist.barrier()
""")


@pytest.fixture
def repo(tiny) -> Path:
    """A copy of the tiny baseline: its three launched stages ran in 1 process."""
    return tiny


def test_each_process_reads_a_disjoint_part_of_every_epoch_and_only_the_first_writes(repo, tmp_path):
    (tmp_path / "probe.py").write_text(PROBE)
    run(repo, str(BIN / "composer"), "-n", "2", str(tmp_path / "probe.py"), str(repo / "data/shards"), str(tmp_path))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    size = ranks[0]["size"]
    for epoch in range(2):
        a, b = (set(r["epochs"][epoch]) for r in ranks)
        read = len(ranks[0]["epochs"][epoch]) + len(ranks[1]["epochs"][epoch])
        assert a | b == set(range(size)), f"epoch {epoch}: some samples were read by no process"
        # Streaming pads an epoch to a whole number of batches per process by repeating samples:
        # those repeats are the only overlap allowed
        assert len(a & b) <= read - size < 2 * 2, f"epoch {epoch}: {len(a & b)} samples read by both"
        assert len(ranks[0]["epochs"][epoch]) == len(ranks[1]["epochs"][epoch])
    assert ranks[0]["epochs"][0] != ranks[0]["epochs"][1], "the second epoch was not reshuffled"
    assert (tmp_path / "weights-rank0/ba3/model.safetensors").is_file()
    assert not (tmp_path / "weights-rank1").exists(), "a process other than the first saved weights"


def test_two_processes_train_the_same_model_as_one(repo):
    """Same global batches in the same order, each process's loss weighted by its share of the loss
    tokens: the curves agree to float rounding, images, mixed sources and padding included."""
    curves = ("pretrain", "cooldown", "finetune")
    one = {c: csv_column(repo / f"logs/{c}.csv", "loss") for c in curves}
    one_val = json.loads((repo / "metrics/pretrain.json").read_text())["val_loss"]
    one_share = json.loads((repo / "metrics/cooldown.json").read_text())["realised_token_share"]
    one_points = sorted(p.name for p in (repo / "data/pretrain").iterdir())

    set_params(repo, **{"train.nproc": 2})
    proc = run(repo, "dvc", "repro", "finetune")
    for stage in ("text-pretrain", "mixed-cooldown", "finetune"):
        assert f"composer -n 2 -m pipeline {stage}" in proc.stdout
    assert "text-pretrain: 2 processes (2 on this machine), 2 samples each per step" in proc.stdout
    assert "train.split_by_length is off with 2 processes" in proc.stdout
    assert sorted(p.name for p in (repo / "data/pretrain").iterdir()) == one_points
    for c in curves:
        two = csv_column(repo / f"logs/{c}.csv", "loss")
        assert two.keys() == one[c].keys(), c
        for step, loss in one[c].items():
            assert two[step] == pytest.approx(loss, rel=1e-4), (c, step)
    two_val = json.loads((repo / "metrics/pretrain.json").read_text())["val_loss"]
    for fraction, loss in one_val.items():  # the val split is shared out too (padded by Streaming)
        assert two_val[fraction] == pytest.approx(loss, rel=1e-3), fraction
    # token counts are summed over the processes
    assert json.loads((repo / "metrics/cooldown.json").read_text())["realised_token_share"] == one_share
    assert (repo / "dvc.lock").read_text().count("nproc: 2") == 3
    assert not list((repo / "checkpoints").glob("*/*")), "a resume folder was left behind"


def test_fsdp_trains_the_same_model_as_one_process(repo):
    """`train.fsdp`: two processes that each hold half of every weight, gradient and Adam moment
    (FSDP2, gloo) follow one process's curves to float rounding, branch points and stage outputs
    are whole weights that load as before, and a run stopped mid-stage resumes from its checkpoint."""
    curves = ("pretrain", "cooldown", "finetune")
    one = {c: csv_column(repo / f"logs/{c}.csv", "loss") for c in curves}
    one_weights = {f: load_file(repo / f / "model.safetensors") for f in ("data/cooldown", "data/finetune")}

    set_params(repo, **{"train.nproc": 2, "train.fsdp": True, "resume.checkpoint_interval": 2,
                        "pretrain.save_optimizer": False})  # not with FSDP (the params check)
    proc = run(repo, "dvc", "repro", "finetune")
    assert "text-pretrain: 2 processes (2 on this machine), 2 samples each per step; weights, gradients and " \
           "optimizer state sharded over them (FSDP2)" in proc.stdout
    for c in curves:
        two = csv_column(repo / f"logs/{c}.csv", "loss")
        assert two.keys() == one[c].keys(), c
        for step, loss in one[c].items():
            assert two[step] == pytest.approx(loss, rel=1e-3), (c, step)
    for folder, weights in one_weights.items():
        sharded = load_file(repo / folder / "model.safetensors")
        assert sharded.keys() == weights.keys(), folder
        for name, w in weights.items():
            assert sharded[name].shape == w.shape and sharded[name].dtype == w.dtype, (folder, name)
            # Adam turns rounding-level gradient differences into visible steps only where a gradient
            # is near zero; the weights as a whole stay within a small part of one LR step
            assert (sharded[name] - w).abs().mean() < 1e-4, (folder, name)
    run(repo, str(BIN / "python"), "-m", "pipeline", "evaluate")  # the gathered weights load and evaluate

    # stopped after step 3 of the fine-tuning: resumes from the step-2 checkpoint (whole state, gathered)
    finished = csv_column(repo / "logs/finetune.csv", "loss")
    set_params(repo, **{"finetune.lr": 0.0004})
    failed = run(repo, "dvc", "repro", "finetune", check=False, env={"VLM_CRASH_AT": "finetune:step3"})
    assert failed.returncode != 0
    proc = run(repo, "dvc", "repro", "finetune")
    assert "finetune: resumed from the checkpoint at step 2" in proc.stdout
    assert csv_column(repo / "logs/finetune.csv", "loss").keys() == finished.keys()


def test_the_fsdp_gpu_check_runs_on_the_cpu(tmp_path):
    """`make gpu-check`'s script at tiny shapes on 2 gloo processes: one process's rows all hold an
    image and the other's none, it resumes from its checkpoint and the gathered weights are whole."""
    out = tmp_path / "fsdp.json"
    run(ROOT, str(BIN / "composer"), "-n", "2", "-m", "bench.fsdp", "--quick", "--out", str(out))
    report = json.loads(out.read_text())
    assert report["processes"] == 2 and report["resumed_at"] == 4 and report["checkpoint"] == "ba4.pt"
    assert report["saved_weights_match_the_model"]
    assert report["tokens_per_sec"] > 0


def test_a_batch_the_processes_cannot_split_fails_before_training(repo):
    """The params check catches nproc; the stage itself checks the launcher's real world size."""
    set_params(repo, **{"train.nproc": 3})
    proc = run(repo, "dvc", "repro", "text-pretrain", check=False)
    assert proc.returncode != 0
    assert "`pretrain.batch_size` 4 is not divisible by `train.nproc` 3" in proc.stderr + proc.stdout
    set_params(repo, **{"train.nproc": 1})
    proc = run(repo, str(BIN / "composer"), "-n", "3", "-m", "pipeline", "text-pretrain", check=False)
    assert proc.returncode != 0
    assert "`pretrain.batch_size` 4 is not divisible by the 3 training processes" in proc.stderr + proc.stdout



def test_two_processes_evaluate_as_one(repo):
    """Evaluation split by whole batches over 2 processes (gloo) and gathered: every output equals
    one process's, byte for byte."""
    set_params(repo, **{"evaluate.batch_size": 7})  # several batches per task, so both processes work
    outputs = ("metrics/eval.json", "logs/scores.json", "logs/eval_diagnostics.json", "logs/eval_examples.json")
    run(repo, str(BIN / "python"), "-m", "pipeline", "evaluate")
    one = {f: (repo / f).read_text() for f in outputs}
    for f in outputs:
        (repo / f).unlink()
    proc = run(repo, str(BIN / "composer"), "-n", "2", "-m", "pipeline", "evaluate")
    assert "on cpu in 2 processes" in proc.stdout
    assert {f: (repo / f).read_text() for f in outputs} == one
    tasks = json.loads(one["metrics/eval.json"])["tasks"]
    assert all(t["n"] > 7 for t in tasks.values())
