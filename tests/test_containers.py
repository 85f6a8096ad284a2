"""containers/run and the recipe, without a container engine (the real image is built and run by
containers/test-image, the container tier of `make test-all`): engine choice, arguments, errors, layering."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "containers/run"


def fake_bin(tmp_path: Path, engines: tuple[str, ...] = ("podman",), image_exists: bool = True) -> Path:
    """A PATH with bash, the coreutils the script needs and fake engines that print their arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "dirname", "id", "cat"):
        os.symlink(shutil.which(tool), bin_dir / tool)
    for engine in engines:
        script = bin_dir / engine
        script.write_text(f"#!{shutil.which('bash')}\n"
                          f'if [ "$1 $2" = "image inspect" ]; then exit {0 if image_exists else 1}; fi\n'
                          'for a in "$@"; do echo "ARG $a"; done\n')
        script.chmod(0o755)
    return bin_dir


def call(tmp_path, *args, engines=("podman",), image_exists=True, **env) -> subprocess.CompletedProcess:
    path = fake_bin(tmp_path, engines, image_exists)
    return subprocess.run([str(RUN), *args], capture_output=True, text=True,
                          env={"PATH": str(path), "HOME": str(tmp_path), **env})


def run_args(proc: subprocess.CompletedProcess) -> list[str]:
    return [line.removeprefix("ARG ") for line in proc.stdout.splitlines() if line.startswith("ARG ")]


def test_help_explains_it(tmp_path):
    proc = call(tmp_path, "--help")
    assert proc.returncode == 0 and "containers/run dvc repro" in proc.stdout and "VLM_CONTAINER_ENGINE" in proc.stdout


def test_no_engine_says_what_to_do(tmp_path):
    proc = call(tmp_path, "dvc", "repro", engines=())
    assert proc.returncode == 1
    assert "neither podman nor docker is installed" in proc.stderr and "make repro" in proc.stderr


def test_a_chosen_engine_that_is_missing_is_named(tmp_path):
    proc = call(tmp_path, "dvc", "repro", VLM_CONTAINER_ENGINE="nerdctl")
    assert proc.returncode == 1 and "VLM_CONTAINER_ENGINE=nerdctl is not installed" in proc.stderr


def test_a_bad_image_kind_is_refused(tmp_path):
    proc = call(tmp_path, "dvc", "repro", VLM_IMAGE_KIND="tpu")
    assert proc.returncode == 1 and "VLM_IMAGE_KIND must be cpu or gpu" in proc.stderr


def test_the_run_mounts_the_repository_as_the_caller_with_shared_memory_and_env(tmp_path):
    proc = call(tmp_path, "dvc", "exp", "run", "-S", "cooldown.image_ratio=0.1",
                DVC_EXP_NAME="e1", AWS_ACCESS_KEY_ID="k", UNRELATED="x", VLM_IMAGE_KIND="cpu")
    assert proc.returncode == 0, proc.stderr
    args = run_args(proc)
    assert args[0] == "run" and args[-6:] == ["vlm-recipe:cpu", "dvc", "exp", "run", "-S", "cooldown.image_ratio=0.1"]
    assert f"{ROOT}:/work" in args and args[args.index("-w") + 1] == "/work"
    assert "--shm-size" in args
    uid = f"{os.getuid()}:{os.getgid()}"
    assert (uid in args) if os.getuid() == 0 else ("--userns=keep-id" in args)
    assert "GIT_CONFIG_VALUE_0=/work" in args
    env = [args[i + 1] for i, a in enumerate(args) if a == "-e"]
    assert "DVC_EXP_NAME" in env and "AWS_ACCESS_KEY_ID" in env and "UNRELATED" not in env


def test_extra_engine_arguments_and_the_multi_node_environment_pass_through(tmp_path):
    proc = call(tmp_path, "composer", "-n", "8", "-m", "pipeline", "text-pretrain", VLM_IMAGE_KIND="cpu",
                VLM_ENGINE_ARGS="--network host", WORLD_SIZE="16", NODE_RANK="1", MASTER_ADDR="10.0.0.1",
                MASTER_PORT="29500", S3_ENDPOINT_URL="http://127.0.0.1:9000")
    assert proc.returncode == 0, proc.stderr
    args = run_args(proc)
    image = args.index("vlm-recipe:cpu")
    assert args[image - 2: image] == ["--network", "host"]
    env = [args[i + 1] for i, a in enumerate(args) if a == "-e"]
    assert {"WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "S3_ENDPOINT_URL"} <= set(env)


def test_docker_gets_the_gpus_when_asked(tmp_path):
    proc = call(tmp_path, "nvidia-smi", engines=("docker",), VLM_IMAGE_KIND="gpu")
    args = run_args(proc)
    assert args[args.index("--gpus") + 1] == "all" and "vlm-recipe:gpu" in args


def test_a_missing_image_is_built_first_and_says_so(tmp_path):
    proc = call(tmp_path, "true", image_exists=False, VLM_IMAGE_KIND="cpu")
    assert "image vlm-recipe:cpu not found; building it" in proc.stderr
    args = run_args(proc)
    build = args[: args.index("run")]
    assert build[0] == "build" and not any(a.startswith("BASE=") for a in build)  # the Containerfile's base


def test_a_base_image_of_ones_own_is_passed_to_the_build(tmp_path):
    proc = call(tmp_path, "true", image_exists=False, VLM_IMAGE_KIND="gpu", VLM_BASE_IMAGE="localhost/mybase:1")
    args = run_args(proc)
    build = args[: args.index("run")]
    assert build[build.index("--build-arg") + 1] == "BASE=localhost/mybase:1" and "vlm-recipe:gpu" in build


def test_the_recipe_installs_the_locked_dependencies_before_the_code():
    recipe = (ROOT / "containers/Containerfile").read_text()
    code = "\n".join(line for line in recipe.splitlines() if not line.lstrip().startswith("#"))
    assert "torch" not in code and "mosaicml" not in code  # no second dependency list
    steps = ("COPY requirements.lock", "pip install --no-cache-dir --require-hashes -r", "COPY vlm")
    order = [code.index(step) for step in steps]
    assert order == sorted(order)  # a code change does not reinstall the dependencies
    assert "--no-deps" in code and "pip check" in code  # the project adds nothing unlocked
    assert "USER vlm" in recipe
    base = re.search(r"^ARG BASE=(\S+)$", code, re.M).group(1)
    assert re.fullmatch(r"\S+:3\.11-\S+@sha256:[0-9a-f]{64}", base), base  # by digest, the lock's Python
    assert (ROOT / ".containerignore").read_text() == (ROOT / ".dockerignore").read_text()
    ignored = (ROOT / ".containerignore").read_text().split()
    assert {".venv", "data", ".dvc/cache"} <= set(ignored)


def test_collective_settings_slurm_variables_and_data_folders_reach_the_container(tmp_path):
    data = tmp_path / "datasets"
    data.mkdir()
    proc = call(tmp_path, "true", NCCL_SOCKET_IFNAME="ib0", GLOO_SOCKET_IFNAME="eth0", SLURM_JOB_ID="42",
                TORCH_DISTRIBUTED_DEBUG="INFO", VLM_MOUNTS=str(data), VLM_IMAGE_KIND="cpu")
    assert proc.returncode == 0, proc.stderr
    args = run_args(proc)
    env = [args[i + 1] for i, a in enumerate(args) if a == "-e"]
    assert {"NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME", "SLURM_JOB_ID", "TORCH_DISTRIBUTED_DEBUG"} <= set(env)
    assert f"{data}:{data}" in args
    (tmp_path / "again").mkdir()
    proc = call(tmp_path / "again", "true", VLM_MOUNTS="relative/data", VLM_IMAGE_KIND="cpu")
    assert proc.returncode == 1 and "VLM_MOUNTS: relative/data is not an absolute path" in proc.stderr


@pytest.mark.parametrize("nproc", ["8", "auto"])
def test_the_slurm_job_starts_node_0_through_dvc_and_the_others_with_the_stages_command(tmp_path, nproc):
    """containers/slurm.sbatch as SLURM runs it, with `srun` and `scontrol` standing in: one task per
    node (SLURM_NODEID 0 and 1), each through containers/run (a fake engine that prints its arguments).
    `train.nproc: auto` counts the node's GPUs as SLURM gave them (SLURM_GPUS_ON_NODE)."""
    repo = tmp_path / "repo"
    (repo / "containers").mkdir(parents=True)
    for name in ("run", "slurm.sbatch", "slurm-node"):
        shutil.copy2(ROOT / "containers" / name, repo / "containers" / name)
    (repo / "params.yaml").write_text(f"train:\n  nproc: {nproc}  # GPUs per node\n  microbatch_size: 0\n"
                                      "resume: {}\n")
    bin_dir = fake_bin(tmp_path)
    for tool in ("head", "sed", "sleep", "pwd"):
        os.symlink(shutil.which(tool), bin_dir / tool)
    # The second host comes after a pause, so a reader that stops at the first line (head) has closed the
    # pipe by then: under pipefail that SIGPIPE would fail the job (exit 141), as it once did in CI.
    (bin_dir / "scontrol").write_text(f"#!{shutil.which('bash')}\necho gpu-a; sleep 0.3; echo gpu-b\n")
    (bin_dir / "srun").write_text(f"#!{shutil.which('bash')}\n"  # the step's command on each of 2 nodes
                                  'shift; for n in 0 1; do echo "NODE $n"; SLURM_NODEID=$n "$@" || exit; done\n')
    for tool in ("scontrol", "srun"):
        (bin_dir / tool).chmod(0o755)
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path), "SLURM_JOB_NODELIST": "gpu-[a-b]", "SLURM_NNODES": "2",
           "SLURM_SUBMIT_DIR": str(repo), "NCCL_SOCKET_IFNAME": "ib0", "VLM_IMAGE_KIND": "gpu",
           "SLURM_GPUS_ON_NODE": "8"}
    proc = subprocess.run(["bash", str(repo / "containers/slurm.sbatch"), "text-pretrain"], cwd=tmp_path,
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    nodes = proc.stdout.split("NODE ")[1:]
    assert len(nodes) == 2
    for rank, out in enumerate(nodes):
        args = run_args(subprocess.CompletedProcess([], 0, out, ""))
        env_names = [args[i + 1] for i, a in enumerate(args) if a == "-e"]
        assert {"WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "NCCL_SOCKET_IFNAME"} <= set(env_names)
        assert args[args.index("vlm-recipe:gpu") - 2:args.index("vlm-recipe:gpu")] == ["--network", "host"]
        command = args[args.index("vlm-recipe:gpu") + 1:]
        assert command == (["dvc", "repro", "--single-item", "--force", "text-pretrain"] if rank == 0 else
                           ["python", "-m", "pipeline", "text-pretrain"])
        assert f"node {rank} of 2, 8 processes each (16 in all), rendezvous gpu-a:29500" in out


@pytest.mark.parametrize("script", ["containers/run", "containers/test-image", "containers/slurm.sbatch",
                                    "containers/slurm-node"])
def test_scripts_are_executable_bash(script):
    path = ROOT / script
    assert os.access(path, os.X_OK)
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
