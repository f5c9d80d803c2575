"""Bad configs fail before any compile with one line that names the problem."""
import dataclasses
import importlib
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

import configs
from configs import base
from configs import test_tiny
from editseq import checkpointing
from editseq import config_sections
from editseq import config_validation
from editseq import model as model_lib
from editseq import packing
from editseq import sharding
from editseq import trainer
from tests.conftest import REPO_ROOT
from tests.test_model import _Device  # pylint: disable=protected-access


def _config(**overrides):
  config = test_tiny.get_config()
  for key, value in overrides.items():
    section, name = key.split(".")
    config[section][name] = value
  return config


def _error(config, workdir) -> str:
  with pytest.raises(config_validation.ConfigError) as error:
    config_validation.validate(config, str(workdir), jax.devices())
  message = str(error.value)
  assert "\n" not in message
  return message


def test_the_tiny_config_is_valid(tmp_path):
  config_validation.validate(_config(), str(tmp_path), jax.devices())


@pytest.mark.parametrize("overrides,expected", [
    ({"mesh.data": 3}, "needs 3 devices, have 8"),
    ({"mesh.data": -1, "mesh.fsdp": -1}, "at most one mesh axis may be -1"),
    ({"data.global_batch_size": 12}, "not divisible by the 8 batch shards"),
    ({"optimizer.grad_accum_steps": 3}, "not divisible by optimizer.grad_accum_steps 3"),
    ({"optimizer.grad_accum_steps": 4}, "microbatch (data.global_batch_size 8 / grad_accum_steps 4 = 2)"),
    ({"data.seq_len": 256}, "exceeds model.max_seq_len 128"),
    ({"mesh.data": 1, "mesh.tensor": 8}, "is not divisible by mesh axes ('tensor',)"),
    ({"train.loss_reduction": "avg"}, "train.loss_reduction must be one of"),
    ({"train.loss_chunk_size": -1}, "train.loss_chunk_size must be >= 0"),
    ({"optimizer.schedule": "step"}, "optimizer.schedule must be one of"),
    ({"train.steps": 0}, "train.steps must be >= 1"),
    ({"data.max_segments_per_row": 0}, "data.max_segments_per_row must be >= 1"),
    ({"optimizer.learning_rate": 0.0}, "optimizer.learning_rate must be > 0"),
    ({"optimizer.warmup_ratio": 2.0}, "optimizer.warmup_ratio must be in [0, 1]"),
    ({"optimizer.warmup_steps": 50}, "exceeds train.steps"),
    ({"optimizer.b2": 1.0}, "optimizer.b2 must be in [0, 1)"),
    ({"train.eval_every": -1}, "train.eval_every must be >= 0"),
    ({"train.compute_dtype": "float64"}, "dtype must be one of"),
    ({"train.remat": "everything"}, "remat must be one of"),
    ({"train.init_from": "/nonexistent/run"}, "train.init_from '/nonexistent/run' does not exist"),
])
def test_bad_values_are_reported(tmp_path, overrides, expected):
  assert expected in _error(_config(**overrides), tmp_path)


def test_unknown_keys_in_a_config_file_are_reported(tmp_path):
  config = _config()
  config.train.stpes = 3
  assert "unknown config key 'train.stpes'" in _error(config, tmp_path)
  config = _config()
  config.model.dmodel = 64
  assert "unknown config.model keys: dmodel" in _error(config, tmp_path)
  config = _config()
  del config.model["d_model"]
  assert "missing config.model keys: d_model" in _error(config, tmp_path)


def test_resuming_a_workdir_with_a_different_model_is_refused(tmp_path):
  checkpointing.save_config(str(tmp_path), _config())
  config_validation.validate(_config(**{"train.steps": 50}), str(tmp_path), jax.devices())
  assert "holds a run of a different model" in _error(_config(**{"model.num_layers": 3}),
                                                      tmp_path)


def test_finetuning_from_a_run_of_another_model_is_refused(tmp_path):
  run = tmp_path / "run"
  checkpointing.save_config(str(run), _config(**{"model.num_layers": 3}))
  (run / "checkpoints" / "5" / "state").mkdir(parents=True)
  assert "holds a different model" in _error(_config(**{"train.init_from": str(run)}),
                                             tmp_path / "new")
  empty = tmp_path / "empty"
  empty.mkdir()
  assert "no checkpoint in" in _error(_config(**{"train.init_from": str(empty)}), tmp_path / "new")


def test_for_device_records_the_auto_choices_in_a_copy():
  config = _config()
  assert config.model.attention_impl == "auto" and config.model.scan_layers is None
  chosen = config_validation.for_device(config, jax.devices()[0])
  assert (chosen.model.attention_impl, chosen.model.scan_layers) == ("xla", True)  # CPU
  assert config.model.attention_impl == "auto" and config.model.scan_layers is None
  assert chosen.to_dict() == {**config.to_dict(), "model": chosen.model.to_dict()}


def test_a_run_resumes_and_finetunes_with_another_attention_or_layer_loop(tmp_path):
  """attention_impl and scan_layers change how the model runs, not what it computes: a run
  trained on GPUs (cuDNN, unrolled) resumes or is finetuned on a TPU or CPU."""
  gpu_run = _config(**{"model.attention_impl": "cudnn", "model.scan_layers": False,
                       "train.compute_dtype": "bfloat16"})
  checkpointing.save_config(str(tmp_path / "run"), gpu_run)
  config_validation.validate(_config(), str(tmp_path / "run"), jax.devices())
  (tmp_path / "run" / "checkpoints" / "5" / "state").mkdir(parents=True)
  config_validation.validate(_config(**{"train.init_from": str(tmp_path / "run")}),
                             str(tmp_path / "new"), jax.devices())


def test_a_step_too_big_for_the_device_memory_says_how_to_make_it_fit(monkeypatch):
  """GPUs and TPUs report a memory limit (CPUs none): a step over it is a one-line ConfigError
  after the compile and before any state exists, naming the accumulation that makes it fit."""
  config = _config(**{"mesh.data": 1})
  program = trainer.TrainProgram(config, sharding.make_mesh(config.mesh, jax.devices()[:1]))
  memory = program.lower_train_step().compile().memory_analysis()
  needed, temp = trainer.step_memory_bytes(memory), memory.temp_size_in_bytes
  assert 0 < temp < needed

  def error(limit):
    monkeypatch.setattr(trainer, "device_memory_limit", lambda device: limit)
    with pytest.raises(config_validation.ConfigError) as e:
      program.compile_train_step()
    assert "\n" not in str(e.value) and "the train step needs" in str(e.value)
    return str(e.value)

  # Batch 8 on one device: accumulation 2 halves the temporaries, 4 quarters them.
  assert "optimizer.grad_accum_steps=2 (microbatches of 4 rows)" in error(needed - temp // 3)
  assert "optimizer.grad_accum_steps=4 (microbatches of 2 rows)" in error(needed - 2 * temp // 3)
  assert "parameters and optimizer state alone do not fit" in error(needed - temp - 1)
  monkeypatch.setattr(trainer, "device_memory_limit", lambda device: needed)
  step = program.compile_train_step()
  with jax.set_mesh(program.mesh):
    state = program.init(jax.random.key(0))
  batch = {k: np.ones((8, 128), np.int32) for k in trainer.BATCH_KEYS}
  _, metrics = step(state, program.global_batch(batch))
  assert np.isfinite(float(metrics["loss"]))


def test_a_resumed_run_packs_as_it_began_on_any_device():
  """A run begun under cuDNN attention packs at most model.max_segments examples per row; on a
  CPU or TPU it goes on with that cap (XLA and splash attention read any packing), and so on
  back on a GPU, where the recorded XLA attention is kept."""
  h100 = _Device("gpu", "NVIDIA H100 80GB HBM3", "9.0")
  tpu = _Device("tpu", "TPU v5 lite")
  bf16 = _config(**{"train.compute_dtype": "bfloat16"})
  gpu_run = config_validation.for_device(bf16, h100)
  assert gpu_run.model.attention_impl == "cudnn" and packing.max_segments_per_row(gpu_run) == 16
  assert packing.max_segments_per_row(config_validation.for_device(bf16)) is None  # a new run
  for device, attention in ((None, "xla"), (tpu, "splash")):
    resumed = config_validation.for_device(bf16, device, recorded=gpu_run)
    assert resumed.model.attention_impl == attention
    assert packing.max_segments_per_row(resumed) == 16
    again = config_validation.for_device(bf16, h100, recorded=resumed)
    assert again.model.attention_impl == "xla" and packing.max_segments_per_row(again) == 16
  with pytest.raises(config_validation.ConfigError, match="raise model.max_segments"):
    config_validation.for_device(_config(**{"train.compute_dtype": "bfloat16",
                                            "data.max_segments_per_row": 17}), h100)
  raised = config_validation.for_device(_config(**{
      "train.compute_dtype": "bfloat16", "data.max_segments_per_row": 17,
      "model.max_segments": 17}), h100)
  assert packing.max_segments_per_row(raised) == 17


@pytest.mark.parametrize("name", sorted(p.stem for p in pathlib.Path(configs.__file__).parent.glob(
    "*.py") if p.stem not in ("__init__", "base")))
def test_the_cudnn_segment_cap_can_be_set_from_the_command_line(name):
  """`--config.model.max_segments=N` (config flags override only keys a config has): packed
  cuDNN attention costs more with a larger cap (docs/TPU_GPU.md), so users tune it."""
  config = importlib.import_module(f"configs.{name}").get_config()
  assert config.model.max_segments == model_lib.ModelConfig.max_segments
  config.model.max_segments = 4
  assert model_lib.ModelConfig.from_config_dict(config.model, config.train).max_segments == 4


@pytest.mark.parametrize("attention, device, message", [
    ("cudnn", None, "attention_impl=cudnn does not run on cpu: it needs an NVIDIA GPU"),
    ("cudnn", _Device("gpu", "Tesla T4", "7.5"), "does not run on Tesla T4"),
    ("cudnn", _Device("tpu", "TPU v5 lite"), "does not run on TPU v5 lite"),
    ("splash", None, "attention_impl=splash does not run on cpu: it needs TPUs"),
    ("splash", _Device("gpu", "NVIDIA H100 80GB HBM3", "9.0"), "it needs TPUs"),
])
def test_an_attention_the_device_cannot_run_is_a_config_error(attention, device, message):
  config = _config(**{"model.attention_impl": attention, "train.compute_dtype": "bfloat16"})
  with pytest.raises(config_validation.ConfigError, match=message):
    config_validation.for_device(config, device)


def test_each_attention_runs_where_it_can():
  for attention, device in (("cudnn", _Device("gpu", "NVIDIA H100 80GB HBM3", "9.0")),
                            ("cudnn", _Device("gpu", "NVIDIA H100 80GB HBM3")),  # compile-only
                            ("splash", _Device("tpu", "TPU v5 lite")), ("xla", None)):
    config = _config(**{"model.attention_impl": attention, "train.compute_dtype": "bfloat16"})
    assert config_validation.for_device(config, device).model.attention_impl == attention


def test_a_missing_key_or_section_and_an_unknown_section_are_reported(tmp_path):
  config = _config()
  del config.train["steps"]
  assert "missing config.train keys: steps" in _error(config, tmp_path)
  config = _config()
  del config["mesh"]
  assert "config has no 'mesh' section (start from configs/base.py)" in _error(config, tmp_path)
  config = _config()
  config.trian = {"steps": 3}
  assert ("unknown config key 'trian' (known in 'config': data, mesh, model, optimizer, train)"
          in _error(config, tmp_path))


@pytest.mark.parametrize("section", config_sections.SECTIONS, ids=lambda s: s.NAME)
def test_the_default_config_is_each_sections_fields_at_their_defaults(section):
  """configs/base.py is the typed sections' defaults, key for key, with their types (a
  --config.KEY=VALUE of another type is refused by ml_collections)."""
  default = base.get_config()[section.NAME]
  fields = dataclasses.fields(section)
  assert sorted(default.keys()) == sorted(f.name for f in fields)
  for field in fields:
    assert default[field.name] == field.default
    if field.default is None:
      assert default.get_ref(field.name).get_type() is int
    else:
      assert type(default[field.name]) is type(field.default)
  section(**default.to_dict())


def test_a_typo_in_a_config_file_is_one_line_and_exit_2(tmp_path):
  (tmp_path / "typo.py").write_text(
      "from configs import test_tiny\n\n\ndef get_config():\n  config = test_tiny.get_config()\n"
      "  config.optimizer.warmup_ratoi = 0.1\n  return config\n")
  result = subprocess.run(
      [sys.executable, "-m", "editseq.train", f"--config={tmp_path / 'typo.py'}",
       f"--workdir={tmp_path / 'run'}"], cwd=REPO_ROOT, capture_output=True, text=True,
      timeout=300, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
  assert result.returncode == 2, result.stderr[-3000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1 and "unknown config key 'optimizer.warmup_ratoi'" in errors[0]
  assert "Traceback" not in result.stderr
  assert not (tmp_path / "run" / "checkpoints").exists()
