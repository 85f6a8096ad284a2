"""End to end: the real DVC pipeline on a tiny params file, in temporary copies of the repository.

The tiny baseline (conftest.py) runs the whole DAG once per test run (about a minute on 2 CPU
cores): the fast tier's one end-to-end run. Each test gets its own copy (`tiny`) and reads its
products, asks DVC what a param change would re-run, or runs single stages against it. The tests
marked `slow` train again (experiments, other branch points, other repositories).
"""

from __future__ import annotations

import json
import math
import subprocess
import time

import pytest
import yaml
from dvcrepo import (
    ROOT,
    STAGES,
    changed_params,
    csv_column,
    env_for,
    make_repo,
    ran,
    run,
    set_params,
    would_run,
)
from safetensors.torch import load_file

from vlm.training.schedules import warmup_cosine


def test_dvc_exp_show_prints_the_stable_scores_first(tiny):
    """A terminal shows the first columns of `dvc exp show`: the headline scores with their errors,
    then each task's accuracy and its error; the other stages' metrics (counts) come after."""
    header = run(tiny, "dvc", "exp", "show", "--csv").stdout.splitlines()[0].split(",")
    fixed = {"Experiment", "rev", "typ", "Created", "parent", "State", "Executor"}
    columns = [c for c in header if c not in fixed]
    assert columns[:6] == ["vision_stable", "vision_stable_se", "text_stable", "text_stable_se",
                           "stable_mean", "stable_mean_se"]
    first_task = json.loads((tiny / "data/raw/eval/tasks.json").read_text())
    assert columns[6:8] == [f"tasks.{min(first_task)}.accuracy", f"tasks.{min(first_task)}.accuracy_se"]
    assert columns.index("counts.creatures") > columns.index("tasks.vqa.accuracy")  # still shown, after


def test_every_stage_but_evaluate_is_kept_in_dvcs_run_cache(tiny):
    """DVC keeps a run of a stage (to restore, not re-run, when its deps and params come back, as
    between a study's variants) only if every output is cached or a metric or plot. evaluate alone
    writes uncached logs."""
    stages = yaml.safe_load((tiny / "dvc.yaml").read_text())["stages"]
    assert len(list((tiny / ".dvc/cache/runs").glob("*/*"))) == len(stages) - 1


def test_what_is_neither_a_result_nor_in_git_is_ignored_by_git():
    """Timings, Streaming's local cache of remote shards and resume checkpoints are not DVC outputs
    and must not show up in `git status` (nor be taken into an experiment's commit)."""
    from pipeline import paths
    from vlm.training import resume

    for path in (paths.TIMINGS / "pretrain.csv", paths.STREAM_CACHE / "0123abcd/text/train/index.json",
                 resume.ROOT / "text-pretrain/0123abcd/ep0-ba10-rank0.pt"):
        proc = subprocess.run(["git", "check-ignore", "--no-index", "-q", str(path)], cwd=ROOT)
        assert proc.returncode == 0, f"{path} is not ignored by git (.gitignore)"


def test_only_the_launched_stages_see_a_multi_node_rendezvous(tiny):
    """README's multi-node recipe exports WORLD_SIZE, NODE_RANK, MASTER_ADDR and MASTER_PORT for
    Composer's launcher; a one-process stage (train-encoder trains with Composer) must ignore them,
    not wait for ranks that never come, and train what it trains alone. (Which stages are launched:
    tests/test_dvc_deps.py.)"""
    before = (tiny / "data/encoder/open_clip_model.safetensors").read_bytes()
    rendezvous = {"WORLD_SIZE": "16", "NODE_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29531"}
    proc = subprocess.run(["python", "-m", "pipeline", "train-encoder"], cwd=tiny, capture_output=True, text=True,
                          env=env_for(tiny, **rendezvous), timeout=600)  # without the fix: waits for ever
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tiny / "data/encoder/open_clip_model.safetensors").read_bytes() == before


def params_of(repo) -> dict:
    return yaml.safe_load((repo / "params.yaml").read_text())


def test_full_repro_ends_in_metrics_for_every_phase(tiny):
    metrics = json.loads((tiny / "metrics/eval.json").read_text())
    for key in ("vision_stable", "text_stable", "stable_mean"):
        assert isinstance(metrics[key], float)
    assert set(metrics["phases"]) == {"text_pretrain", "cooldown", "finetune"}
    assert "vision_stable" not in metrics["phases"]["text_pretrain"]  # a text-only LM has no eyes
    assert set(metrics["tasks"]) == {"vqa", "caption_only", "pope_random", "pope_popular", "pope_adversarial",
                                     "text_mc"}
    for task in metrics["tasks"]:
        t = metrics["tasks"][task]
        assert 0 <= t["accuracy"] <= 1
        assert t["stable"] == pytest.approx((t["accuracy"] - t["chance"]) / (1 - t["chance"]))
    for curve in ("pretrain", "cooldown", "finetune", "encoder"):
        header = (tiny / f"logs/{curve}.csv").read_text().splitlines()[0].split(",")
        assert header[:3] == ["step", "loss", "lr"]
        assert "tokens_per_sec" not in header  # wall-clock goes to timings/, not to a hashed output
        assert json.loads((tiny / f"timings/{curve}.json").read_text())["seconds"] > 0
    for name in ("encoder", "pretrain", "cooldown", "finetune"):
        assert "seconds" not in json.loads((tiny / f"metrics/{name}.json").read_text())
    for task in metrics["tasks"]:  # each score with its standard error
        t = metrics["tasks"][task]
        assert 0 <= t["accuracy_se"] < 0.5 and t["stable_se"] == pytest.approx(t["accuracy_se"] / (1 - t["chance"]))
    assert {"precision", "recall", "f1", "yes_ratio"} <= set(metrics["tasks"]["pope_popular"])
    assert set(metrics["tasks"]["vqa"]["by_type"]) == {"number", "other"}  # the world's answer types
    diagnostics = json.loads((tiny / "logs/eval_diagnostics.json").read_text())
    assert set(diagnostics) == {"cooldown", "finetune"}
    assert set(diagnostics["finetune"]) == set(metrics["tasks"]) - {"text_mc", "caption_only"}  # open-ended ones
    # caption_only is headlined where image-caption pre-training ends; its fine-tuned score beside it
    caption = metrics["tasks"]["caption_only"]
    assert caption["phase"] == "cooldown" and 0 <= caption["after_finetune"] <= 1
    scores = {r["score"]: r for r in json.loads((tiny / "logs/scores.json").read_text())}
    assert caption["accuracy"] == scores["cooldown/caption_only"]["accuracy"]
    assert caption["after_finetune"] == scores["finetune/caption_only"]["accuracy"]
    shown = json.loads(run(tiny, "dvc", "metrics", "show", "--json").stdout)
    files = set(shown[""]["data"]) if "" in shown else set(next(iter(shown.values()))["data"])
    assert {"metrics/eval.json", "metrics/prepare.json", "metrics/cooldown.json"} <= files
    plots = run(tiny, "dvc", "plots", "show", "--json").stdout
    assert "training loss" in plots and "cooldown image token share" in plots and "logs/scores.json" in plots
    assert not list((tiny / "checkpoints").rglob("*.pt"))  # resume checkpoints go once a stage is done


def test_every_training_and_evaluation_result_records_its_environment(tiny):
    """Versions and device in the DVC-hashed metrics; the machine itself only in timings/ (untracked),
    so that two machines that give the same results give the same dvc.lock."""
    import importlib.metadata
    import platform

    from pipeline.__main__ import has_avx2
    from pipeline.common import RECORDED_PACKAGES
    for name in ("encoder", "features", "pretrain", "cooldown", "finetune", "eval"):
        env = json.loads((tiny / f"metrics/{name}.json").read_text())["environment"]
        assert env["python"] == platform.python_version(), name
        assert {p: env[p] for p in RECORDED_PACKAGES} == {p: importlib.metadata.version(p) for p in RECORDED_PACKAGES}
        assert env["device"] == "cpu" and env["threads"] == 2  # the `cpu` params
        assert env["cpu_capability"] == "AVX2" or not has_avx2()
        assert not {"cpu", "cores", "machine"} & set(env), name
        timing = "evaluate" if name == "eval" else name
        assert json.loads((tiny / f"timings/{timing}.json").read_text())["machine"]["cpu"], name


def test_the_runs_learn(tiny):
    """Validation loss falls over the text run and every training loss falls; all values finite."""
    val = json.loads((tiny / "metrics/pretrain.json").read_text())["val_loss"]
    losses = [val[k] for k in sorted(val, key=float)]
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] - 0.3
    for curve in ("pretrain", "cooldown", "finetune", "encoder"):
        loss = list(csv_column(tiny / f"logs/{curve}.csv", "loss").values())
        assert all(math.isfinite(v) for v in loss), curve
        assert sum(loss[-2:]) < sum(loss[:2]), curve


def test_a_second_repro_does_nothing(tiny):
    t0 = time.time()
    out = run(tiny, "dvc", "repro").stdout
    print(f"second dvc repro: {time.time() - t0:.1f}s")
    assert "Running stage" not in out
    assert "up to date" in run(tiny, "dvc", "status").stdout


def test_branch_point_weights_land_exactly_on_the_branch_points(tiny):
    p = params_of(tiny)
    steps = p["pretrain"]["steps"]
    expected = {round(f * steps) for f in p["pretrain"]["branch_points"]}
    saved = {int(d.name.removeprefix("ba")) for d in (tiny / "data/pretrain").glob("ba*")}
    assert saved == expected
    assert not list((tiny / "data/pretrain").rglob("*.pt"))  # weights only, no Composer checkpoints
    first, last = (load_file(tiny / f"data/pretrain/ba{s}/model.safetensors") for s in (min(saved), max(saved)))
    assert any(not first[k].equal(last[k]) for k in first)
    schedule = json.loads((tiny / "data/pretrain/schedule.json").read_text())
    assert schedule["tokens_per_step"] == p["pretrain"]["batch_size"] * p["shard"]["seq_len"]
    val = json.loads((tiny / "metrics/pretrain.json").read_text())["val_loss"]
    assert all(isinstance(v, float) for v in val.values()) and len(val) == len(expected)
    logged = csv_column(tiny / "logs/pretrain.csv", "val_loss")
    assert set(logged) == expected  # measured at the branch points and nowhere else


def test_the_lr_chain_from_text_run_to_cooldown(tiny):
    """branch.json's LR is the LR the text run trained its next batch with (row step + 1 of its
    curve: row s is batch s); the cooldown's first batch continues with exactly that LR."""
    p = params_of(tiny)
    info = json.loads((tiny / "data/branch/branch.json").read_text())
    step = round(p["branch"]["fraction"] * p["pretrain"]["steps"])
    assert info["step"] == step
    assert info["tokens_seen"] == step * p["pretrain"]["batch_size"] * p["shard"]["seq_len"]
    pt = p["pretrain"]
    assert info["lr"] == pytest.approx(warmup_cosine(step, pt["steps"], pt["lr"], pt["warmup_steps"],
                                                     pt["final_lr_ratio"]))
    assert csv_column(tiny / "logs/pretrain.csv", "lr")[step + 1] == pytest.approx(info["lr"], rel=1e-5)
    cooldown = json.loads((tiny / "metrics/cooldown.json").read_text())
    assert cooldown["lr_mode"] == "continue"
    lr = csv_column(tiny / "logs/cooldown.csv", "lr")
    assert lr[1] == pytest.approx(info["lr"], rel=1e-5)
    assert lr[max(lr)] < lr[1]  # and decays from there


def test_branch_rewarm_true_rewarms_a_cooldown_that_would_continue(tiny):
    """The default branch (80%) continues from the branch LR under `auto` (the test above); with
    `branch.rewarm: true` its first step trains at LR 0 and the warmup climbs to `cooldown.rewarm_lr`."""
    set_params(tiny, **{"branch.rewarm": True})
    assert ran(run(tiny, "dvc", "repro", "mixed-cooldown")) == ["mixed-cooldown"]
    cd = params_of(tiny)["cooldown"]
    assert json.loads((tiny / "metrics/cooldown.json").read_text())["lr_mode"] == "rewarm"
    lr = csv_column(tiny / "logs/cooldown.csv", "lr")
    assert lr[1] == 0.0
    assert lr[2] == pytest.approx(cd["rewarm_lr"] / cd["warmup_steps"], rel=1e-5)


def test_branch_optimizer_carry_hands_the_text_runs_adam_moments_to_the_cooldown(tiny):
    """The branch point's moments travel from data/pretrain through data/branch into the cooldown; with
    everything else equal (seed, LR, data), carried moments train other weights than fresh ones (the
    default): were the carry a no-op, the two cooldowns would be bit-identical."""
    step = json.loads((tiny / "data/branch/branch.json").read_text())["step"]
    saved = load_file(tiny / f"data/pretrain/ba{step}/optimizer.safetensors")
    assert saved.keys() == load_file(tiny / "data/branch/optimizer.safetensors").keys()
    assert all(saved[k].equal(v) for k, v in load_file(tiny / "data/branch/optimizer.safetensors").items())
    assert {v.item() for k, v in saved.items() if k.endswith(".step")} == {step}
    fresh = load_file(tiny / "data/cooldown/model.safetensors")
    assert json.loads((tiny / "metrics/cooldown.json").read_text())["optimizer"] == "fresh"
    set_params(tiny, **{"branch.optimizer": "carry"})
    assert ran(run(tiny, "dvc", "repro", "mixed-cooldown")) == ["mixed-cooldown"]
    assert json.loads((tiny / "metrics/cooldown.json").read_text())["optimizer"] == "carried"
    carried = load_file(tiny / "data/cooldown/model.safetensors")
    lm = [k for k in carried if k.startswith("lm.")]
    assert lm and any(not carried[k].equal(fresh[k]) for k in lm)
    lr = csv_column(tiny / "logs/cooldown.csv", "lr")  # the LR plan is not what differs
    assert lr[1] == pytest.approx(json.loads((tiny / "data/branch/branch.json").read_text())["lr"], rel=1e-5)


def test_realised_image_token_ratio_matches_the_batch_composition(tiny):
    """Within a couple of points at this tiny size (54 caption samples); the default run's committed
    metrics, with 4,200 caption samples, must match within 0.005 (see the next test)."""
    cooldown = json.loads((tiny / "metrics/cooldown.json").read_text())
    ratio = params_of(tiny)["cooldown"]["image_ratio"]
    assert abs(cooldown["realised_token_share"]["captions"] - cooldown["expected_token_share"]["captions"]) <= 0.02
    assert abs(cooldown["expected_token_share"]["captions"] - ratio) <= 0.02
    assert cooldown["realised_token_share"]["instruct"] == 0
    assert sum(cooldown["batch_counts"].values()) == 32
    share = csv_column(tiny / "logs/cooldown.csv", "image_token_share")
    assert share[max(share)] == pytest.approx(cooldown["realised_token_share"]["captions"], abs=1e-5)


def test_the_committed_default_run_realises_its_image_share():
    """README's default-run figure, from the committed metrics (dvc.lock pins them to the code)."""
    cooldown = json.loads((ROOT / "metrics/cooldown.json").read_text())
    realised, expected = cooldown["realised_token_share"]["captions"], cooldown["expected_token_share"]["captions"]
    assert abs(realised - expected) <= 0.005
    # whole samples per batch: the expected share is the nearest one caption sample more or fewer allows
    ratio, counts = params_of(ROOT)["cooldown"]["image_ratio"], cooldown["batch_counts"]
    n, m = counts["captions"], counts["text"]
    x = m * expected / (n * (1 - expected))  # caption tokens per text token, from the expected share
    for k in (n - 1, n + 1):
        assert abs(k * x / (k * x + (n + m - k)) - ratio) > abs(expected - ratio)


@pytest.mark.parametrize(
    "change, first",
    [
        ({"cooldown.image_ratio": 0.3}, ["mixed-cooldown"]),
        ({"cooldown.instruct_ratio": 0.1}, ["mixed-cooldown"]),
        ({"branch.fraction": 0.6}, ["branch-at-fraction"]),
        ({"finetune.epochs": 2}, ["finetune"]),
        ({"evaluate.max_new_tokens": 3}, ["evaluate"]),
        ({"evaluate.max_samples": 10}, ["evaluate"]),
        ({"tokenize.vocab_size": 420}, ["tokenize"]),
        ({"shard.val_fraction": 0.1}, ["stream-shard"]),
        # the control reaches every stage that shows the model an image
        ({"vision.blank_images": True}, ["mixed-cooldown", "finetune", "evaluate"]),
        ({"vision.cache_features": False}, ["encode-images", "mixed-cooldown", "finetune", "evaluate"]),
        ({"resume.checkpoint_interval": 7}, []),  # resume checkpoints never change a result
    ],
)
def test_a_param_change_starts_at_the_stage_that_reads_it(tiny, change, first):
    """`--dry` lists the stages whose own params or deps changed; what follows re-runs as outputs change."""
    with changed_params(tiny, **change):
        assert would_run(tiny) == first
    assert would_run(tiny) == []


def test_a_code_change_in_shared_plumbing_reruns_every_stage(tiny):
    path = tiny / "vlm/io.py"
    original = path.read_text()
    try:
        path.write_text(original + "\n# a change\n")
        assert would_run(tiny) == STAGES
    finally:
        path.write_text(original)


def test_bad_params_fail_before_work_and_keep_the_old_outputs(tiny):
    before = (tiny / "data/branch/model.safetensors").read_bytes()
    with changed_params(tiny, **{"branch.fraction": 0.5}):
        proc = run(tiny, "python", "-m", "pipeline", "branch-at-fraction", check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "`branch.fraction`" in proc.stderr and "[0.0, 0.2, 0.4, 0.6, 0.8, 1.0]" in proc.stderr
    assert (tiny / "data/branch/model.safetensors").read_bytes() == before

    with changed_params(tiny, **{"tokenize.vocab_size": 100}):
        proc = run(tiny, "python", "-m", "pipeline", "tokenize", check=False)
    assert proc.returncode == 2 and "`tokenize.vocab_size`" in proc.stderr and proc.stdout == ""


def test_max_samples_scores_a_seeded_stratified_subset_of_each_task(tiny):
    from collections import Counter

    from vlm.data import readers
    from vlm.evaluation.sampling import subsample

    set_params(tiny, **{"evaluate.max_samples": 10})
    run(tiny, "python", "-m", "pipeline", "evaluate")
    metrics = json.loads((tiny / "metrics/eval.json").read_text())
    assert {t["n"] for t in metrics["tasks"].values()} == {10} and len(metrics["tasks"]) == 6
    vqa = readers.load_tasks(tiny / "data/raw/eval")["vqa"]["items"]
    assert len(vqa) == 40
    chosen = Counter(it["answer_type"] for it in subsample(vqa, 10, params_of(tiny)["seed"], "vqa",
                                                           lambda it: it["answer_type"]))
    whole = Counter(it["answer_type"] for it in vqa)
    assert {t: r["n"] for t, r in metrics["tasks"]["vqa"]["by_type"].items()} == chosen
    assert all(abs(chosen[t] - 10 * whole[t] / 40) < 1 for t in whole)  # each type in its share


@pytest.mark.slow
def test_cached_features_train_and_score_as_encoding_every_step(tiny):
    """The frozen encoder's cached features (the default) against encoding every image as it comes:
    the same cooldown and fine-tuning losses within float tolerance, and the same scores."""
    cached = {c: csv_column(tiny / f"logs/{c}.csv", "loss") for c in ("cooldown", "finetune")}
    scores = json.loads((tiny / "metrics/eval.json").read_text())
    store = json.loads((tiny / "metrics/features.json").read_text())
    n_images = sum(s["images"] for k, s in json.loads((tiny / "metrics/shards.json").read_text()).items()
                   if not k.startswith("text/"))
    assert store["enabled"] and store["images"] >= n_images  # every shard image, then the evaluation ones
    assert 0 < store["distinct_images"] <= store["images"]
    with changed_params(tiny, **{"vision.cache_features": False}):
        proc = run(tiny, "dvc", "repro")
        assert ran(proc) == ["encode-images", "mixed-cooldown", "finetune", "evaluate"]
        assert "cached features" not in proc.stdout and "no cache (vision.cache_features is false)" in proc.stdout
        uncached = {c: csv_column(tiny / f"logs/{c}.csv", "loss") for c in ("cooldown", "finetune")}
        plain = json.loads((tiny / "metrics/eval.json").read_text())
    for c in cached:
        assert len(cached[c]) == len(uncached[c]) > 0
        assert list(uncached[c].values()) == pytest.approx(list(cached[c].values()), rel=1e-5), c
    for task, result in scores["tasks"].items():
        assert plain["tasks"][task]["accuracy"] == pytest.approx(result["accuracy"], abs=1e-9), task
    # Back to the cached run: DVC's run cache restores the training outputs; evaluate, whose outputs
    # are not cached (metrics in git), runs again and scores as before.
    proc = run(tiny, "dvc", "repro")
    assert ran(proc) == ["evaluate"] and json.loads((tiny / "metrics/eval.json").read_text()) == scores


@pytest.mark.slow
def test_exp_run_of_an_image_ratio_reruns_only_cooldown_finetune_evaluate(tiny):
    proc = run(tiny, "dvc", "exp", "run", "-S", "cooldown.image_ratio=0.3")
    assert ran(proc) == ["mixed-cooldown", "finetune", "evaluate"]
    realised = json.loads((tiny / "metrics/cooldown.json").read_text())["realised_token_share"]["captions"]
    assert abs(realised - 0.3) <= 0.02


@pytest.mark.slow
@pytest.mark.parametrize("fraction", [1.0, 0.0])
def test_a_rewarm_branch_runs_end_to_end_with_its_warmup_and_peak(tiny, fraction):
    """At 100% (the branch LR has decayed) and 0% (it is 0), `branch.rewarm: auto` re-warms the cooldown
    linearly to `cooldown.rewarm_lr` over `cooldown.warmup_steps`, then decays. The text run is never
    re-run."""
    set_params(tiny, **{"branch.fraction": fraction})
    proc = run(tiny, "dvc", "repro")
    assert ran(proc) == ["branch-at-fraction", "mixed-cooldown", "finetune", "evaluate"]
    p = params_of(tiny)
    cd = p["cooldown"]
    info = json.loads((tiny / "data/branch/branch.json").read_text())
    assert info["step"] == round(fraction * p["pretrain"]["steps"])
    assert p["branch"]["rewarm"] == "auto"
    cooldown = json.loads((tiny / "metrics/cooldown.json").read_text())
    assert (cooldown["lr_mode"], cooldown["start_lr"]) == ("rewarm", cd["rewarm_lr"])
    lr = csv_column(tiny / "logs/cooldown.csv", "lr")
    warm = cd["warmup_steps"]
    for s in range(1, warm + 2):  # row s trained with the schedule's LR after s - 1 steps
        assert lr[s] == pytest.approx(cd["rewarm_lr"] * min((s - 1) / warm, 1.0), rel=1e-5, abs=1e-12)
    assert max(lr.values()) == pytest.approx(cd["rewarm_lr"], rel=1e-5)
    assert lr[max(lr)] < cd["rewarm_lr"]
    metrics = json.loads((tiny / "metrics/eval.json").read_text())
    assert math.isfinite(metrics["stable_mean"])


@pytest.mark.slow
def test_a_local_pretrained_open_clip_folder_is_loaded_instead_of_training(tmp_path):
    from vlm.model.vision import build_clip, preprocess_config, save_clip, tiny_clip_config

    repo = make_repo(tmp_path / "repo")
    ckpt = repo / "inputs/encoder/my-siglip"  # the folder train-encoder declares as a DVC dependency
    cfg = tiny_clip_config(48, 16, 32, 2, 2, 32, vocab_size=64, context_length=8, pad_id=2, eos_id=1)
    save_clip(build_clip(cfg), cfg, ckpt, preprocess_config(48))
    set_params(repo, **{"vision.pretrained": "inputs/encoder/my-siglip"})
    run(repo, "python", "-m", "pipeline", "train-encoder")
    for name in ("open_clip_config.json", "open_clip_model.safetensors"):
        assert (repo / "data/encoder" / name).read_bytes() == (ckpt / name).read_bytes()
    assert json.loads((repo / "metrics/encoder.json").read_text())["source"] == "inputs/encoder/my-siglip"

    before = (repo / "data/encoder/open_clip_model.safetensors").read_bytes()
    set_params(repo, **{"vision.pretrained": "inputs/encoder/missing"})
    proc = run(repo, "python", "-m", "pipeline", "train-encoder", check=False)
    assert proc.returncode != 0 and "`vision.pretrained`" in proc.stderr
    # patches of 8 px: 36 tokens per image, where the shards were cut to the context with 9
    cfg8 = tiny_clip_config(48, 8, 32, 2, 2, 32, vocab_size=64, context_length=8, pad_id=2, eos_id=1)
    save_clip(build_clip(cfg8), cfg8, repo / "inputs/encoder/patch8", preprocess_config(48))
    set_params(repo, **{"vision.pretrained": "inputs/encoder/patch8"})
    proc = run(repo, "python", "-m", "pipeline", "train-encoder", check=False)
    assert proc.returncode != 0
    assert "yields 36 image tokens per image but `shard.image_tokens` is 9; set shard.image_tokens: 36" in proc.stderr
    assert (repo / "data/encoder/open_clip_model.safetensors").read_bytes() == before  # the old output is untouched


@pytest.mark.slow
def test_microbatches_train_the_same_steps(tmp_path):
    """`train.microbatch_size` splits each process's batch for memory, not for the result."""
    repo = make_repo(tmp_path / "repo")
    run(repo, "dvc", "repro", "text-pretrain")
    whole = csv_column(repo / "logs/pretrain.csv", "loss")
    set_params(repo, **{"train.microbatch_size": 2})  # pretrain.batch_size is 4: two chunks a step
    proc = run(repo, "dvc", "repro", "text-pretrain")
    assert ran(proc) == ["text-pretrain"]
    assert "text-pretrain: each process runs its share of a batch in microbatches of 2 samples" in proc.stdout
    split = csv_column(repo / "logs/pretrain.csv", "loss")
    assert len(split) == len(whole) == params_of(repo)["pretrain"]["steps"]
    assert split == pytest.approx(whole, rel=1e-4)
    set_params(repo, **{"train.microbatch_size": 8})
    proc = run(repo, "python", "-m", "pipeline.check_params", check=False)
    assert proc.returncode == 1 and "`train.microbatch_size` 8 is larger than a process's share" in proc.stderr
