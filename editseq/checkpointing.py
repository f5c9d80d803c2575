"""Checkpoints: `WORKDIR/config.json` plus orbax steps `WORKDIR/checkpoints/<step>/{state,data}`.

`state` is the train state pytree {"step", "params", "opt_state"} (params as a nested dict of
arrays, the layout of `nnx.to_pure_dict`), `data` the input iterator's JSON state. Saves are
asynchronous (the device-to-host copy is synchronous, so the caller may donate the state right
after `save` returns); a step folder only appears once complete, so a run killed mid-save
resumes from the previous step. A complete step that no longer restores (a file truncated or
lost on disk) is moved to `WORKDIR/unrestorable_checkpoints/<step>` when an older one restores,
so the run resumes from that one and can save the step again; nothing is deleted.
"""
import asyncio
import contextlib
import dataclasses
import json
import sys

import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from orbax.checkpoint import checkpoint_managers

from editseq import model as model_lib
from editseq import sharding

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
UNRESTORABLE_DIR = "unrestorable_checkpoints"
STATE_ITEM = "state"
DATA_ITEM = "data"


class NoRestorableCheckpoint(RuntimeError):
  """A workdir holds checkpoints, but none of them restores."""


def save_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Writes the run's full config as JSON (process 0 only)."""
  if jax.process_index() != 0:
    return
  path = epath.Path(workdir) / CONFIG_FILE
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n")


def load_config(workdir: str) -> ml_collections.ConfigDict | None:
  """The config a run in `workdir` was started with, or None if there is none."""
  path = epath.Path(workdir) / CONFIG_FILE
  if not path.exists():
    return None
  return ml_collections.ConfigDict(json.loads(path.read_text()))


def resolve_step_dir(path: str) -> tuple[epath.Path, epath.Path]:
  """(workdir, step folder) for a workdir (its latest step) or a step folder.

  Raises FileNotFoundError with a readable message when `path` holds no checkpoint.
  """
  path = epath.Path(path)
  if (path / STATE_ITEM).exists():
    return path.parent.parent, path
  steps = ocp.utils.checkpoint_steps(path / CHECKPOINT_DIR) if (path / CHECKPOINT_DIR).exists() else []
  if not steps:
    raise FileNotFoundError(f"no checkpoint in {path} (expected {path}/{CHECKPOINT_DIR}/<step>/ "
                            f"or a step folder holding '{STATE_ITEM}/')")
  return path, path / CHECKPOINT_DIR / str(max(steps))


def load_data_state(step_dir: epath.Path) -> dict:
  """The input iterator's state saved in a step folder, without restoring the model."""
  return ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(epath.Path(step_dir) / DATA_ITEM)


def is_hf_model_dir(path: str) -> bool:
  """A Hugging Face model folder (config.json + safetensors/bin weights), not one of our runs."""
  path = epath.Path(path)
  if not path.is_dir() or (path / CHECKPOINT_DIR).exists() or (path / STATE_ITEM).exists():
    return False
  weights = [*path.glob("*.safetensors"), *path.glob("pytorch_model*.bin")]
  return (path / "config.json").exists() and bool(weights)


def _short(error: BaseException, limit: int = 200) -> str:
  """An exception as one line of at most `limit` characters (tensorstore's run to pages)."""
  # tensorstore appends its whole spec after this phrase; the part before says what failed.
  text = " ".join(str(error).split()).split(" See full TensorStore details")[0]
  return f"{type(error).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"


def _restore_args(abstract_tree):
  return ocp.checkpoint_utils.construct_restore_args(abstract_tree)


def load_params(step_dir: epath.Path, abstract_params):
  """Restores only the parameters of a step folder (no optimizer state is read).

  `abstract_params` is a tree of `jax.ShapeDtypeStruct`s whose shardings say where each array goes.
  """
  target = {"params": abstract_params}
  with _reads_end_before_restore_returns():
    restored = ocp.PyTreeCheckpointer().restore(
        step_dir / STATE_ITEM,
        args=ocp.args.PyTreeRestore(target, restore_args=_restore_args(target),
                                    partial_restore=True))
  return restored["params"]


def load_for_inference(path: str, *, mesh: Mesh | None = None):
  """(model, config, vocab) from a run's workdir (its latest step), a step folder or a Hugging
  Face model folder (`editseq.pretrained.load_hf_for_inference`).

  Reads only the parameters. With `mesh` they are sharded by the rules table (large models);
  without, they go to the default device. The vocabulary is the run's `data.vocab_path`, or the
  embedded default tokenizer when that is "".
  """
  if is_hf_model_dir(path):
    from editseq import pretrained  # pylint: disable=g-import-not-at-top
    return pretrained.load_hf_for_inference(path, mesh=mesh)
  workdir, step_dir = resolve_step_dir(path)
  config = load_config(str(workdir))
  if config is None:
    raise FileNotFoundError(f"no {CONFIG_FILE} in {workdir} (the run folder of {step_dir})")
  # How the model runs is chosen for this process's devices, not for the ones it trained on.
  model_cfg = dataclasses.replace(
      model_lib.ModelConfig.from_config_dict(config.model, config.train), attention_impl="auto",
      scan_layers=None).for_device(jax.devices()[0])
  graphdef, abstract = nnx.split(model_lib.abstract_model(model_cfg), nnx.Param)
  if mesh is None:
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    shardings = jax.tree.map(lambda _: device, nnx.to_pure_dict(abstract))
  else:
    shardings = nnx.to_pure_dict(sharding.state_shardings(abstract, mesh))
  target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        nnx.to_pure_dict(abstract), shardings)
  model = nnx.merge(graphdef, load_params(step_dir, target))

  from editseq import default_data  # Heavy (seqio/TensorFlow): only when needed.
  return model, config, default_data.config_vocabulary(config.data)


class Checkpointer:
  """Keep-last-k, every-N-steps (and on preemption) checkpoints of state + iterator state."""

  def __init__(self, workdir: str, *, every: int, keep: int):
    policies = [checkpoint_managers.PreemptionCheckpointingPolicy()]
    if every > 0:
      policies.append(checkpoint_managers.FixedIntervalPolicy(every))
    self._manager = ocp.CheckpointManager(
        epath.Path(workdir) / CHECKPOINT_DIR,
        options=ocp.CheckpointManagerOptions(
            save_decision_policy=checkpoint_managers.AnySavePolicy(policies),
            preservation_policy=checkpoint_managers.LatestN(keep),
            enable_async_checkpointing=True,
            create=True),
        item_names=(STATE_ITEM, DATA_ITEM))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def reached_preemption(self, step: int) -> bool:
    """True on every process at the same step once any of them was told to stop (multi-host)."""
    return self._manager.reached_preemption(step)

  def should_save(self, step: int) -> bool:
    """Every N steps, or when every process reached a preemption sync point (multi-host)."""
    return self._manager.should_save(step)

  def save(self, step: int, state, data_state: dict, *, force: bool = False) -> None:
    self._manager.save(
        step,
        args=ocp.args.Composite(**{STATE_ITEM: ocp.args.PyTreeSave(state),
                                   DATA_ITEM: ocp.args.JsonSave(data_state)}),
        force=force)

  def restore(self, step: int, abstract_state) -> tuple[object, dict]:
    """Restores (state, data_state); `abstract_state` carries the target shardings."""
    with _reads_end_before_restore_returns():
      restored = self._manager.restore(
          step,
          args=ocp.args.Composite(**{
              STATE_ITEM: ocp.args.PyTreeRestore(abstract_state,
                                                 restore_args=_restore_args(abstract_state)),
              DATA_ITEM: ocp.args.JsonRestore()}))
    return restored[STATE_ITEM], restored[DATA_ITEM]

  def restore_latest(self, abstract_state) -> tuple[int, object, dict] | None:
    """(step, state, data_state) of the newest step that restores, None when there is none.

    Newer steps that fail to restore are moved to `WORKDIR/unrestorable_checkpoints/` with one
    warning line each on stderr (out of the manager's way: it would neither save that step
    again nor keep older ones). Raises NoRestorableCheckpoint, moving nothing, when no step
    restores.
    """
    failed = []
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        state, data_state = self.restore(step, abstract_state)
      except Exception as e:  # pylint: disable=broad-except  # orbax/tensorstore/json raise many
        failed.append((step, _short(e)))
        continue
      for bad_step, reason in failed:
        moved = self._move_aside(bad_step)
        if jax.process_index() == 0:
          print(f"warning: checkpoint step {bad_step} does not restore ({reason}); moved to "
                f"{moved}, resuming from step {step}", file=sys.stderr)
      if failed:
        self._manager.reload()
      return step, state, data_state
    if failed:
      newest, reason = failed[0]
      raise NoRestorableCheckpoint(
          f"no checkpoint in {self._manager.directory} restores (steps "
          f"{', '.join(str(s) for s, _ in failed)}; step {newest}: {reason}); move them out of "
          "the way to start afresh, or use another --workdir")
    return None

  def _move_aside(self, step: int) -> epath.Path:
    """Moves step folder `step` to a new name under `WORKDIR/unrestorable_checkpoints/`."""
    target_dir = self._manager.directory.parent / UNRESTORABLE_DIR
    target, n = target_dir / str(step), 1
    while target.exists():
      n += 1
      target = target_dir / f"{step}-{n}"
    if jax.process_index() == 0:
      target_dir.mkdir(parents=True, exist_ok=True)
      (self._manager.directory / str(step)).rename(target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"editseq_move_aside_{step}")
    return target

  def wait_until_finished(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


class _DrainingEventLoop(asyncio.SelectorEventLoop):
  """An event loop whose close() first lets its unfinished tasks and worker threads end.

  orbax runs a restore in a fresh loop and closes it as soon as the first array read fails
  (`asyncio.gather` returns the first error), while the sibling reads are still pending:
  tensorstore's threads then complete them into the closed loop ("RuntimeError: Event loop is
  closed" tracebacks from `call_soon_threadsafe`), the `to_thread` copies likewise, and the
  abandoned coroutines print "Exception ignored in <coroutine ...>" when collected. Finishing
  them here, before the close, leaves nothing behind to print.
  """

  def close(self):
    if not self.is_closed() and not self.is_running():
      pending = asyncio.all_tasks(self)
      if pending:  # their errors are collected: the restore already raised the first one
        self.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
      self.run_until_complete(self.shutdown_default_executor())
    super().close()


class _DrainingEventLoopPolicy(asyncio.DefaultEventLoopPolicy):
  _loop_factory = _DrainingEventLoop


@contextlib.contextmanager
def _reads_end_before_restore_returns():
  """Within it, the event loops orbax makes (asyncio.new_event_loop) are _DrainingEventLoops,
  so a failed restore returns only once all of its reads have ended."""
  previous = asyncio.get_event_loop_policy()
  asyncio.set_event_loop_policy(_DrainingEventLoopPolicy())
  try:
    yield
  finally:
    asyncio.set_event_loop_policy(previous)
