"""The training loop: sharded state, jitted train/eval steps, checkpoint/resume and metrics.

Layout (MaxText/nanodo style):
- The train state is a plain pytree `{"step", "params", "opt_state"}`; `params` is the model's
  `nnx.Param` values as a nested dict (`nnx.to_pure_dict`) and the model graph (`nnx.GraphDef`)
  is static, so the state goes through `jax.jit`, optax and orbax as ordinary arrays.
- Shardings come from the parameters' logical axis names through `editseq.sharding`'s rules
  table; optimizer moments take their parameter's sharding, scalars are replicated. The state is
  created by a jitted init with `out_shardings` (never materialised unsharded), and the train
  step is `jax.jit` with explicit in/out shardings and a donated state.
- Gradient accumulation scans over microbatches inside the step. Microbatch j takes rows
  j, j+A, j+2A, ... of the global batch, so each device keeps its own rows (no data movement)
  and the summed gradient equals the big batch's. The "mean" loss divides by the loss-token
  count of the whole global batch, so it too is exactly the big batch's objective.
- The loss is the cross entropy of the tokens with `loss_mask` = 1, summed over the global batch
  ("sum", the reference recipe) or averaged over those tokens ("mean"). The reported `loss` is
  always the per-token mean, which is comparable across batch sizes and reductions.
- The train step is compiled before any state exists (`TrainProgram.compile_train_step`) and
  its memory (XLA's `memory_analysis`) checked against what the runtime lets it use, so a step
  that cannot fit fails in seconds with the fix; that compiled executable is what runs.
- Metrics are read one step late: step s+1 is dispatched before step s's scalars are fetched,
  so the device never waits for the host. Step time runs from one step's completion on the
  device to the next one's (`metrics.Throughput` watches them), never from host events. Before
  a checkpoint the current step is read first, so a checkpoint never holds a state reached
  through a non-finite loss or gradient.
"""
from __future__ import annotations

import contextlib
import fractions
import math
import os
import signal
import sys
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from editseq import checkpointing
from editseq import config_validation
from editseq import flops
from editseq import losses
from editseq import metrics as metrics_lib
from editseq import model as model_lib
from editseq import optimizer
from editseq import sharding

BATCH_KEYS = ("inputs", "targets", "loss_mask", "segment_ids", "positions")
Batch = Mapping[str, jax.Array]
State = dict[str, Any]


class TrainingDiverged(RuntimeError):
  """The loss or the gradient norm became NaN/inf; the run stopped without saving that state."""


class Preempted(RuntimeError):
  """SIGTERM (or a multi-host preemption notice) arrived; a checkpoint was saved."""


def step_memory_bytes(memory) -> int:
  """Device memory a compiled step needs, from its `memory_analysis()`: arguments, outputs and
  temporaries, less the outputs written into donated arguments."""
  return (memory.argument_size_in_bytes + memory.output_size_in_bytes
          + memory.temp_size_in_bytes - memory.alias_size_in_bytes)


def device_memory_limit(device: jax.Device) -> int | None:
  """The bytes the runtime lets programs use on `device` (GPUs: the XLA_PYTHON_CLIENT_MEM_FRACTION
  share, 75% by default); None where it reports none (CPUs, compile-only devices)."""
  try:
    stats = device.memory_stats()
  except Exception:  # pylint: disable=broad-except  # compile-only devices have no runtime
    return None
  return (stats or {}).get("bytes_limit")


class TrainProgram:
  """What is fixed before the first step: model graph, optimizer, shardings and jitted functions.

  The benchmark and tests use it directly: `init(key)`, `train_step(state, batch)`,
  `eval_step(params, batch)` and `global_batch(local_numpy_batch)`.
  """

  def __init__(self, config: ml_collections.ConfigDict, mesh: Mesh):
    config = config_validation.for_device(config, mesh.devices.flat[0])
    self.config = config
    self.mesh = mesh
    self.model_cfg = model_lib.ModelConfig.from_config_dict(config.model, config.train)
    self.graphdef, abstract_params = nnx.split(model_lib.abstract_model(self.model_cfg), nnx.Param)
    param_shardings = nnx.to_pure_dict(sharding.state_shardings(abstract_params, mesh))
    logical_axes = jax.tree.map(tuple, nnx.to_pure_dict(nnx.get_partition_spec(abstract_params)),
                                is_leaf=lambda x: isinstance(x, PartitionSpec))

    total_steps = config.train.steps
    self.schedule = optimizer.learning_rate_schedule(config.optimizer, total_steps)
    self.tx = optimizer.make_optimizer(config.optimizer, total_steps,
                                       optimizer.weight_decay_mask(logical_axes))

    self.replicated = NamedSharding(mesh, PartitionSpec())
    abstract_params = nnx.to_pure_dict(abstract_params)
    abstract_opt_state = jax.eval_shape(self.tx.init, abstract_params)
    self.param_shardings = param_shardings
    self.state_shardings = {
        "step": self.replicated,
        "params": param_shardings,
        "opt_state": optax.tree_map_params(self.tx, lambda _, s: s, abstract_opt_state,
                                           param_shardings,
                                           transform_non_params=lambda _: self.replicated),
    }
    abstract = {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": abstract_params,
                "opt_state": abstract_opt_state}
    self.abstract_state = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract,
        self.state_shardings)
    self.batch_sharding = sharding.batch_sharding(mesh, config.data.global_batch_size)

    self.init = jax.jit(self._init, out_shardings=self.state_shardings)
    batch_shardings = {k: self.batch_sharding for k in BATCH_KEYS}
    self.train_step = jax.jit(self._train_step,
                              in_shardings=(self.state_shardings, batch_shardings),
                              out_shardings=(self.state_shardings, self.replicated),
                              donate_argnums=0)
    self.eval_step = jax.jit(self._eval_step, in_shardings=(param_shardings, batch_shardings),
                             out_shardings=self.replicated)

  @property
  def abstract_params(self):
    return self.abstract_state["params"]

  def lower_train_step(self) -> jax.stages.Lowered:
    """The train step lowered from abstract state and batch (nothing allocated): compile it to
    read its memory and kernels, for this host's devices or compile-only ones."""
    batch = jax.ShapeDtypeStruct((self.config.data.global_batch_size, self.config.data.seq_len),
                                 jnp.int32, sharding=self.batch_sharding)
    with jax.set_mesh(self.mesh):
      return self.train_step.lower(self.abstract_state, {k: batch for k in BATCH_KEYS})

  def compile_train_step(self) -> jax.stages.Compiled:
    """The train step compiled before any state exists, checked against the devices' memory:
    a step that cannot fit is a ConfigError that says how to make it fit, not an
    out-of-memory failure at the first step. Call the result as `train_step`."""
    try:
      compiled = self.lower_train_step().compile()
    except jax.errors.JaxRuntimeError as e:  # TPU compilers refuse a program that cannot fit.
      if "RESOURCE_EXHAUSTED" not in str(e):
        raise
      raise config_validation.ConfigError(
          f"the train step does not fit in device memory ({' '.join(str(e).split())[:300]}); "
          f"{self.smaller_step_hint(None)}") from e
    limit = device_memory_limit(self.mesh.devices.flat[0])
    memory = compiled.memory_analysis()
    shortfall = self.memory_shortfall(memory, limit) if limit and memory is not None else None
    if shortfall:
      raise config_validation.ConfigError(shortfall)
    return compiled

  def memory_shortfall(self, memory, limit: int) -> str | None:
    """None when a compiled step's `memory` (its `memory_analysis()`) fits in `limit` bytes per
    device; else what it needs and how to make it fit."""
    needed = step_memory_bytes(memory)
    if needed <= limit:
      return None
    gib = lambda n: f"{n / 2**30:.1f} GiB"
    return (f"the train step needs {gib(needed)} per device (arguments "
            f"{gib(memory.argument_size_in_bytes)}, temporaries {gib(memory.temp_size_in_bytes)}) "
            f"but {gib(limit)} is usable; "
            f"{self.smaller_step_hint((limit - needed) / memory.temp_size_in_bytes + 1)}")

  def smaller_step_hint(self, fits: float | None) -> str:
    """What to change so that the step fits, given the share of its temporaries that `fits`
    beside its arguments (None: unknown). The temporaries shrink about in proportion to the
    rows per microbatch, so first more gradient accumulation; the arguments (parameters,
    optimizer state, batch) only by sharding them."""
    if fits is not None and fits <= 0:
      return ("the parameters and optimizer state alone do not fit: shard them over the devices "
              "(mesh.fsdp=-1 mesh.data=1) or use more devices")
    batch, accum = self.config.data.global_batch_size, self.config.optimizer.grad_accum_steps
    shards = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
    wanted = accum + 1 if fits is None else max(accum + 1, math.ceil(accum / fits))
    for more in range(wanted, batch // shards + 1):
      if batch % more == 0 and (batch // more) % shards == 0:
        return (f"try optimizer.grad_accum_steps={more} (microbatches of {batch // more} rows), "
                "train.remat=full, or a smaller data.global_batch_size")
    return "try train.remat=full or a smaller data.global_batch_size"

  def global_batch(self, local_batch: Mapping[str, np.ndarray], width: int | None = None
                   ) -> dict[str, jax.Array]:
    """Stacks the processes' rows (in process order) into global arrays sharded over the batch;
    `width` keeps only the first columns of every row (default: all of data.seq_len)."""
    width = width or self.config.data.seq_len
    global_shape = (self.config.data.global_batch_size, width)
    return {k: jax.make_array_from_process_local_data(
        self.batch_sharding, np.asarray(local_batch[k])[:, :width], global_shape)
            for k in BATCH_KEYS}

  def used_width(self, local_batch: Mapping[str, np.ndarray]) -> int:
    """The columns a batch of unpacked rows needs: its longest example, rounded up to
    `data.trim_to_multiple` (so few shapes compile), at most data.seq_len; every process gets
    the same width. Packed batches, or a multiple of 0, use all of data.seq_len. The columns
    cut hold padding only, which the loss and attention ignore: same loss, same gradients,
    fewer FLOPs (the reference pads each batch to its longest example too)."""
    seq_len, multiple = self.config.data.seq_len, self.config.data.get("trim_to_multiple", 0)
    if self.config.data.pack or not multiple:
      return seq_len
    used = np.asarray(local_batch["segment_ids"]) > 0
    longest = int(np.max(used.shape[1] - np.argmax(used[:, ::-1], axis=1), initial=0,
                         where=used.any(axis=1)))
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      longest = int(np.max(multihost_utils.process_allgather(np.int32(longest))))
    return min(seq_len, max(multiple, -(-longest // multiple) * multiple))

  def _init(self, key: jax.Array) -> State:
    model = model_lib.Transformer(self.model_cfg, rngs=nnx.Rngs(params=key))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": self.tx.init(params)}

  def _loss_sums(self, params, batch: Batch) -> tuple[jax.Array, jax.Array]:
    """(sum of masked token cross entropies, number of loss tokens) of one (micro)batch."""
    return losses.loss_sums(nnx.merge(self.graphdef, params), batch,
                            self.config.train.loss_chunk_size)

  def _train_step(self, state: State, batch: Batch) -> tuple[State, dict[str, jax.Array]]:
    with jax.sharding.use_abstract_mesh(self.mesh.abstract_mesh):
      params = state["params"]
      if self.config.train.loss_reduction == "mean":
        scale = 1.0 / jnp.maximum(jnp.sum(batch["loss_mask"].astype(jnp.float32)), 1.0)
      else:
        scale = 1.0

      def grads_of(microbatch):
        def objective(p):
          total, count = self._loss_sums(p, microbatch)
          return total * scale, (total, count)
        (_, (total, count)), grads = jax.value_and_grad(objective, has_aux=True)(params)
        return grads, total, count

      accum = self.config.optimizer.grad_accum_steps
      if accum == 1:
        grads, total, count = grads_of(batch)
      else:
        def split(x):  # [B, T] -> [A, B/A, T]; microbatch j = rows j, j+A, ...
          return jnp.swapaxes(x.reshape(x.shape[0] // accum, accum, *x.shape[1:]), 0, 1)

        def body(carry, microbatch):
          microbatch = jax.lax.with_sharding_constraint(microbatch, self.batch_sharding)
          return jax.tree.map(jnp.add, carry, grads_of(microbatch)), None

        zero_grads = jax.lax.with_sharding_constraint(jax.tree.map(jnp.zeros_like, params),
                                                      self.param_shardings)
        init = (zero_grads, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))
        (grads, total, count), _ = jax.lax.scan(body, init, jax.tree.map(split, dict(batch)))

      updates, opt_state = self.tx.update(grads, state["opt_state"], params)
      new_state = {"step": state["step"] + 1, "params": optax.apply_updates(params, updates),
                   "opt_state": opt_state}
      step_metrics = {
          "loss": total / jnp.maximum(count, 1.0),
          "grad_norm": optax.global_norm(grads),
          "learning_rate": self.schedule(state["step"]),
          "loss_tokens": count,
      }
      return new_state, step_metrics

  def _eval_step(self, params, batch: Batch) -> jax.Array:
    """[sum of token losses, loss tokens] of one batch."""
    with jax.sharding.use_abstract_mesh(self.mesh.abstract_mesh):
      return jnp.stack(self._loss_sums(params, batch))


def data_vocabulary(config: ml_collections.ConfigDict):
  """The run's tokenizer, after checking that it and the data fit the config (ConfigError if not).

  With `data.vocab_path = ""` this is the embedded default tokenizer and with `data.data_dir` ""
  or "default:small" the embedded default data: both are built on first use.
  """
  from editseq import default_data, input_pipeline, tasks, tokenizer
  splits = ("train", config.data.eval_split) if config.train.eval_every > 0 else ("train",)
  try:
    vocab = default_data.config_vocabulary(config.data)
    input_pipeline.validate_data_config(config, vocab, splits=splits)
  except (tasks.DataError, tokenizer.VocabularyError) as e:
    raise config_validation.ConfigError(str(e)) from e
  return vocab


def load_pretrained_params(path: str, program: TrainProgram):
  """Parameters to finetune from: one of our checkpoints or a Hugging Face model folder (read
  tensor by tensor into the program's shardings; the embedding grown to model.vocab_size)."""
  if checkpointing.is_hf_model_dir(path):
    from editseq import hf_convert
    try:
      return hf_convert.load_params(path, program.model_cfg,
                                    place=hf_convert.place_into(program.param_shardings))
    except ValueError as e:
      raise config_validation.ConfigError(f"train.init_from: {e}") from e
  _, step_dir = checkpointing.resolve_step_dir(path)
  return checkpointing.load_params(step_dir, program.abstract_params)


def epoch_steps(epochs: float, rows_per_epoch: int, global_batch_size: int) -> int:
  """Optimizer steps of `epochs` passes over `rows_per_epoch` rows, `global_batch_size` rows a
  step, the last batch completed from the next epoch: ceil(epochs * rows / batch), with
  `epochs` read as the decimal it was written as (1.1 epochs of 50 rows are 55, not 56)."""
  return math.ceil(fractions.Fraction(repr(float(epochs))) * rows_per_epoch / global_batch_size)


def with_epoch_steps(config: ml_collections.ConfigDict, source) -> ml_collections.ConfigDict:
  """`config` with `train.steps` derived from `train.epochs` when that is > 0 (the schedule's
  length, and what config.json records), `source` being the train split's
  `input_pipeline.DataSource`."""
  if not config.train.epochs > 0:
    return config
  rows = source.rows_per_epoch
  steps = epoch_steps(config.train.epochs, rows, config.data.global_batch_size)
  config = config.copy_and_resolve_references()
  config.train.steps = steps
  config_validation.check_values(config)
  if jax.process_index() == 0:
    unit = "packed rows" if config.data.pack else "examples (one padded row each)"
    print(f"train.epochs={config.train.epochs:g}: {rows} {unit} an epoch, "
          f"{config.data.global_batch_size} a step -> train.steps={steps}", file=sys.stderr)
  return config


@contextlib.contextmanager
def _sigterm_flag() -> Iterator[list[bool]]:
  """Turns SIGTERM into a flag the loop polls, so the run can save before it exits.

  Only for single-process runs in the main thread; multi-host runs use JAX's preemption sync
  points (through the checkpoint manager) so that every host stops at the same step.
  """
  flag = [False]
  if jax.process_count() > 1 or not _in_main_thread():
    yield flag
    return

  def handler(signum, frame):
    del signum, frame
    flag[0] = True

  previous = signal.signal(signal.SIGTERM, handler)
  try:
    yield flag
  finally:
    signal.signal(signal.SIGTERM, previous)


def _in_main_thread() -> bool:
  return threading.current_thread() is threading.main_thread()


class _Reporter:
  """Reads step metrics (one step late), checks them, and writes records."""

  def __init__(self, program: TrainProgram, logger: metrics_lib.MetricsLogger,
               checkpointer: checkpointing.Checkpointer, log_every: int, workdir: str):
    config = program.config
    tokens_per_step = config.data.global_batch_size * config.data.seq_len
    self._throughput = metrics_lib.Throughput(tokens_per_step)
    self._flops_per_token = flops.training_flops_per_token(program.model_cfg, config.data.seq_len)
    try:
      self._peak = flops.peak_flops_per_device() * jax.device_count()
    except ValueError:
      self._peak = float("nan")
    self._logger = logger
    self._checkpointer = checkpointer
    self._log_every = log_every
    self._workdir = workdir
    self.last_record: dict[str, float] = {}

  @property
  def throughput(self) -> metrics_lib.Throughput:
    return self._throughput

  def report(self, step: int, step_metrics, extra: Mapping[str, float] | None = None) -> None:
    values = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
    self._logger.advance(step, values["loss"])
    diverged = not (math.isfinite(values["loss"]) and math.isfinite(values["grad_norm"]))
    if step % self._log_every and not extra and not diverged:
      return
    seconds_per_step, tokens_per_s = self._throughput.report(step)
    record = {**values, "tokens_per_s": tokens_per_s, "seconds_per_step": seconds_per_step,
              "mfu": tokens_per_s * self._flops_per_token / self._peak, **(extra or {})}
    self._logger.write(step, record)
    self.last_record = {"step": step, **record}
    if diverged:
      self._checkpointer.wait_until_finished()
      last = self._checkpointer.latest_step()
      where = (f"the last good checkpoint is step {last} in "
               f"{os.path.join(self._workdir, checkpointing.CHECKPOINT_DIR)}"
               if last is not None else "no checkpoint was saved")
      raise TrainingDiverged(
          f"loss {values['loss']} / gradient norm {values['grad_norm']} at step {step}: "
          f"training stopped; {where} (lower optimizer.learning_rate or check the data)")


def evaluate(program: TrainProgram, params, eval_iter, start_state: dict, steps: int) -> float:
  """Mean token loss over the first `steps` batches of the held-out split (the same each time)."""
  eval_iter.set_state(start_state)
  sums = jnp.zeros((2,), jnp.float32)
  for _, batch in zip(range(steps), eval_iter):
    sums = sums + program.eval_step(params, program.global_batch(batch))
  total, count = jax.device_get(sums)
  return float(total / max(count, 1.0))


def _restore_if_trained(config: ml_collections.ConfigDict, vocab, workdir: str,
                        program: TrainProgram, checkpointer: checkpointing.Checkpointer):
  """(done, restored). done: the newest checkpoint that restores has reached `train.steps` and
  its input iterator state fits this config's data; then it says so, and nothing is compiled.
  restored: `checkpointer.restore_latest`'s result when it was called here (the run's newest
  step had reached `train.steps`, but a corrupt one fell back to an older step), else None.
  Raises ConfigError when the data changed since (as resuming would)."""
  from editseq import input_pipeline, tasks  # pylint: disable=g-import-not-at-top
  try:
    _, step_dir = checkpointing.resolve_step_dir(workdir)
  except FileNotFoundError:
    return False, None
  if int(step_dir.name) < config.train.steps:
    return False, None
  train_iter = input_pipeline.make_train_iterator(config, vocab, split="train")
  try:
    train_iter.set_state(checkpointing.load_data_state(step_dir))
  except tasks.DataError as e:
    raise config_validation.ConfigError(f"cannot resume {workdir}: {e}") from e
  finally:
    train_iter.close()
  with jax.set_mesh(program.mesh):
    restored = checkpointer.restore_latest(program.abstract_state)
  if restored is None or restored[0] < config.train.steps:
    return False, restored
  if jax.process_index() == 0:
    more = "train.epochs" if config.train.epochs > 0 else "train.steps"
    print(f"{workdir} is already trained to step {restored[0]} (train.steps = "
          f"{config.train.steps}); raise {more} to continue", file=sys.stderr)
  return True, None


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains (or resumes) the run in `workdir`; returns the last logged record.

  Raises config_validation.ConfigError (before any compile) for a bad config,
  TrainingDiverged on a non-finite loss and Preempted after saving on SIGTERM.
  """
  config = config_validation.apply_pretrained(config)
  config_validation.validate(config, workdir)
  config = config_validation.for_device(config, recorded=checkpointing.load_config(workdir))
  # The data stack (seqio/TensorFlow) loads only here, so TrainProgram users stay light.
  # TensorFlow only reads data: keep it off the accelerators (it would reserve GPU memory).
  import tensorflow as tf
  from editseq import input_pipeline, tasks
  tf.config.set_visible_devices([], "GPU")
  vocab = data_vocabulary(config)
  try:
    source = input_pipeline.config_source(config, vocab, "train")
  except tasks.DataError as e:
    raise config_validation.ConfigError(str(e)) from e
  if jax.process_index() == 0:
    source.warn_overlong()  # once per run (the iterators open the data again)
  config = with_epoch_steps(config, source)
  train_cfg = config.train
  total_steps = train_cfg.steps
  mesh = sharding.make_mesh(config.mesh)
  program = TrainProgram(config, mesh)
  checkpointer = checkpointing.Checkpointer(workdir, every=train_cfg.checkpoint_every,
                                            keep=train_cfg.keep_checkpoints)
  try:
    done, restored = _restore_if_trained(config, vocab, workdir, program, checkpointer)
  except checkpointing.NoRestorableCheckpoint as e:
    checkpointer.close()
    raise config_validation.ConfigError(f"cannot resume {workdir}: {e}") from e
  if done:
    checkpointer.close()
    records = metrics_lib.read_metrics(workdir)
    return records[-1] if records else {}
  train_step = program.compile_train_step()

  train_iter = input_pipeline.make_train_iterator(config, vocab, split="train")
  eval_iter = eval_start = None
  if train_cfg.eval_every > 0:
    eval_iter = input_pipeline.make_eval_iterator(config, vocab)
    eval_start = eval_iter.get_state()

  try:
    with jax.set_mesh(mesh):
      if restored is None:
        restored = checkpointer.restore_latest(program.abstract_state)
      if restored is None:
        state = program.init(jax.random.key(train_cfg.seed))
        if train_cfg.init_from:
          state["params"] = load_pretrained_params(train_cfg.init_from, program)
        start_step = 0
      else:
        start_step, state, data_state = restored
        train_iter.set_state(data_state)
  except (checkpointing.NoRestorableCheckpoint, tasks.DataError) as e:
    _close(checkpointer, train_iter, eval_iter)
    raise config_validation.ConfigError(f"cannot resume {workdir}: {e}") from e
  checkpointing.save_config(workdir, config)

  logger = metrics_lib.MetricsLogger(workdir, start_step=start_step, total_steps=total_steps,
                                     enabled=jax.process_index() == 0)
  if start_step:
    logger.message(f"resumed from step {start_step} ({workdir})")
  data = config.data
  logger.message(
      f"{model_lib.count_params(state['params']) / 1e6:.1f}M parameters on {mesh.size} x "
      f"{mesh.devices.flat[0].device_kind} (mesh {dict(mesh.shape)}); "
      f"{program.model_cfg.execution}; batch {data.global_batch_size} x {data.seq_len} in "
      f"{config.optimizer.grad_accum_steps} microbatch(es)")
  reporter = _Reporter(program, logger, checkpointer, train_cfg.log_every, workdir)
  pending = None
  try:
    with jax.set_mesh(mesh), _sigterm_flag() as sigterm:
      step = start_step
      while step < total_steps:
        local_batch = next(train_iter)
        width = program.used_width(local_batch)
        batch = program.global_batch(local_batch, width)
        # The step compiled and checked up front is the full-width one; narrower batches of
        # unpacked rows compile on first use (one shape per trim_to_multiple).
        step_fn = train_step if width == data.seq_len else program.train_step
        state, step_metrics = step_fn(state, batch)
        step += 1
        reporter.throughput.dispatched(step, step_metrics, data.global_batch_size * width)
        if pending is not None:
          reporter.report(*pending)
        pending = (step, step_metrics)

        preempted = sigterm[0] or checkpointer.reached_preemption(step)
        do_eval = train_cfg.eval_every > 0 and step % train_cfg.eval_every == 0
        do_save = step == total_steps or preempted or checkpointer.should_save(step)
        if not (do_eval or do_save):
          continue
        reporter.throughput.pause()  # Step time ends with this step, before eval/save.
        extra = {}
        if do_eval:
          extra["eval_loss"] = evaluate(program, state["params"], eval_iter, eval_start,
                                        train_cfg.eval_steps)
        reporter.report(step, step_metrics, extra)
        pending = None
        if do_save:
          checkpointer.save(step, state, train_iter.get_state(), force=True)
        reporter.throughput.resume()
        if preempted:
          checkpointer.wait_until_finished()
          raise Preempted(f"preempted at step {step}: checkpoint saved; rerun the same command "
                          "to resume")
  finally:
    reporter.throughput.close()
    checkpointer.wait_until_finished()
    logger.close()
    _close(checkpointer, train_iter, eval_iter)
  return reporter.last_record


def _close(checkpointer: checkpointing.Checkpointer, *iterators) -> None:
  checkpointer.close()
  for iterator in iterators:
    if iterator is not None:
      iterator.close()
