"""The launch recipes in experiments/launch: their dry runs print the commands a pod or cluster
would run (checked word by word), their real runs call the same commands (gcloud, srun,
kubectl replaced by stubs that record their arguments), and the JobSet renders to a manifest
with the slice's shape. Nothing here needs a network, gcloud, SLURM or a cluster."""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
LAUNCH = ROOT / "experiments" / "launch"
TOOLS = ("gcloud", "gsutil", "kubectl", "sbatch", "srun", "scontrol", "ssh", "scp")


def setup_cfg_jax() -> str:
    """The repository's JAX version: setup.cfg's `jax>=X` floor."""
    match = re.search(r"^\s*jax>=([0-9][0-9.]*)", (ROOT / "setup.cfg").read_text(), re.M)
    assert match, "setup.cfg has no jax>=X requirement"
    return match.group(1)


JAX = setup_cfg_jax()


@pytest.fixture
def sandbox(tmp_path):
    """A PATH whose cluster tools are stubs: each records its arguments and exits with
    $STUB_RC_<TOOL> (default 0) when its arguments contain $STUB_MATCH, else 0; kubectl also
    keeps its stdin; `scontrol show hostnames` prints $STUB_HOSTS."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in TOOLS:
        script = bin_dir / tool
        script.write_text(f"""#!/usr/bin/env bash
printf '%s\\0' {tool} "$@" >> "$STUB_LOG"; printf '\\036' >> "$STUB_LOG"
if [ {tool} = kubectl ]; then cat > "$STUB_LOG.stdin"; fi
if [ {tool} = scontrol ] && [ "${{1:-}}" = show ]; then printf '%s\\n' $STUB_HOSTS; fi
case "$*" in *"${{STUB_MATCH:-}}"*) exit "${{STUB_RC_{tool.upper()}:-0}}" ;; esac
""")
        script.chmod(0o755)

    class Sandbox:
        log = tmp_path / "stub.log"
        tmp = tmp_path

        def run(self, script: str, *args: str, env: dict | None = None, check_rc=0):
            base = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": str(tmp_path),
                    "TMPDIR": str(tmp_path), "STUB_LOG": str(self.log)}
            proc = subprocess.run(["bash", str(LAUNCH / script), *args], env=base | (env or {}),
                                  capture_output=True, text=True, timeout=60)
            if check_rc is not None:
                assert proc.returncode == check_rc, proc.stderr + proc.stdout
            return proc

        def calls(self) -> list[list[str]]:
            if not self.log.exists():
                return []
            records = self.log.read_bytes().decode().split("\x1e")
            return [r.split("\0")[:-1] for r in records if r]

    return Sandbox()


def commands(stdout: str) -> list[list[str]]:
    """The dry run's commands (its `#` lines are notes), each as the words bash reads."""
    return [shlex.split(line) for line in stdout.splitlines()
            if line.strip() and not line.startswith("#")]


def notes(stdout: str) -> str:
    return "\n".join(line for line in stdout.splitlines() if line.startswith("#"))


def option(words: list[str], name: str) -> str:
    values = [w.split("=", 1)[1] for w in words if w.startswith(f"--{name}=")]
    assert len(values) == 1, (name, words)
    return values[0]


# --- common.sh --------------------------------------------------------------------------------

def test_common_pins_the_setup_cfg_jax_per_accelerator():
    out = subprocess.run(
        ["bash", "-c", f"source {LAUNCH}/common.sh && echo $JAX_VERSION && "
         "jax_requirement tpu && jax_requirement cuda12 && jax_requirement cpu && "
         "install_command cuda12 python3 /v /code gcsfs"],
        capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[:4] == [JAX, f"jax[tpu]=={JAX}", f"jax[cuda12]=={JAX}", f"jax=={JAX}"]
    install = shlex.split(out[4])
    assert install[:3] == ["python3", "-m", "venv"]
    assert install[-4:] == ["-e", "/code", f"jax[cuda12]=={JAX}", "gcsfs"]


def test_tpu_shapes():
    cases = {  # type: chips hosts chips/host topology gke-label runtime
        "v5p-8": "4 1 4 2x2x1 tpu-v5p-slice v2-alpha-tpuv5",
        "v5p-16": "8 2 4 2x2x2 tpu-v5p-slice v2-alpha-tpuv5",
        "v5p-64": "32 8 4 2x4x4 tpu-v5p-slice v2-alpha-tpuv5",
        "v5p-128": "64 16 4 4x4x4 tpu-v5p-slice v2-alpha-tpuv5",
        "v4-32": "16 4 4 2x2x4 tpu-v4-podslice tpu-ubuntu2204-base",
        "v5litepod-8": "8 1 8 2x4 tpu-v5-lite-podslice v2-alpha-tpuv5-lite",
        "v6e-16": "16 4 4 4x4 tpu-v6e-slice v2-alpha-tpuv6e",
        "v6e-256": "256 64 4 16x16 tpu-v6e-slice v2-alpha-tpuv6e",
    }
    script = f"source {LAUNCH}/common.sh\n" + "".join(
        f"tpu_shape {acc} && echo $TPU_CHIPS $TPU_HOSTS $TPU_CHIPS_PER_HOST $TPU_TOPOLOGY "
        "$TPU_GKE_ACCELERATOR $TPU_RUNTIME\n" for acc in cases)
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    assert dict(zip(cases, out.stdout.splitlines())) == cases


# --- TPU VM -----------------------------------------------------------------------------------

TPU_ARGS = ("--name=omni", "--zone=us-east5-a", "--accelerator=v5p-64",
            "--workdir=gs://bucket/omni", "--config=qwen2_0_5b", "--stage=all")


def gcloud_tpu(cmd: list[str]) -> tuple[str, str]:
    """(verb, worker) of a `gcloud compute tpus tpu-vm ...` command."""
    assert cmd[:4] == ["gcloud", "compute", "tpus", "tpu-vm"], cmd
    worker = [w for w in cmd if w.startswith("--worker=")]
    return cmd[4], worker[0].split("=", 1)[1] if worker else ""


def test_tpu_vm_dry_run_v5p_64(sandbox):
    proc = sandbox.run("tpu_vm.sh", "--dry_run", *TPU_ARGS)
    assert sandbox.calls() == []  # ran nothing
    assert "32 chips on 8 workers x 4 chips" in notes(proc.stdout)
    cmds = commands(proc.stdout)
    create, tar, scp, unpack, install, prepare, train = cmds
    assert create == ["gcloud", "compute", "tpus", "tpu-vm", "create", "omni", "--zone=us-east5-a",
                      "--accelerator-type=v5p-64", "--version=v2-alpha-tpuv5"]
    assert tar[:2] == ["bash", "-c"] and "git ls-files" in tar[2]
    assert gcloud_tpu(scp) == ("scp", "all") and gcloud_tpu(unpack) == ("ssh", "all")
    # The venv on every worker, JAX pinned to setup.cfg's version.
    assert gcloud_tpu(install) == ("ssh", "all")
    install_words = shlex.split(option(install, "command"))
    assert f"jax[tpu]=={JAX}" in install_words and "gcsfs" in install_words
    # Data once, on one worker, on the CPU.
    assert gcloud_tpu(prepare) == ("ssh", "0")
    words = shlex.split(option(prepare, "command"))
    assert "JAX_PLATFORMS=cpu" in words
    i = words.index("experiments/prepare.py")
    assert words[i + 1:] == ["--stage=all", "--config=qwen2_0_5b", "--workdir=gs://bucket/omni"]
    # Training on every worker, one command for all.
    assert gcloud_tpu(train) == ("ssh", "all")
    words = shlex.split(option(train, "command"))
    i = words.index("experiments/run.py")
    assert words[i + 1:] == ["--stage=all", "--config=qwen2_0_5b", "--workdir=gs://bucket/omni",
                             "--distributed"]
    assert sum("experiments/prepare.py" in " ".join(c) for c in cmds) == 1


def test_tpu_vm_env_settings_and_phases(sandbox):
    env = {"DRY_RUN": "1", "NAME": "n", "ZONE": "europe-west4-b", "ACCELERATOR": "v6e-16",
           "WORKDIR": "gs://b/w", "CONFIG": "qwen2_1_5b", "STAGE": "duplex_3",
           "PHASES": "prepare,train", "EXTRA_ARGS": "--steps=7"}
    proc = sandbox.run("tpu_vm.sh", "--set=train.batch_size=64", env=env)
    assert sandbox.calls() == []
    assert "16 chips on 4 workers x 4 chips" in notes(proc.stdout)
    prepare, train = commands(proc.stdout)
    assert "--zone=europe-west4-b" in train and gcloud_tpu(train) == ("ssh", "all")
    words = shlex.split(option(prepare, "command"))
    assert words[words.index("experiments/prepare.py") + 1:] == [
        "--stage=dialogue", "--config=qwen2_1_5b", "--workdir=gs://b/w",
        "--set=train.batch_size=64"]
    words = shlex.split(option(train, "command"))
    assert words[words.index("experiments/run.py") + 1:] == [
        "--stage=duplex_3", "--config=qwen2_1_5b", "--workdir=gs://b/w",
        "--set=train.batch_size=64", "--distributed", "--steps=7"]


def test_tpu_vm_multislice(sandbox):
    proc = sandbox.run("tpu_vm.sh", "--dry_run", *TPU_ARGS, "--slices=2")
    assert sandbox.calls() == []
    assert "16 workers in all" in notes(proc.stdout)
    cmds = commands(proc.stdout)
    create = cmds[0]
    assert create[:5] == ["gcloud", "compute", "tpus", "queued-resources", "create"]
    assert option(create, "node-count") == "2" and option(create, "node-prefix") == "omni"
    trains = [c for c in cmds if "experiments/run.py" in " ".join(c)]
    assert [c[5] for c in trains] == ["omni-0", "omni-1"]
    for train in trains:
        assert gcloud_tpu(train) == ("ssh", "all")
        assert "--set=mesh.slices=2" in shlex.split(option(train, "command"))
    prepares = [c for c in cmds if "experiments/prepare.py" in " ".join(c)]
    assert len(prepares) == 1 and prepares[0][5] == "omni-0"
    installs = [c for c in cmds if f"jax[tpu]=={JAX}" in " ".join(c)]
    assert [c[5] for c in installs] == ["omni-0", "omni-1"]


def test_tpu_vm_real_run_calls_what_the_dry_run_prints(sandbox):
    tarball = sandbox.tmp / "code.tgz"
    dry = sandbox.run("tpu_vm.sh", "--dry_run", *TPU_ARGS, env={"TARBALL": str(tarball)})
    sandbox.run("tpu_vm.sh", *TPU_ARGS, env={"TARBALL": str(tarball)})
    printed = [c for c in commands(dry.stdout) if c[0] == "gcloud"]
    assert sandbox.calls() == printed
    listing = subprocess.run(["tar", "-tzf", str(tarball)], capture_output=True, text=True,
                             check=True).stdout.split()
    assert "experiments/launch/common.sh" in listing and "setup.cfg" in listing
    assert not any(name.startswith(".venv/") for name in listing)


def test_tpu_vm_refuses_bad_settings(sandbox):
    assert "--workdir" in sandbox.run("tpu_vm.sh", "--dry_run", check_rc=2).stderr
    assert "unknown option" in sandbox.run("tpu_vm.sh", "--dry_run", *TPU_ARGS, "--bogus",
                                           check_rc=2).stderr
    assert sandbox.calls() == []


# --- SLURM ------------------------------------------------------------------------------------

def srun_parts(cmd: list[str]) -> tuple[list[str], list[str]]:
    """An `srun ... bash -c SCRIPT` command: (srun's options, the script's words)."""
    assert cmd[0] == "srun"
    i = cmd.index("bash")
    assert cmd[i + 1] == "-c" and len(cmd) == i + 3
    return cmd[1:i], shlex.split(cmd[i + 2])


def test_slurm_dry_run_4_nodes_x_8_gpus(sandbox):
    venv = sandbox.tmp / "venv"
    proc = sandbox.run("slurm_gpu.sh", "--dry_run", "--nodes=4", "--gpus_per_node=8",
                       "--workdir=/lustre/omni", "--config=qwen2_1_5b", "--stage=alignment",
                       env={"VENV": str(venv)})
    assert sandbox.calls() == []
    assert "4 nodes x 8 GPUs, mode per_node: 4 tasks" in notes(proc.stdout)
    install, prepare, train = commands(proc.stdout)
    assert install[:2] == ["bash", "-c"]
    assert f"jax[cuda12]=={JAX}" in shlex.split(install[2])
    # prepare: one task
    assert prepare[:3] == ["srun", "--nodes=1", "--ntasks=1"]
    assert "--export=ALL,JAX_PLATFORMS=cpu" in prepare
    i = prepare.index("experiments/prepare.py")
    assert prepare[i - 1:] == [f"{venv}/bin/python", "experiments/prepare.py",
                               "--stage=alignment", "--config=qwen2_1_5b",
                               "--workdir=/lustre/omni"]
    # train: one process per node owning its 8 GPUs
    opts, script = srun_parts(train)
    assert {"--nodes=4", "--ntasks=4", "--ntasks-per-node=1", "--gpus-per-node=8"} <= set(opts)
    assert script[:2] == ["export", "JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7;"]
    i = script.index("experiments/run.py")
    assert script[i - 2:i] == ["exec", f"{venv}/bin/python"]
    assert script[i + 1:] == ["--stage=alignment", "--config=qwen2_1_5b", "--workdir=/lustre/omni",
                              "--distributed", "--coordinator_address=node1:61440",
                              "--num_processes=4", "--process_id=$SLURM_PROCID"]


def slurm_env(**extra) -> dict:
    return {"SLURM_JOB_ID": "123456", "SLURM_JOB_NUM_NODES": "4", "SLURM_GPUS_ON_NODE": "8",
            "SLURM_JOB_NODELIST": "gpu[003-006]"} | extra


def test_slurm_per_gpu_mode_from_the_allocation(sandbox, monkeypatch):
    venv = sandbox.tmp / "venv"
    env = slurm_env(SLURM_NTASKS_PER_NODE="8", DRY_RUN="1", VENV=str(venv))
    proc = sandbox.run("slurm_gpu.sh", "--workdir=/shared/w", env=env)
    assert sandbox.calls() == []
    assert "mode per_gpu: 32 tasks (8 per node, 1 GPU(s) each)" in notes(proc.stdout)
    train = commands(proc.stdout)[-1]
    opts, script = srun_parts(train)
    assert {"--nodes=4", "--ntasks=32", "--ntasks-per-node=8", "--gpu-bind=none"} <= set(opts)
    port = 61440 + 123456 % 4096
    assert f"--coordinator_address=gpu003:{port}" in script
    assert "--num_processes=32" in script
    # The same coordinator as JAX's own SLURM detection would pick.
    try:
        from jax._src.clusters.slurm_cluster import SlurmCluster
    except ImportError:
        pass
    else:
        monkeypatch.setenv("SLURM_JOB_ID", "123456")
        monkeypatch.setenv("SLURM_STEP_NODELIST", "gpu[003-006]")
        monkeypatch.delenv("JAX_COORDINATOR_PORT", raising=False)
        assert SlurmCluster.get_coordinator_address(None, None) == f"gpu003:{port}"
    # The printed task command runs: each task gets its own process id and GPU.
    (venv / "bin").mkdir(parents=True)
    fake = venv / "bin" / "python"
    fake.write_text('#!/usr/bin/env bash\necho "GPU=$JAX_LOCAL_DEVICE_IDS ARGS=$*"\n')
    fake.chmod(0o755)
    out = subprocess.run(train[train.index("bash"):], capture_output=True, text=True, check=True,
                         cwd=ROOT, env={"PATH": os.environ["PATH"], "SLURM_PROCID": "13",
                                        "SLURM_LOCALID": "5"}).stdout
    assert out.startswith("GPU=5 ARGS=experiments/run.py --stage=all ")
    assert out.rstrip().endswith("--num_processes=32 --process_id=13")


def test_slurm_real_run_requeues_on_preemption(sandbox):
    venv = sandbox.tmp / "venv"
    venv.mkdir()
    # A venv installed for this pin and setup.cfg: the install step is skipped.
    digest = hashlib.sha256((ROOT / "setup.cfg").read_bytes()).hexdigest()
    (venv / ".omniflatten-installed").write_text(f"jax[cuda12]=={JAX} {digest}\n")
    env = slurm_env(SLURM_NTASKS_PER_NODE="1", SLURM_SUBMIT_DIR=str(ROOT), VENV=str(venv),
                    STUB_HOSTS="gpu003 gpu004 gpu005 gpu006")
    dry = sandbox.run("slurm_gpu.sh", "--workdir=/shared/w", env=env | {"DRY_RUN": "1"})
    assert "up to date" in notes(dry.stdout)
    sandbox.run("slurm_gpu.sh", "--workdir=/shared/w", check_rc=143,
                env=env | {"STUB_RC_SRUN": "143", "STUB_MATCH": "run.py"})
    calls = sandbox.calls()
    assert calls[0][:2] == ["scontrol", "show"]  # the first node, from SLURM itself
    srun_calls = [c for c in calls if c[0] == "srun"]
    assert srun_calls == [c for c in commands(dry.stdout) if c[0] == "srun"]
    assert calls[-1] == ["scontrol", "requeue", "123456"]


def test_slurm_outside_a_job_needs_dry_run(sandbox):
    assert "sbatch" in sandbox.run("slurm_gpu.sh", check_rc=2).stderr
    assert "tasks per node" in sandbox.run("slurm_gpu.sh", "--dry_run", "--ntasks_per_node=3",
                                           check_rc=2).stderr
    assert sandbox.calls() == []


# --- JobSet -----------------------------------------------------------------------------------

JOBSET_ARGS = ("--workdir=gs://bucket/omni", "--config=qwen2_0_5b", "--stage=all",
               "--repo_url=https://example.com/omniflatten-jax.git", "--repo_ref=abc123")


def jobs(manifest: str) -> dict:
    doc = yaml.safe_load(manifest)
    assert doc["apiVersion"] == "jobset.x-k8s.io/v1alpha2" and doc["kind"] == "JobSet"
    return {job["name"]: job for job in doc["spec"]["replicatedJobs"]}


def container(job: dict) -> dict:
    (c,) = job["template"]["spec"]["template"]["spec"]["containers"]
    return c


def script_lines(job: dict) -> list[str]:
    c = container(job)
    assert c["command"] == ["bash", "-c"]
    (script,) = c["args"]
    subprocess.run(["bash", "-n", "-c", script], check=True)  # valid shell
    return script.splitlines()


def test_jobset_v5p_64(sandbox):
    proc = sandbox.run("jobset.sh", *JOBSET_ARGS)
    assert sandbox.calls() == []
    assert "${" not in proc.stdout
    head, first = proc.stdout.splitlines()[:2]
    assert head.endswith(f"1 slice(s) x 8 hosts x 4 chips (2x4x4); jax[tpu]=={JAX}")
    assert first.startswith("apiVersion:")
    spec = jobs(proc.stdout)
    assert list(spec) == ["prepare", "slice"]
    prepare, slice_ = spec["prepare"], spec["slice"]
    # prepare: one pod, once, before the slice starts
    assert prepare["replicas"] == 1
    assert prepare["template"]["spec"]["parallelism"] == 1
    assert slice_["dependsOn"] == [{"name": "prepare", "status": "Complete"}]
    lines = script_lines(prepare)
    assert "google.com/tpu" not in str(container(prepare))
    assert lines[-1] == ("exec /app/.venv/bin/python experiments/prepare.py --stage=all "
                         "--config=qwen2_0_5b --workdir=gs://bucket/omni")
    # slice: v5p-64 = 32 chips = 8 hosts x 4 chips
    job = slice_["template"]["spec"]
    assert slice_["replicas"] == 1
    assert job["parallelism"] == job["completions"] == 8
    pod = job["template"]["spec"]
    assert pod["nodeSelector"] == {"cloud.google.com/gke-tpu-accelerator": "tpu-v5p-slice",
                                   "cloud.google.com/gke-tpu-topology": "2x4x4"}
    assert container(slice_)["resources"]["limits"] == {"google.com/tpu": 4}
    lines = script_lines(slice_)
    assert any(line.startswith("git clone") and "https://example.com/omniflatten-jax.git" in line
               and "checkout --quiet abc123" in line for line in lines)
    install = [line for line in lines if "/bin/pip" in line]
    assert len(install) == 1 and f'"jax[tpu]=={JAX}"' in install[0]
    assert lines[-1] == ("exec /app/.venv/bin/python experiments/run.py --stage=all "
                         "--config=qwen2_0_5b --workdir=gs://bucket/omni --distributed")


def test_jobset_multislice(sandbox):
    proc = sandbox.run("jobset.sh", *JOBSET_ARGS, "--accelerator=v5p-128", "--slices=2",
                       "--", "--steps=9")
    slice_ = jobs(proc.stdout)["slice"]
    assert slice_["replicas"] == 2
    assert slice_["template"]["spec"]["parallelism"] == 16
    pod = slice_["template"]["spec"]["template"]["spec"]
    assert pod["nodeSelector"]["cloud.google.com/gke-tpu-topology"] == "4x4x4"
    assert script_lines(slice_)[-1].endswith("--distributed --set=mesh.slices=2 --steps=9")


def test_jobset_apply(sandbox):
    printed = sandbox.run("jobset.sh", *JOBSET_ARGS).stdout
    dry = sandbox.run("jobset.sh", *JOBSET_ARGS, "--apply", env={"DRY_RUN": "1"})
    assert dry.stdout == printed and sandbox.calls() == []
    sandbox.run("jobset.sh", *JOBSET_ARGS, "--apply")
    assert sandbox.calls() == [["kubectl", "apply", "-f", "-"]]
    assert Path(f"{sandbox.log}.stdin").read_text() == printed
