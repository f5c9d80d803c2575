"""Batched autoregressive sampling with a KV cache, for pass@k evaluation.

A batch of left-padded prompts (padding has position -1 and is never attended to) is prefilled
in one forward pass, then an on-device `lax.while_loop` decodes one token per step for every row
until each row has stopped (EOS, or a token-level stop sequence such as LintSeq's double
`<|diff|>`) or the token budget is spent; the loop ends as soon as every row is done. When there
are stop *strings* (which do not map to fixed token ids), the loop runs in chunks of `chunk_size`
steps and the host checks the decoded text between chunks, not after every token.

Shapes are bucketed (prompt length to a power of two, new tokens to a multiple of the chunk) and
the compiled prefill/decode programs are cached per bucket, so a whole benchmark compiles a
handful of programs. Every sample draws its randomness from a key derived from
(seed, prompt index, sample index, step) alone, so a sample does not depend on which other rows
share its batch (bit for bit within one prompt-length bucket; across buckets only float rounding
of the longer padded attention differs). Top-p and sampling avoid sorting the vocabulary (XLA's CPU
sort costs more than a 150M model's decode step); see `nucleus_mask` and `choose_tokens`.
"""
from __future__ import annotations

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
_RUNNING, _EOS, _STOP = 0, 1, 2
_REASONS = {_EOS: "eos", _STOP: "stop"}
_WILDCARD = -2  # left padding of the stop-sequence table; matches any token.


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """How to pick tokens. `temperature == 0` is greedy decoding (top_p is then irrelevant)."""

  temperature: float = 1.0
  top_p: float = 1.0
  max_new_tokens: int = 512

  def __post_init__(self):
    if not (self.temperature >= 0 and math.isfinite(self.temperature)):
      raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}")
    if not 0 < self.top_p <= 1:
      raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
    if self.max_new_tokens < 1:
      raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")

  @property
  def greedy(self) -> bool:
    return self.temperature == 0


@dataclasses.dataclass(frozen=True)
class Completion:
  """One sample. `tokens` and `text` exclude the EOS or stop sequence that ended it; a stop string
  cuts `text` at its first occurrence, while `tokens` then run to the end of the decode chunk in
  which it was seen (a string need not end on a token boundary)."""

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
    *,
    greedy: bool,
    use_top_p: bool,
) -> jax.Array:
  """Picks one token per row of `logits` `[B, V]`, row i drawing from `keys[i]` alone.

  Sampling inverts the cumulative distribution with one uniform number per row (`inverse_cdf`):
  far cheaper on CPU than Gumbel-max, which draws V random numbers per row.
  """
  if greedy:
    return first_argmax(logits).astype(jnp.int32)
  probs = jax.nn.softmax(logits.astype(jnp.float32) / temperature, axis=-1)
  if use_top_p:
    probs = jnp.where(nucleus_mask(probs, top_p), probs, 0.0)
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
    pad_id: id written into left padding and after a row stops (never attended to).
    vocab: optional seqio-style vocabulary (`encode`/`decode`); needed for text prompts and stop
      strings.
    valid_vocab_size: ids at or above it (embedding padding) are never sampled.
    batch_size: rows per decode batch (prompts x samples are packed into such batches).
    chunk_size: decode steps between host checks for stop strings (without stop strings the
      whole budget runs in one call; rows finishing on device end the loop early either way).
    cache_dtype: dtype of the KV cache (default: the model's compute dtype).
    mesh: optional device mesh (`editseq.sharding.make_mesh`): rows are split over its batch axes
      and parameters placed by their logical axis names, as in training.
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
      chunk_size: int = 32,
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
    table = stop_sequence_table(stop_sequences)
    # Rows sorted by prompt length so that a batch pads little; each row keeps its own key.
    rows = sorted(((i, j) for i in range(len(prompts)) for j in range(num_samples)),
                  key=lambda r: (-len(prompts[r[0]]), r))
    batch = self._batch_rows(len(rows))
    results: list[list[Completion | None]] = [[None] * num_samples for _ in prompts]
    bar = _progress_bar(len(rows), progress)
    with jax.set_mesh(self.mesh):  # lets the model's sharding constraints see the mesh
      for start in range(0, len(rows), batch):
        chunk = rows[start:start + batch]
        for (i, j), completion in zip(chunk, self._sample_batch(
            prompts, chunk, batch, config, seed, table, stop_strings)):
          results[i][j] = completion
        bar.update(len(chunk))
    bar.close()
    return results

  # ---------------------------------------------------------------------------------------------
  # One batch.

  def _batch_rows(self, num_rows: int) -> int:
    """Rows per compiled batch: batch_size, or fewer (a power of two) for small requests."""
    rows = min(self.batch_size, _bucket(num_rows, 1))
    return _round_up(rows, self._rows_multiple)

  def _sample_batch(self, prompts, row_ids, batch, config, seed, table, stop_strings):
    """Samples the rows `row_ids` ((prompt index, sample index) pairs) as one batch."""
    num_real = len(row_ids)
    # Each distinct prompt is prefilled once; rows gather their copy of its cache.
    unique = list(dict.fromkeys(i for i, _ in row_ids))
    num_unique = min(_bucket(len(unique), 1), batch)
    prompt_len = _bucket(max(len(prompts[i]) for i in unique), 16)
    tokens = np.full((num_unique, prompt_len), self.pad_id, np.int32)
    positions = np.full((num_unique, prompt_len), -1, np.int32)
    for u, i in enumerate(unique):
      tokens[u, prompt_len - len(prompts[i]):] = prompts[i]
      positions[u, prompt_len - len(prompts[i]):] = np.arange(len(prompts[i]))
    source = np.zeros((batch,), np.int32)
    source[:num_real] = [unique.index(i) for i, _ in row_ids]
    ids = np.zeros((batch, 2), np.int32)
    ids[:num_real] = row_ids
    done = np.arange(batch) >= num_real  # filler rows start done
    state = _prefill(
        self._graphdef, self._params, *self._put(tokens, positions, replicated=True),
        *self._put(source, ids, done), np.uint32(seed),
        new_len=_round_up(config.max_new_tokens, self.chunk_size), stop_width=table.shape[1],
        cache_dtype=self.cache_dtype, pad_id=self.pad_id)
    # Without stop strings there is nothing for the host to check: one call runs to the end.
    chunk = self.chunk_size if stop_strings else config.max_new_tokens
    step = 0
    while True:
      step = min(step + chunk, config.max_new_tokens)
      state = _decode(
          self._graphdef, self._params, state, np.float32(config.temperature or 1.0),
          np.float32(config.top_p), np.int32(config.max_new_tokens), table, np.int32(step),
          np.int32(self.eos_id), pad_id=self.pad_id, valid_vocab_size=self.valid_vocab_size,
          greedy=config.greedy, use_top_p=config.top_p < 1)
      done = np.asarray(state["done"])
      if done.all() or step >= config.max_new_tokens:
        break
      if stop_strings:
        state = self._stop_on_strings(state, done, stop_strings)
    return self._collect(state, num_real, stop_strings)

  def _stop_on_strings(self, state, done, stop_strings):
    """Marks rows whose text so far holds a stop string as done (cut later in _collect)."""
    out = np.asarray(state["out"])
    step = int(state["step"])
    hit = np.array([not d and any(s in self.vocab.decode(out[r, :step].tolist())
                                  for s in stop_strings) for r, d in enumerate(done)])
    if not hit.any():
      return state
    (hit_rows,) = self._put(hit)
    return dict(state, done=state["done"] | hit_rows,
                length=jnp.where(hit_rows, step, state["length"]),
                reason=jnp.where(hit_rows, _STOP, state["reason"]))

  def _collect(self, state, num_real, stop_strings) -> list[Completion]:
    out, done, length, reason = (np.asarray(state[k]) for k in ("out", "done", "length", "reason"))
    step = int(state["step"])
    completions = []
    for r in range(num_real):
      n = int(length[r]) if done[r] else step
      tokens = out[r, :n].tolist()
      finish = _REASONS[int(reason[r])] if done[r] else "length"
      text = None
      if self.vocab is not None:
        text = self.vocab.decode(tokens)
        cut = min((i for i in (text.find(s) for s in stop_strings) if i >= 0), default=-1)
        if cut >= 0:
          text, finish = text[:cut], "stop"
      completions.append(Completion(tuple(tokens), text, finish))
    return completions

  def _put(self, *arrays, replicated: bool = False):
    """Places host arrays on device: with a mesh, rows split over its batch axes (or copied to
    every device when `replicated`)."""
    if self.mesh is None:
      return tuple(jnp.asarray(a) for a in arrays)
    spec = lambda a: PartitionSpec() if replicated else PartitionSpec(
        sharding.BATCH_AXES, *([None] * (a.ndim - 1)))
    return tuple(jax.device_put(a, NamedSharding(self.mesh, spec(a))) for a in arrays)


# Module-level jits with the model's graph definition as a static argument: one compiled program
# per (model structure, shapes, static options), shared by every Sampler of that model.
@functools.partial(jax.jit, static_argnums=0,
                   static_argnames=("new_len", "stop_width", "cache_dtype", "pad_id"))
def _prefill(graphdef, params, tokens, positions, source, ids, done, seed, *, new_len,
             cache_dtype, pad_id, stop_width):
  """Fills the cache with all prompt tokens but the last and returns the initial decode state.

  `tokens`/`positions` hold the batch's distinct prompts; row r of the batch continues prompt
  `source[r]`, so n samples of one prompt cost one prefill. The last prompt token is the decode
  loop's first input: the prefill's logits are then dead code, so XLA never materialises the
  `[batch, prompt, vocab]` projection.
  """
  prompt_len = tokens.shape[1]
  batch = source.shape[0]
  model = nnx.merge(graphdef, params)
  cache = model.init_cache(tokens.shape[0], prompt_len - 1 + new_len, cache_dtype)
  _, cache = model(tokens[:, :-1], positions=positions[:, :-1], cache=cache)

  def rows(x, axes):  # the batch's rows of a cache array, laid out by its logical axes
    if "cache_batch" in axes:
      x = jnp.take(x, source, axis=axes.index("cache_batch"))
    return sharding.constrain(x, axes)

  cache = jax.tree.map(rows, cache, model_lib.cache_logical_axes(len(cache["k"])))
  base = jax.random.key(seed)
  keys = jax.vmap(lambda i, j: jax.random.fold_in(jax.random.fold_in(base, i), j))(
      ids[:, 0], ids[:, 1])
  return dict(
      cache=cache,
      token=tokens[source, -1],
      position=positions[source, -1],
      out=jnp.full((batch, new_len), pad_id, jnp.int32),
      recent=jnp.full((batch, stop_width), -1, jnp.int32),
      step=jnp.zeros((), jnp.int32),
      done=done,
      length=jnp.zeros((batch,), jnp.int32),
      reason=jnp.full((batch,), _RUNNING, jnp.int32),
      keys=keys,
  )


@functools.partial(jax.jit, static_argnums=0, donate_argnames="state",
                   static_argnames=("pad_id", "valid_vocab_size", "greedy", "use_top_p"))
def _decode(graphdef, params, state, temperature, top_p, max_new, table, chunk_end, eos_id, *,
            pad_id, valid_vocab_size, greedy, use_top_p):
  """Decodes until `min(chunk_end, max_new)` tokens exist or every row is done."""
  model = nnx.merge(graphdef, params)
  end = jnp.minimum(chunk_end, max_new)
  pattern_len = jnp.sum(table != _WILDCARD, axis=1)  # 0 for the placeholder row

  def cond(s):
    return (s["step"] < end) & ~jnp.all(s["done"])

  def body(s):
    t = s["step"]
    logits, cache = model(s["token"][:, None], positions=s["position"][:, None], cache=s["cache"])
    logits = _mask_vocab(logits[:, -1], valid_vocab_size)
    keys = jax.vmap(jax.random.fold_in, (0, None))(s["keys"], t)
    token = choose_tokens(logits, keys, temperature, top_p, greedy=greedy, use_top_p=use_top_p)
    token = jnp.where(s["done"], pad_id, token)
    recent = jnp.concatenate([s["recent"][:, 1:], token[:, None]], axis=1)
    matches = jnp.all((table[None] == _WILDCARD) | (table[None] == recent[:, None]), axis=2)
    stop_len = jnp.max(jnp.where(matches & (pattern_len > 0)[None], pattern_len[None], 0), axis=1)
    is_eos = token == eos_id
    newly = ~s["done"] & (is_eos | (stop_len > 0))
    kept = t + 1 - jnp.where(is_eos, 1, stop_len)
    return dict(
        cache=cache,
        token=token,
        position=s["position"] + 1,
        out=s["out"].at[:, t].set(token),
        recent=recent,
        step=t + 1,
        done=s["done"] | newly,
        length=jnp.where(newly, kept, s["length"]),
        reason=jnp.where(newly, jnp.where(is_eos, _EOS, _STOP), s["reason"]),
        keys=s["keys"],
    )

  return jax.lax.while_loop(cond, body, state)


def _mask_vocab(logits: jax.Array, valid_vocab_size: int | None) -> jax.Array:
  """Excludes embedding-padding ids (>= valid_vocab_size) from sampling."""
  if valid_vocab_size is None or valid_vocab_size >= logits.shape[-1]:
    return logits
  ids = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
  return jnp.where(ids < valid_vocab_size, logits, -jnp.inf)


def _progress_bar(total: int, enabled: bool):
  import tqdm  # pylint: disable=import-outside-toplevel
  return tqdm.tqdm(total=total, desc="sampling", unit="sample", disable=not enabled)
