"""setup.py: the package a remote Beam runner builds (sdist) and installs on its workers."""
import pathlib
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile

REPO = pathlib.Path(__file__).resolve().parents[1]


def _build(tmp_path, command):
  """Runs `setup.py <command>` in a copy of the files it reads; returns the built archive."""
  src = tmp_path / "src"
  for package in ("data_gen", "editseq"):
    shutil.copytree(REPO / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
  for name in ("setup.py", "requirements.txt"):
    shutil.copy(REPO / name, src / name)
  subprocess.run([sys.executable, "setup.py", "-q", command, "--dist-dir", str(tmp_path / "dist")],
                 cwd=src, check=True, capture_output=True)
  (archive,) = (tmp_path / "dist").iterdir()
  return archive


def _worker_pins():
  pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", (REPO / "requirements.txt").read_text(),
                         re.M))
  return sorted(f"{n}=={pins[n]}" for n in (
      "pyflakes", "tensorflow", "tensorflow-datasets", "seqio", "tokenizers", "sentencepiece",
      "absl-py", "ml_collections", "tqdm"))


def test_sdist_holds_the_pipeline_and_its_pinned_worker_requirements(tmp_path):
  archive = _build(tmp_path, "sdist")
  with tarfile.open(archive) as tar:
    names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    requires = next(tar.extractfile(m).read().decode() for m in tar.getmembers()
                    if m.name.endswith("requires.txt"))
  for package in ("data_gen", "editseq"):
    assert {f"{package}/{p.name}" for p in (REPO / package).glob("*.py")} <= names
  assert sorted(requires.split()) == _worker_pins()


def test_wheel_installs_the_beam_jobs_packages_only(tmp_path):
  with zipfile.ZipFile(_build(tmp_path, "bdist_wheel")) as wheel:
    packages = {n.split("/")[0] for n in wheel.namelist() if not n.split("/")[0].endswith(
        ".dist-info")}
    metadata = next(wheel.read(n).decode() for n in wheel.namelist() if n.endswith("METADATA"))
  assert packages == {"data_gen", "editseq"}
  assert sorted(re.findall(r"^Requires-Dist: (\S+)", metadata, re.M)) == _worker_pins()


def test_the_installed_packages_need_nothing_from_the_checkout(tmp_path):
  """What the packages import of the config (its defaults, their checks, a pretrained model's
  config) is inside them: the wheel, unpacked away from the checkout, runs them without the
  repository's `configs` folder."""
  site = tmp_path / "site"
  with zipfile.ZipFile(_build(tmp_path, "bdist_wheel")) as wheel:
    wheel.extractall(site)
  script = (
      "import sys\n"
      f"sys.path.insert(0, {str(site)!r})\n"
      "from editseq import cli, config_sections, config_validation, pretrained\n"
      f"assert config_validation.__file__.startswith({str(site)!r}), config_validation.__file__\n"
      "config = config_sections.default_config()\n"
      "config.model.update(vocab_size=256, d_model=64, num_layers=2, num_heads=4, mlp_dim=128,\n"
      "                    max_seq_len=128)\n"
      "config.data.update(seq_len=128, global_batch_size=8)\n"
      "config_validation.validate_step(config)\n"
      "try:\n"
      "  import configs\n"
      "except ModuleNotFoundError:\n"
      "  print('ok')\n")
  result = subprocess.run([sys.executable, "-P", "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0 and result.stdout.split() == ["ok"], result.stderr[-3000:]
