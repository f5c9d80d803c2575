"""TPU VM and GPU launch scripts: shellcheck, --help, bad flags, and the commands --dry-run prints."""
import re
import shlex
import shutil
import subprocess

import pytest

from tests.conftest import REPO_ROOT

TPU = REPO_ROOT / "scripts" / "tpu" / "tpu_vm.sh"
GPU = REPO_ROOT / "scripts" / "gpu" / "gpu_launch.sh"
INSTALL = REPO_ROOT / "scripts" / "tpu" / "install_host.sh"
SCRIPTS = sorted([*(REPO_ROOT / "scripts" / "tpu").glob("*.sh"),
                  *(REPO_ROOT / "scripts" / "gpu").glob("*.sh")])


def _run(script, *args):
  return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, timeout=60,
                        cwd=REPO_ROOT)


def _dry_run(script, command, *args) -> list[list[str]]:
  """The printed commands, each split back into its arguments as a shell would."""
  result = _run(script, command, "--dry-run", *args)
  assert result.returncode == 0, result.stderr
  return [shlex.split(line) for line in result.stdout.splitlines()]


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_shellcheck_clean():
  result = subprocess.run(["shellcheck", "-x", *map(str, SCRIPTS)], capture_output=True,
                          text=True, cwd=REPO_ROOT)
  assert result.returncode == 0, result.stdout


COMMON = REPO_ROOT / "scripts" / "tpu" / "common.sh"


@pytest.mark.parametrize("script", [s for s in SCRIPTS if s != COMMON], ids=lambda p: p.name)
def test_strict_mode(script):
  assert "set -euo pipefail" in script.read_text()


def test_common_sh_runs_under_the_strict_mode_of_the_scripts_that_source_it():
  """common.sh is sourced, never run: each script that sources it sets the strict mode first,
  and sourcing it under that mode defines its functions without failing."""
  sourcing = [s for s in SCRIPTS if "common.sh" in s.read_text() and s != COMMON]
  assert {s.name for s in sourcing} >= {"tpu_vm.sh", "gpu_launch.sh"}
  for script in sourcing:
    text = script.read_text()
    assert text.index("set -euo pipefail") < text.index('common.sh"\n'), script.name
  functions = re.findall(r"^([A-Za-z_][A-Za-z0-9_]*)\(\)", COMMON.read_text(), re.M)
  assert functions
  result = subprocess.run(["bash", "-c", f'set -euo pipefail; source "{COMMON}"; '
                           f'declare -F {" ".join(functions)}'], capture_output=True, text=True,
                          timeout=60, cwd=REPO_ROOT)
  assert result.returncode == 0, result.stderr
  assert result.stdout.split() == functions


@pytest.mark.parametrize("script", [TPU, GPU, INSTALL, REPO_ROOT / "scripts" / "gpu" / "mfu_sweep.sh"],
                         ids=lambda p: p.name)
def test_help(script):
  result = _run(script, "--help")
  assert result.returncode == 0
  assert result.stdout.startswith("usage:")


@pytest.mark.parametrize("script, args, message", [
    (TPU, ["create", "--zone", "z", "--type", "v4-8"], "--name is required"),
    (TPU, ["create", "--name", "n", "--zone", "z"], "create needs --type"),
    (TPU, ["create", "--name", "n", "--zone", "z", "--type", "v9-8"], "unknown --type 'v9-8'"),
    (TPU, ["train", "--name", "n", "--zone", "z", "--config", "c.py"], "train needs --workdir"),
    (TPU, ["launch", "--name", "n"], "unknown command 'launch'"),
    (TPU, ["logs", "--name", "n", "--zone", "z", "--bogus"], "unknown flag '--bogus'"),
    (TPU, ["logs", "--name", "n", "--zone", "z", "--slice", "2"], "--slice must be in [0, 1)"),
    (GPU, ["train", "--hosts", "localhost,b", "--config", "c", "--workdir", "w"], "only works alone"),
    (GPU, ["install", "--cuda", "cuda11"], "--cuda must be cuda12 or cuda13"),
    (INSTALL, ["--accel", "rocm"], "--accel must be tpu, cuda12 or cuda13"),
])
def test_bad_arguments_give_one_line_error(script, args, message):
  result = _run(script, *args[:1], "--dry-run", *args[1:]) if script != INSTALL else _run(script, *args)
  assert result.returncode == 2
  assert message in result.stderr
  assert "Traceback" not in result.stderr and "line " not in result.stderr


def test_tpu_create_direct_and_queued():
  base = ["--name", "run1", "--zone", "us-central2-b", "--project", "proj"]
  [create] = _dry_run(TPU, "create", *base, "--type", "v4-32")
  assert create == ["gcloud", "compute", "tpus", "tpu-vm", "create", "run1",
                    "--zone=us-central2-b", "--project=proj", "--accelerator-type=v4-32",
                    "--version=tpu-ubuntu2204-base"]
  create, wait = _dry_run(TPU, "create", *base, "--type", "v5litepod-16", "--queued", "--spot")
  assert create[:6] == ["gcloud", "compute", "tpus", "queued-resources", "create", "run1"]
  assert {"--runtime-version=v2-alpha-tpuv5-lite", "--node-id=run1", "--spot"} <= set(create)
  assert wait[:6] == ["gcloud", "compute", "tpus", "queued-resources", "describe", "run1"]


def test_tpu_multislice_addresses_every_slice():
  base = ["--name", "ms", "--zone", "z", "--type", "v5p-16", "--num-slices", "2"]
  [create, _] = _dry_run(TPU, "create", *base)
  assert {"--node-count=2", "--node-prefix=ms", "--runtime-version=v2-alpha-tpuv5"} <= set(create)
  launches = _dry_run(TPU, "train", *base, "--config", "configs/x.py", "--workdir", "gs://b/ms",
                      "--", "--config.mesh.dcn_data=2")
  assert [cmd[5] for cmd in launches] == ["ms-0", "ms-1"]
  for cmd in launches:
    assert "--worker=all" in cmd
    assert "--config.mesh.dcn_data=2" in cmd[-1].removeprefix("--command=")
  [delete] = _dry_run(TPU, "delete", *base)
  assert delete == ["gcloud", "compute", "tpus", "queued-resources", "delete", "ms", "--zone=z",
                    "--force", "--quiet"]


def test_tpu_install_and_train_run_on_all_workers():
  base = ["--name", "run1", "--zone", "z"]
  pack, scp, install = _dry_run(TPU, "install", *base)
  assert "git" in pack and "tar" in pack
  assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and "--worker=all" in scp
  assert install[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "run1"]
  assert "--worker=all" in install
  assert "scripts/tpu/install_host.sh --accel tpu" in install[-1]

  [train] = _dry_run(TPU, "train", *base, "--config", "configs/tinycodelm_150m.py",
                     "--workdir", "gs://bucket/run1", "--", "--config.train.steps=100",
                     "--config.data.task=a b")
  assert "--worker=all" in train
  remote = shlex.split(train[-1].removeprefix("--command="))
  python = remote.index(".venv/bin/python")
  assert remote[python:python + 7] == [
      ".venv/bin/python", "-m", "editseq.train", "--config=configs/tinycodelm_150m.py",
      "--workdir=gs://bucket/run1", "--config.train.steps=100", "--config.data.task=a b"]

  [logs] = _dry_run(TPU, "logs", *base, "--worker", "1")
  assert "--worker=1" in logs and "tail" in logs[-1]
  [delete] = _dry_run(TPU, "delete", *base)
  assert delete == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "run1", "--zone=z", "--quiet"]


def test_gpu_multi_host_gives_each_host_its_process_id():
  launches = _dry_run(GPU, "train", "--hosts", "gpu-a,gpu-b,gpu-c", "--ssh-user", "me",
                      "--port", "1234", "--config", "configs/tinycodelm_150m.py",
                      "--workdir", "/nfs/run", "--", "--config.train.steps=7")
  assert [cmd[:2] for cmd in launches] == [["ssh", "me@gpu-a"], ["ssh", "me@gpu-b"],
                                           ["ssh", "me@gpu-c"]]
  for i, cmd in enumerate(launches):
    remote = shlex.split(cmd[2])
    assert "--coordinator_address=gpu-a:1234" in remote
    assert "--num_processes=3" in remote and f"--process_id={i}" in remote
    assert "--config.train.steps=7" in remote


def test_gpu_single_host_runs_locally_without_distributed_flags():
  [install] = _dry_run(GPU, "install")
  assert install[:2] == ["bash", "-c"] and "install_host.sh --accel cuda12" in install[2]
  [train] = _dry_run(GPU, "train", "--config", "configs/test_tiny.py", "--workdir", "/tmp/w")
  assert train[:2] == ["bash", "-c"]
  assert "editseq.train --config=configs/test_tiny.py --workdir=/tmp/w" in train[2]
  assert "--coordinator_address" not in train[2]


def test_mfu_sweep_runs_the_benchmark_for_each_setting():
  result = subprocess.run(
      ["bash", str(REPO_ROOT / "scripts" / "gpu" / "mfu_sweep.sh"), "--dry-run", "--batches",
       "16 32", "--remats", "none full", "--seq-len", "2048"],
      capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
  assert result.returncode == 0, result.stderr
  runs = [shlex.split(line) for line in result.stdout.splitlines()]
  assert [(r[-2], r[-1]) for r in runs] == [
      ("--config.data.global_batch_size=16", "--config.train.remat=none"),
      ("--config.data.global_batch_size=32", "--config.train.remat=none"),
      ("--config.data.global_batch_size=16", "--config.train.remat=full"),
      ("--config.data.global_batch_size=32", "--config.train.remat=full")]
  for r in runs:
    assert r[1:4] == ["-m", "editseq.perf.bench_train", "--config=configs/tinycodelm_150m.py"]
    assert "--notorch" in r and "--config.data.seq_len=2048" in r


def test_mfu_sweep_tabulates_records_and_failures(tmp_path):
  """The sweep's table and best line, from a stand-in benchmark: batch 64 fails (as an out of
  memory would), the others print records, one with a profile."""
  fake = tmp_path / "python"
  fake.write_text(f"""#!/usr/bin/env bash
if [[ "$1 $2" == "-m editseq.perf.bench_train" ]]; then
  case "$*" in
    *global_batch_size=64*) echo "RESOURCE_EXHAUSTED" >&2; exit 1 ;;
    *global_batch_size=32*) echo '{{"jax_tokens_per_s": 2000.0, "jax_step_s": 16.384, "jax_mfu": 0.4, "remat": "none", "batch_size": 32, "num_devices": 1, "device_kind": "fake", "profile_busy_s_per_step": 9.0, "profile_span_s_per_step": 10.0}}' ;;
    *) echo '{{"jax_tokens_per_s": 1000.0, "jax_step_s": 16.384, "jax_mfu": 0.2, "remat": "none", "batch_size": 16, "num_devices": 1, "device_kind": "fake"}}' ;;
  esac
else
  exec {shutil.which("python3")} "$@"
fi
""")
  fake.chmod(0o755)
  out = tmp_path / "sweep.jsonl"
  result = subprocess.run(
      ["bash", str(REPO_ROOT / "scripts" / "gpu" / "mfu_sweep.sh"), "--batches", "16 32 64",
       "--remats", "none", "--out", str(out)],
      capture_output=True, text=True, timeout=60, cwd=REPO_ROOT, env={"PYTHON": str(fake),
                                                                     "PATH": "/usr/bin:/bin"})
  assert result.returncode == 0, result.stderr
  table = [line.split() for line in result.stdout.splitlines()]
  assert table[0] == ["remat", "batch", "tokens/s", "s/step", "MFU", "busy"]
  assert table[1] == ["none", "16", "1,000", "16.384", "20.0%"]
  assert table[2] == ["none", "32", "2,000", "16.384", "40.0%", "90.0%"]
  assert table[3] == ["none", "64", "failed"]
  assert result.stdout.splitlines()[-1] == (
      "best: remat=none batch=32: 2,000 tokens/s, MFU 40.0% on 1 x fake")
  assert len(out.read_text().splitlines()) == 3
