"""Autoregressive sampling with a KV cache and continuous batching, for pass@k evaluation.

The decode batch is a fixed number of *slots* over one fixed-shape KV cache (compiled once). Each
sample (prompt i, sample j) runs in a slot until it stops (EOS, a token-level stop sequence such
as LintSeq's double `<|diff|>`, a stop string, or the token budget); its slot then takes the next
sample of the queue, so a long row never holds up the rows that finished before it, and the work
done counts useful tokens. A slot holds one sample's tokens at slots equal to their positions
(the cache's per-row write index, docs/ARCHITECTURE.md section 4); a new sample's prompt is
prefilled once per prompt (all n samples of a prompt copy that prefix) and written into the slot.

An on-device `lax.while_loop` decodes `chunk_size` steps at a time; between chunks the host
collects stopped rows, checks stop *strings* on the decoded text (they do not map to fixed token
ids), and refills free slots. The cache holds only a `view` of slots: the shortest power of two
(at least 128, at most the longest prompt plus the whole budget) that holds every running row's
positions through the next chunk. It is resized between chunks when that changes (one copy),
since most rows are far shorter than the budget and reading unused slots dominated the decode
step (bf16 SmolLM2-135M shape, 16 slots: 0.16 s per step over 128 slots vs 0.76 s over 1,536).
Slicing a full-size cache for each chunk instead cost two copies of it per chunk (12% of a
64-slot fp32 decode at that shape).

Every sample draws its randomness from a key derived from (seed, prompt index, sample index,
token index) alone, so its tokens do not depend on the batch size, on which slot it ran in, or
on when that slot freed up (tested; only float rounding can differ: of the prompt prefill
between prompt-length buckets, and of attention between views). Top-p, min-p and sampling avoid
sorting the vocabulary (XLA's CPU sort costs more than a 150M model's decode step); see
`nucleus_mask` and `choose_tokens`.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from editseq import model as model_lib
from editseq import sharding

# Why a row stopped; stored per row on device, so plain ints.
_RUNNING, _EOS, _STOP, _LENGTH = 0, 1, 2, 3
_REASONS = {_EOS: "eos", _STOP: "stop", _LENGTH: "length"}
_WILDCARD = -2  # left padding of the stop-sequence table; matches any token.


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """How to pick tokens. `temperature == 0` is greedy decoding (top_p and min_p are then
  irrelevant). `min_p` keeps the tokens at least `min_p` times as likely as the most likely one.
  The first `min_new_tokens` tokens of a sample are never EOS (its logit is masked, as
  `transformers`' MinNewTokensLengthLogitsProcessor does) and never complete a stop sequence or
  stop string (the LintSeq reference samples with 8)."""

  temperature: float = 1.0
  top_p: float = 1.0
  max_new_tokens: int = 512
  min_new_tokens: int = 0
  min_p: float = 0.0

  def __post_init__(self):
    if not (self.temperature >= 0 and math.isfinite(self.temperature)):
      raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}")
    if not 0 < self.top_p <= 1:
      raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
    if not 0 <= self.min_p < 1:
      raise ValueError(f"min_p must be in [0, 1), got {self.min_p}")
    if self.max_new_tokens < 1:
      raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
    if not 0 <= self.min_new_tokens <= self.max_new_tokens:
      raise ValueError(f"min_new_tokens must be in [0, max_new_tokens], got {self.min_new_tokens}")

  @property
  def greedy(self) -> bool:
    return self.temperature == 0


@dataclasses.dataclass(frozen=True)
class Completion:
  """One sample. `tokens` and `text` exclude the EOS or stop sequence that ended it; a stop string
  cuts `text` at its first occurrence, while `tokens` are then the shortest prefix whose text
  holds that occurrence (a string need not end on a token boundary)."""

  tokens: tuple[int, ...]
  text: str | None
  finish_reason: str  # "eos", "stop" or "length"


def nucleus_mask(probs: jax.Array, top_p: jax.Array | float) -> jax.Array:
  """`[..., V]` bool: the nucleus of `probs`, i.e. the smallest set of most likely tokens whose
  mass reaches `top_p` (tokens tied with the least likely kept one are kept too).

  Found without sorting: the nucleus is {p_i >= t} for the largest t with mass(p >= t) >= top_p,
  and t is one of the probabilities. Non-negative float32 values order like their bit patterns as
  int32, so 32 bisection steps over the bits find t exactly, each step one masked sum over the
  vocabulary that compares floats (reading only `probs`). (XLA's CPU sort is ~20x slower than
  this for a 50k vocabulary.)
  """
  probs = probs.astype(jnp.float32)
  as_float = lambda bits: jax.lax.bitcast_convert_type(bits, jnp.float32)
  lo = jnp.zeros(probs.shape[:-1] + (1,), jnp.int32)  # everything: mass 1 >= top_p
  hi = jax.lax.bitcast_convert_type(jnp.max(probs, axis=-1, keepdims=True), jnp.int32) + 1

  def step(_, bounds):
    lo, hi = bounds
    mid = lo + (hi - lo) // 2
    mass = jnp.sum(jnp.where(probs >= as_float(mid), probs, 0.0), axis=-1, keepdims=True)
    enough = mass >= top_p
    return jnp.where(enough, mid, lo), jnp.where(enough, hi, mid)

  lo, _ = jax.lax.fori_loop(0, 32, step, (lo, hi))
  return probs >= as_float(lo)


def first_argmax(x: jax.Array) -> jax.Array:
  """`jnp.argmax(x, -1)` (first index of the maximum) as two plain reductions: XLA's CPU variadic
  (value, index) reduce is ~3x slower over a 50k vocabulary."""
  ids = jax.lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
  is_max = x == jnp.max(x, axis=-1, keepdims=True)
  return jnp.min(jnp.where(is_max, ids, x.shape[-1] - 1), axis=-1)


def _last_positive(p: jax.Array) -> jax.Array:
  ids = jax.lax.broadcasted_iota(jnp.int32, p.shape, p.ndim - 1)
  return jnp.max(jnp.where(p > 0, ids, 0), axis=-1)


_CDF_BLOCK = 128


def inverse_cdf(weights: jax.Array, u: jax.Array) -> jax.Array:
  """Token `i` of each row of `weights` `[B, V]` (non-negative, not all zero) such that
  `cdf[i - 1] <= u * total < cdf[i]`, for `u` `[B]` uniform in [0, 1): a draw from the weights.

  Two levels instead of one cumulative sum over the vocabulary (a slow scan on XLA's CPU): the
  masses of blocks of 128 tokens locate the block, then a cumulative sum over that block alone
  locates the token. Tokens of weight zero are never returned, rounding included.
  """
  b, v = weights.shape
  blocks = -(-v // _CDF_BLOCK)
  padded = jnp.pad(weights, ((0, 0), (0, blocks * _CDF_BLOCK - v)))
  padded = padded.reshape(b, blocks, _CDF_BLOCK)
  block_mass = jnp.sum(padded, axis=-1)
  block_cdf = jnp.cumsum(block_mass, axis=-1)
  target = u * block_cdf[:, -1]
  # Rounding can make target reach the total: fall back to the last block with any weight.
  block = jnp.minimum(jnp.sum(block_cdf <= target[:, None], axis=-1), _last_positive(block_mass))
  rows = jnp.arange(b)
  before = jnp.where(block > 0, block_cdf[rows, jnp.maximum(block - 1, 0)], 0.0)
  inner = padded[rows, block]  # [B, block]
  inner_cdf = before[:, None] + jnp.cumsum(inner, axis=-1)
  within = jnp.minimum(jnp.sum(inner_cdf <= target[:, None], axis=-1), _last_positive(inner))
  return block * _CDF_BLOCK + within


def choose_tokens(
    logits: jax.Array,
    keys: jax.Array,
    temperature: jax.Array | float,
    top_p: jax.Array | float,
    min_p: jax.Array | float = 0.0,
    *,
    greedy: bool,
    use_top_p: bool,
    use_min_p: bool = False,
) -> jax.Array:
  """Picks one token per row of `logits` `[B, V]`, row i drawing from `keys[i]` alone.

  Top-p and min-p both keep the tokens above a probability threshold, so applying them in either
  order gives the same set. Sampling inverts the cumulative distribution with one uniform number
  per row (`inverse_cdf`): far cheaper on CPU than Gumbel-max, which draws V random numbers per row.
  """
  if greedy:
    return first_argmax(logits).astype(jnp.int32)
  probs = jax.nn.softmax(logits.astype(jnp.float32) / temperature, axis=-1)
  if use_top_p:
    probs = jnp.where(nucleus_mask(probs, top_p), probs, 0.0)
  if use_min_p:
    probs = jnp.where(probs >= min_p * jnp.max(probs, axis=-1, keepdims=True), probs, 0.0)
  return inverse_cdf(probs, jax.vmap(jax.random.uniform)(keys)).astype(jnp.int32)


def _bucket(n: int, minimum: int) -> int:
  """Next power of two >= n (and >= minimum): few distinct shapes, at most 2x padding."""
  return max(minimum, 1 << max(0, n - 1).bit_length())


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def stop_sequence_table(stop_sequences: Sequence[Sequence[int]]) -> np.ndarray:
  """Right-aligns token-level stop sequences into an int32 `[M, L]` table padded with a wildcard.

  A row matches sequence m when its last L generated tokens equal row m (wildcards match
  anything); all-wildcard rows are padding and never match. M and L are rounded up (to 4 and 8)
  so that different stop sets share one compiled decode loop.
  """
  if any(len(s) == 0 for s in stop_sequences):
    raise ValueError("stop sequences must not be empty")
  width = _round_up(max([len(s) for s in stop_sequences] + [1]), 8)
  table = np.full((_round_up(max(1, len(stop_sequences)), 4), width), _WILDCARD, np.int32)
  for i, seq in enumerate(stop_sequences):
    table[i, width - len(seq):] = seq
  return table


class Sampler:
  """Samples completions from a decoder with the KV-cache API of docs/ARCHITECTURE.md §4.

  Args:
    model: an nnx module with `init_cache(batch, max_len, dtype)` and
      `logits, cache = model(tokens, positions=..., cache=...)`.
    eos_id: end-of-sequence token id.
    pad_id: id written after a row stops (never attended to).
    vocab: optional seqio-style vocabulary (`encode`/`decode`); needed for text prompts and stop
      strings.
    valid_vocab_size: ids at or above it (embedding padding) are never sampled.
    batch_size: decode slots (rows decoded together); each takes the next sample when its own
      stops.
    chunk_size: decode steps between host visits (collecting stopped rows, checking stop strings,
      refilling slots); a stopped row waits at most this many steps for its next sample.
    cache_dtype: dtype of the KV cache (default: the model's compute dtype).
    mesh: optional device mesh (`editseq.sharding.make_mesh`): slots are split over its batch
      axes and parameters placed by their logical axis names, as in training.

  After each `sample` call, `stats` holds `decode_steps` (loop iterations), `slot_steps`
  (decode_steps x slots: the tokens the device computed), `new_tokens` (the completions' tokens)
  and `prefills` (prompt prefills run).
  """

  def __init__(
      self,
      model: nnx.Module,
      *,
      eos_id: int,
      pad_id: int = 0,
      vocab=None,
      valid_vocab_size: int | None = None,
      batch_size: int = 32,
      chunk_size: int = 16,
      cache_dtype=None,
      mesh: jax.sharding.Mesh | None = None,
  ):
    if batch_size < 1 or chunk_size < 1:
      raise ValueError("batch_size and chunk_size must be >= 1")
    if isinstance(model, model_lib.Transformer):
      model = model_lib.for_decoding(model)  # weights read in place, in the compute dtype
    self._graphdef, params = nnx.split(model)
    self.eos_id = int(eos_id)
    self.pad_id = int(pad_id)
    self.vocab = vocab
    self.valid_vocab_size = valid_vocab_size
    self.batch_size = batch_size
    self.chunk_size = chunk_size
    self.cache_dtype = cache_dtype
    self.mesh = mesh
    self.stats: dict[str, int] = {}
    self._rows_multiple = 1
    if mesh is not None:
      self._rows_multiple = math.prod(mesh.shape[a] for a in sharding.BATCH_AXES)
      params = jax.device_put(params, sharding.state_shardings(params, mesh))
    self._params = params

  # ---------------------------------------------------------------------------------------------
  # Public API.

  def sample_text(
      self,
      prompts: Sequence[str],
      config: SamplingConfig,
      *,
      num_samples: int = 1,
      seed: int = 0,
      stop_sequences: Sequence[Sequence[int]] = (),
      stop_strings: Sequence[str] = (),
      progress: bool = False,
  ) -> list[list[Completion]]:
    """Encodes `prompts` with the vocabulary, samples, and returns decoded completions."""
    if self.vocab is None:
      raise ValueError("sample_text needs the Sampler to be built with a vocab")
    ids = [list(self.vocab.encode(p)) for p in prompts]
    return self.sample(ids, config, num_samples=num_samples, seed=seed,
                       stop_sequences=stop_sequences, stop_strings=stop_strings,
                       progress=progress)

  def sample(
      self,
      prompts: Sequence[Sequence[int]],
      config: SamplingConfig,
      *,
      num_samples: int = 1,
      seed: int = 0,
      stop_sequences: Sequence[Sequence[int]] = (),
      stop_strings: Sequence[str] = (),
      progress: bool = False,
  ) -> list[list[Completion]]:
    """Draws `num_samples` completions per prompt (token ids); result[i][j] is sample j of prompt i.

    Stop sequences are token-id sequences checked on device after every token; stop strings are
    checked on the decoded text between chunks and cut the completion at their first occurrence.
    Texts are decoded only when the Sampler has a vocab.
    """
    if num_samples < 1:
      raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if stop_strings and self.vocab is None:
      raise ValueError("stop strings need the Sampler to be built with a vocab")
    if any(len(p) == 0 for p in prompts):
      raise ValueError("every prompt needs at least one token")
    prompts = [np.asarray(p, np.int32) for p in prompts]
    queue = collections.deque((i, j) for i in range(len(prompts)) for j in range(num_samples))
    results: list[list[Completion | None]] = [[None] * num_samples for _ in prompts]
    if not queue:
      return results
    slots = _round_up(min(self.batch_size, _bucket(len(queue), 1)), self._rows_multiple)
    prefix_len = _bucket(max(len(p) for p in prompts) - 1, 16)
    cache_len = prefix_len + _round_up(config.max_new_tokens, 16)
    table = stop_sequence_table(stop_sequences)
    options = dict(pad_id=self.pad_id, valid_vocab_size=self.valid_vocab_size,
                   greedy=config.greedy, use_top_p=config.top_p < 1, use_min_p=config.min_p > 0)
    scalars = (np.float32(config.temperature or 1.0), np.float32(config.top_p),
               np.float32(config.min_p), np.int32(config.max_new_tokens),
               np.int32(config.min_new_tokens), table, np.int32(self.chunk_size),
               np.int32(self.eos_id))
    left = collections.Counter(i for i, _ in queue)  # samples of each prompt not yet started
    prefixes = {}  # prompt index -> its prefilled cache, kept until its last sample starts
    running: dict[int, tuple[int, int]] = {}  # slot -> (prompt index, sample index)
    position = np.zeros((slots,), np.int64)  # each running slot's next write (== its position)
    free = list(range(slots))
    halt = np.zeros((slots,), bool)
    self.stats = dict(decode_steps=0, slot_steps=0, new_tokens=0, prefills=0)
    bar = _progress_bar(len(queue), progress)
    with jax.set_mesh(self.mesh):  # lets the model's sharding constraints see the mesh
      state = _empty_state(self._graphdef, self._params, slots=slots,
                           cache_len=_view(0, cache_len), new_len=config.max_new_tokens,
                           stop_width=table.shape[1], cache_dtype=self.cache_dtype,
                           pad_id=self.pad_id)
      while queue or running:
        starts = []
        while free and queue:
          i, j = queue.popleft()
          if i not in prefixes:
            prefixes[i] = self._prefill(prompts[i])
          left[i] -= 1
          slot = free.pop(0)
          halt[slot] = False  # the slot's previous sample is replaced instead
          starts.append((slot, i, j, prefixes[i] if left[i] else prefixes.pop(i)))
          running[slot] = (i, j)
          position[slot] = len(prompts[i]) - 1
        reach = int(max(position[slot] for slot in running)) + self.chunk_size
        view = _view(reach, cache_len)  # holds every prefix too: a power of two >= its width
        if view != state["cache"]["slot_pos"].shape[1]:
          state = _resize(state, view=view)
        for slot, i, j, prefix in starts:
          state = _start(state, prefix, np.int32(slot), np.int32(prompts[i][-1]),
                         np.int32(len(prompts[i]) - 1), np.uint32(seed), np.int32(i),
                         np.int32(j))
        state = _decode(self._graphdef, self._params, state, *self._put(halt), *scalars,
                        **options)
        done, count, length, reason, out = (np.asarray(state[k]) for k in (
            "done", "count", "length", "reason", "out"))
        halt[:] = False
        for slot, (i, j) in list(running.items()):
          position[slot] = len(prompts[i]) - 1 + count[slot]
          if done[slot]:
            tokens = out[slot, :length[slot]].tolist()
            finish = _REASONS[int(reason[slot])]
          else:
            tokens, finish = out[slot, :count[slot]].tolist(), None
          completion = self._complete(tokens, finish, stop_strings, config.min_new_tokens)
          if completion is None:
            continue
          halt[slot] = not done[slot]  # stopped by a stop string: the device stops it next call
          results[i][j] = completion
          del running[slot]
          free.append(slot)
          bar.update(1)
      self.stats["decode_steps"] = int(state["step"])
    bar.close()
    self.stats["slot_steps"] = self.stats["decode_steps"] * slots
    self.stats["new_tokens"] = sum(len(c.tokens) for row in results for c in row)
    return results

  # ---------------------------------------------------------------------------------------------
  # Helpers.

  def _prefill(self, prompt: np.ndarray):
    """The cache of `prompt`'s tokens but the last (the decode loop's first input), one row."""
    self.stats["prefills"] += 1
    width = _bucket(len(prompt) - 1, 16)
    tokens = np.full((1, width), self.pad_id, np.int32)
    positions = np.full((1, width), -1, np.int32)
    tokens[0, :len(prompt) - 1] = prompt[:-1]
    positions[0, :len(prompt) - 1] = np.arange(len(prompt) - 1)
    return _prefill(self._graphdef, self._params, tokens, positions,
                    cache_dtype=self.cache_dtype)

  def _complete(self, tokens, finish, stop_strings, min_new) -> Completion | None:
    """The completion of a row that stopped on device (`finish` set) or holds a stop string;
    None when the row runs on."""
    if self.vocab is None:
      return None if finish is None else Completion(tuple(tokens), None, finish)
    found = lambda k: _stop_string_cut(self.vocab, tokens[:k], stop_strings, min_new)
    if stop_strings and found(len(tokens)) >= 0:
      # The shortest prefix holding the stop string: the same whenever the host saw it.
      lo, hi = 0, len(tokens)
      while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if found(mid) >= 0 else (mid + 1, hi)
      tokens = tokens[:lo]
      return Completion(tuple(tokens), self.vocab.decode(tokens)[:found(lo)], "stop")
    if finish is None:
      return None
    return Completion(tuple(tokens), self.vocab.decode(tokens), finish)

  def _put(self, *arrays):
    """Places per-slot host arrays on device (with a mesh, split over its batch axes)."""
    if self.mesh is None:
      return tuple(jnp.asarray(a) for a in arrays)
    spec = lambda a: PartitionSpec(sharding.BATCH_AXES, *([None] * (a.ndim - 1)))
    return tuple(jax.device_put(a, NamedSharding(self.mesh, spec(a))) for a in arrays)


def _view(reach: int, cache_len: int) -> int:
  """Cache slots for a decode chunk whose rows reach position `reach`: the next power of two
  >= `reach` (>= 128), or `cache_len` (the longest prompt plus the budget); few distinct values,
  so few compiled decode loops."""
  return min(cache_len, _bucket(reach, 128))


def _stop_string_cut(vocab, tokens, stop_strings, min_new) -> int:
  """Where the first stop string in the decoded `tokens` begins (-1: none). Occurrences within
  the text of the first `min_new` tokens do not count."""
  text = vocab.decode(tokens)
  head = len(vocab.decode(tokens[:min_new])) if min_new else 0
  found = [i for i in (text.find(s, max(0, head - len(s) + 1)) for s in stop_strings) if i >= 0]
  return min(found, default=-1)


# Module-level jits with the model's graph definition as a static argument: one compiled program
# per (model structure, shapes, static options), shared by every Sampler of that model.
@functools.partial(jax.jit, static_argnums=0, static_argnames=(
    "slots", "cache_len", "new_len", "stop_width", "cache_dtype", "pad_id"))
def _empty_state(graphdef, params, *, slots, cache_len, new_len, stop_width, cache_dtype, pad_id):
  """The decode state with every slot idle (done) and an empty cache."""
  model = nnx.merge(graphdef, params)
  cache = model.init_cache(slots, cache_len, cache_dtype)
  cache["index"] = jnp.zeros((slots,), jnp.int32)  # one write slot per row
  rows = lambda shape, value, dtype=jnp.int32: sharding.constrain(
      jnp.full(shape, value, dtype), ("cache_batch",) + (None,) * (len(shape) - 1))
  return dict(
      cache=_constrain_cache(cache),
      token=rows((slots,), pad_id),
      position=rows((slots,), 0),
      count=rows((slots,), 0),
      out=rows((slots, new_len), pad_id),
      recent=rows((slots, stop_width), -1),
      done=rows((slots,), True, jnp.bool_),
      length=rows((slots,), 0),
      reason=rows((slots,), _RUNNING),
      keys=jax.random.split(jax.random.key(0), slots),
      step=jnp.zeros((), jnp.int32),
  )


def _constrain_cache(cache):
  """The decode state's cache placed by its logical axes (rows over the mesh's batch axes)."""
  axes = model_lib.cache_logical_axes(len(cache["k"]))
  axes["index"] = ("cache_batch",)
  return jax.tree.map(sharding.constrain, cache, axes)


@functools.partial(jax.jit, static_argnames="view")
def _resize(state, *, view):
  """The decode state with its cache cut or grown (empty slots: zeros, position -1) to `view`
  slots; `_view` makes sure every running row's positions are below both sizes. (Not donated:
  no buffer of the old cache has the new one's shape.)"""
  cache = state["cache"]
  fit = lambda x, axis, fill: (
      jax.lax.slice_in_dim(x, 0, view, axis=axis) if x.shape[axis] >= view else
      jnp.pad(x, [(0, view - x.shape[axis]) if a == axis else (0, 0) for a in range(x.ndim)],
              constant_values=fill))
  return dict(state, cache=_constrain_cache(dict(
      cache, k=tuple(fit(k, 3, 0) for k in cache["k"]), v=tuple(fit(v, 2, 0) for v in cache["v"]),
      slot_pos=fit(cache["slot_pos"], 1, -1))))


@functools.partial(jax.jit, static_argnums=0, static_argnames=("cache_dtype",))
def _prefill(graphdef, params, tokens, positions, *, cache_dtype):
  """One prompt's cache (`tokens` right-padded with position -1, so slot == position). Only the
  cache is returned: the logits are dead code, so XLA never materialises the vocabulary
  projection."""
  model = nnx.merge(graphdef, params)
  cache = model.init_cache(tokens.shape[0], tokens.shape[1], cache_dtype)
  _, cache = model(tokens, positions=positions, cache=cache)
  return {"k": cache["k"], "v": cache["v"], "slot_pos": cache["slot_pos"]}


@functools.partial(jax.jit, donate_argnames="state")
def _start(state, prefix, slot, token, position, seed, prompt_index, sample_index):
  """Slot `slot` begins sample `sample_index` of a prompt whose cache is `prefix`; `token` (the
  prompt's last) at `position` is its first decode input."""
  cache = state["cache"]
  slot_pos = jnp.full((1, cache["slot_pos"].shape[1]), -1, jnp.int32)
  slot_pos = jax.lax.dynamic_update_slice_in_dim(slot_pos, prefix["slot_pos"], 0, 1)
  put = lambda buffer, row: jax.lax.dynamic_update_slice_in_dim(
      buffer, row.astype(buffer.dtype), slot, 0)
  one = lambda value: jnp.full((1,), value, jnp.int32)
  key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), prompt_index), sample_index)
  cache = dict(
      k=tuple(put(b, p) for b, p in zip(cache["k"], prefix["k"])),
      v=tuple(put(b, p) for b, p in zip(cache["v"], prefix["v"])),
      slot_pos=put(cache["slot_pos"], slot_pos),
      index=put(cache["index"], one(position)))
  return dict(
      state, cache=cache,
      token=put(state["token"], one(token)),
      position=put(state["position"], one(position)),
      count=put(state["count"], one(0)),
      recent=put(state["recent"], jnp.full((1, state["recent"].shape[1]), -1, jnp.int32)),
      done=put(state["done"], jnp.zeros((1,), jnp.bool_)),
      length=put(state["length"], one(0)),
      reason=put(state["reason"], one(_RUNNING)),
      keys=state["keys"].at[slot].set(key),
  )


@functools.partial(jax.jit, static_argnums=0, donate_argnames="state", static_argnames=(
    "pad_id", "valid_vocab_size", "greedy", "use_top_p", "use_min_p"))
def _decode(graphdef, params, state, halt, temperature, top_p, min_p, max_new, min_new, table,
            steps, eos_id, *, pad_id, valid_vocab_size, greedy, use_top_p, use_min_p):
  """Decodes `steps` steps, or fewer if every slot is done; rows in `halt` stop first. The
  cache must hold every running row's writes (an idle row may write past its end: the write is
  clamped into its own row, which `_start` replaces)."""
  model = nnx.merge(graphdef, params)
  end = state["step"] + steps
  pattern_len = jnp.sum(table != _WILDCARD, axis=1)  # 0 for the placeholder row

  def cond(s):
    return (s["step"] < end) & ~jnp.all(s["done"])

  def body(s):
    n, done = s["count"], s["done"]
    logits, cache = model(s["token"][:, None], positions=s["position"][:, None], cache=s["cache"])
    cache["index"] = jnp.where(done, s["cache"]["index"], cache["index"])
    logits = _mask_vocab(logits[:, -1], valid_vocab_size)
    ids = jax.lax.broadcasted_iota(jnp.int32, logits.shape, 1)
    logits = jnp.where((ids == eos_id) & (n < min_new)[:, None], -jnp.inf, logits)
    keys = jax.vmap(jax.random.fold_in)(s["keys"], n)
    token = choose_tokens(logits, keys, temperature, top_p, min_p, greedy=greedy,
                          use_top_p=use_top_p, use_min_p=use_min_p)
    token = jnp.where(done, pad_id, token)
    recent = jnp.where(done[:, None], s["recent"],
                       jnp.concatenate([s["recent"][:, 1:], token[:, None]], axis=1))
    matches = jnp.all((table[None] == _WILDCARD) | (table[None] == recent[:, None]), axis=2)
    stop_len = jnp.max(jnp.where(matches & (pattern_len > 0)[None], pattern_len[None], 0), axis=1)
    stop_len = jnp.where(n >= min_new, stop_len, 0)
    is_eos = token == eos_id
    stopped = ~done & (is_eos | (stop_len > 0))
    full = ~done & ~stopped & (n + 1 >= max_new)
    rows = jnp.arange(token.shape[0])
    return dict(
        cache=cache,
        token=token,
        position=jnp.where(done, s["position"], s["position"] + 1),
        count=jnp.where(done, n, n + 1),
        out=s["out"].at[rows, jnp.where(done, max_new, n)].set(token, mode="drop"),
        recent=recent,
        done=done | stopped | full,
        length=jnp.where(stopped, n + 1 - jnp.where(is_eos, 1, stop_len),
                         jnp.where(full, n + 1, s["length"])),
        reason=jnp.where(stopped, jnp.where(is_eos, _EOS, _STOP),
                         jnp.where(full, _LENGTH, s["reason"])),
        keys=s["keys"],
        step=s["step"] + 1,
    )

  return jax.lax.while_loop(cond, body, dict(state, done=state["done"] | halt))


def _mask_vocab(logits: jax.Array, valid_vocab_size: int | None) -> jax.Array:
  """Excludes embedding-padding ids (>= valid_vocab_size) from sampling."""
  if valid_vocab_size is None or valid_vocab_size >= logits.shape[-1]:
    return logits
  ids = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
  return jnp.where(ids < valid_vocab_size, logits, -jnp.inf)


def _progress_bar(total: int, enabled: bool):
  import tqdm  # pylint: disable=import-outside-toplevel
  return tqdm.tqdm(total=total, desc="sampling", unit="sample", disable=not enabled)
