"""eval.sampler: KV-cache sampling against the plain full-forward computation.

One small random model (weights large enough that greedy outputs vary) and one Sampler are shared
by the tests; prompts stay within one length bucket so that the suite compiles few programs.
"""
import collections
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from editseq import sharding
from editseq import tokenizer
from editseq.model import ModelConfig, Transformer
from eval import sampler as sampler_lib
from eval.sampler import (Sampler, SamplingConfig, choose_tokens, first_argmax, inverse_cdf,
                          nucleus_mask, stop_sequence_table)

VOCAB = 512
EOS = 1
MAX_NEW = 24


@pytest.fixture(scope="module")
def model():
  cfg = ModelConfig(vocab_size=VOCAB, num_layers=2, d_model=64, num_heads=4, num_kv_heads=2,
                    mlp_dim=128, dtype="float32", init_std=0.3)
  return Transformer(cfg, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def sampler(model):
  return Sampler(model, eos_id=EOS, batch_size=4, chunk_size=8)


@pytest.fixture(scope="module")
def prompts():
  """Mixed lengths (1..16 tokens: one bucket), more rows than one batch."""
  rng = np.random.default_rng(0)
  return [rng.integers(3, VOCAB, n).tolist() for n in (5, 16, 1, 9, 12, 3)]


_LOGITS_AT = {}


def full_forward_greedy(model, prompt, max_new, eos_id, min_new=0):
  """The reference: one unbatched sequence, re-run through the whole model for every new token
  (EOS excluded from the first `min_new` tokens).

  The sequence is right-padded to a fixed length (causal attention: padding after a position
  cannot change its logits) so that the reference compiles once.
  """
  if id(model) not in _LOGITS_AT:
    _LOGITS_AT[id(model)] = jax.jit(lambda tokens, i: model(tokens)[0, i])
  logits_at = _LOGITS_AT[id(model)]
  tokens, out = list(prompt), []
  for _ in range(max_new):
    padded = np.zeros((1, 64), np.int32)
    padded[0, :len(tokens)] = tokens
    logits = logits_at(padded, len(tokens) - 1)
    if len(out) < min_new:
      logits = logits.at[eos_id].set(-jnp.inf)
    token = int(jnp.argmax(logits))
    if token == eos_id:
      return out, "eos"
    tokens.append(token)
    out.append(token)
  return out, "length"


@pytest.fixture(scope="module")
def greedy_reference(model, prompts):
  """(tokens, finish reason) per prompt."""
  return [full_forward_greedy(model, p, MAX_NEW, EOS) for p in prompts]


def test_greedy_matches_full_forward(sampler, prompts, greedy_reference):
  got = sampler.sample(prompts, SamplingConfig(temperature=0, max_new_tokens=MAX_NEW))
  assert [(list(c.tokens), c.finish_reason) for (c,) in got] == greedy_reference
  assert any(len(set(ref)) > 5 for ref, _ in greedy_reference), "outputs too degenerate"


def test_eos_stops_rows_and_matches_full_forward(model, prompts, greedy_reference):
  eos = mid_way_eos(greedy_reference)
  sampler = Sampler(model, eos_id=eos, batch_size=4, chunk_size=8)
  got = sampler.sample(prompts, SamplingConfig(temperature=0, max_new_tokens=MAX_NEW))
  reasons = set()
  for prompt, (completion,) in zip(prompts, got):
    ref, reason = full_forward_greedy(model, prompt, MAX_NEW, eos)
    assert (list(completion.tokens), completion.finish_reason) == (ref, reason)
    reasons.add(reason)
  assert reasons == {"eos", "length"}


def test_token_stop_sequences(sampler, prompts, greedy_reference):
  row = max(range(len(prompts)), key=lambda i: len(greedy_reference[i][0]))
  ref = greedy_reference[row][0]
  stop = ref[10:13]  # e.g. LintSeq's [<|diff|>, "\n", <|diff|>]
  first = next(i for i in range(len(ref)) if ref[i:i + 3] == stop)
  got = sampler.sample(prompts, SamplingConfig(temperature=0, max_new_tokens=MAX_NEW),
                       stop_sequences=[[VOCAB + 5], stop])[row][0]
  assert list(got.tokens) == ref[:first]
  assert got.finish_reason == "stop"


def test_stop_strings_cut_text_and_end_early(model, tmp_path):
  sources = [p.read_text() for p in sorted((tokenizer.stdlib_root() / "json").glob("*.py"))]
  vocab = tokenizer.load_vocabulary(
      tokenizer.train_tokenizer(sources, tmp_path / "tokenizer.json", vocab_size=VOCAB))
  sampler = Sampler(model, eos_id=vocab.eos_id, vocab=vocab, batch_size=4, chunk_size=8)
  config = SamplingConfig(temperature=0, max_new_tokens=MAX_NEW)
  prompt = "def decode(s):\n    return"
  full = sampler.sample_text([prompt] * 4, config)[0][0]
  assert full.finish_reason == "length" and len(full.text) > 20
  stop = full.text[len(full.text) // 4:len(full.text) // 4 + 3]
  got = sampler.sample_text([prompt] * 4, config, stop_strings=["never appears", stop])[0][0]
  assert got.text == full.text[:full.text.find(stop)]
  assert got.finish_reason == "stop"
  # Tokens: the shortest prefix holding the stop string, whatever chunk the host saw it in.
  assert stop in vocab.decode(list(got.tokens)) and stop not in vocab.decode(list(got.tokens[:-1]))
  other = Sampler(model, eos_id=vocab.eos_id, vocab=vocab, batch_size=2, chunk_size=3)
  assert other.sample_text([prompt] * 4, config, stop_strings=[stop])[0][0] == got
  assert other.stats["decode_steps"] < 2 * config.max_new_tokens  # stopped early
  # An occurrence inside the first min_new_tokens does not count.
  min_new = len(got.tokens)
  late = other.sample_text([prompt], dataclasses.replace(config, min_new_tokens=min_new),
                           stop_strings=[stop])[0][0]
  later = full.text.find(stop, len(vocab.decode(list(full.tokens[:min_new]))) - len(stop) + 1)
  assert late.text == (full.text if later < 0 else full.text[:later])


def test_samples_depend_only_on_seed_prompt_and_sample_index(model, sampler, prompts):
  config = SamplingConfig(temperature=1.0, top_p=0.9, max_new_tokens=MAX_NEW)
  together = sampler.sample(prompts, config, num_samples=3, seed=7)
  again = sampler.sample(prompts, config, num_samples=3, seed=7)
  assert together == again
  # Prompt 0 in another batch composition (alone with a filler row): same samples.
  alone = sampler.sample(prompts[:1], config, num_samples=3, seed=7)
  assert alone[0] == together[0]
  assert len({c.tokens for c in together[0]}) == 3  # samples of one prompt differ
  other_seed = sampler.sample(prompts[:1], config, num_samples=3, seed=8)
  assert other_seed[0] != together[0]


def mid_way_eos(greedy_reference):
  """An EOS id that greedy decoding emits mid-way in some rows but not in others."""
  return max(greedy_reference, key=lambda r: len(r[0]))[0][MAX_NEW // 2]


SAMPLED = SamplingConfig(temperature=1.0, top_p=0.9, max_new_tokens=MAX_NEW)


def frequent_tokens(model, prompts):
  """The two most frequent tokens of 3 samples per prompt: as EOS, they end rows at mixed
  lengths."""
  unbounded = Sampler(model, eos_id=-1, batch_size=4, chunk_size=8).sample(
      prompts, SAMPLED, num_samples=3, seed=5)
  counts = collections.Counter(t for row in unbounded for c in row for t in c.tokens)
  return [token for token, _ in counts.most_common(2)]


@pytest.mark.parametrize("batch_size, chunk_size", [(1, 3), (2, 1), (3, 8), (8, 5)])
def test_samples_do_not_depend_on_slots_or_when_they_free_up(
    model, prompts, greedy_reference, batch_size, chunk_size):
  # Rows of mixed lengths (EOS mid-way, a stop sequence) so that slots free up at different
  # steps and are refilled in an order that depends on the batch size and chunk.
  eos, other = frequent_tokens(model, prompts)
  kwargs = dict(num_samples=3, seed=5, stop_sequences=[[other, other]])
  reference = Sampler(model, eos_id=eos, batch_size=4, chunk_size=8).sample(
      prompts, SAMPLED, **kwargs)
  assert len({len(c.tokens) for row in reference for c in row}) > 3  # lengths really differ
  got = Sampler(model, eos_id=eos, batch_size=batch_size, chunk_size=chunk_size).sample(
      prompts, SAMPLED, **kwargs)
  assert got == reference


def test_chunks_attend_over_the_live_part_of_a_long_cache(model, prompts, monkeypatch):
  """A 200-token budget (a 224-slot cache) with rows of mixed lengths: chunks attend over the
  first 128 slots until a running row reaches them, again after it ends (its slot refilled),
  and every sample equals the one drawn attending over the whole cache."""
  eos, _ = frequent_tokens(model, prompts)
  config = dataclasses.replace(SAMPLED, max_new_tokens=200)
  draw = lambda: Sampler(model, eos_id=eos, batch_size=2, chunk_size=8).sample(
      prompts, config, num_samples=3, seed=5)
  views, real = [], sampler_lib._view
  monkeypatch.setattr(sampler_lib, "_view", lambda *a: views.append(real(*a)) or views[-1])
  got = draw()
  lengths = [len(c.tokens) for row in got for c in row]
  assert min(lengths) < 20 and max(lengths) == 200
  assert set(views) == {128, 224} and 128 in views[views.index(224):]
  monkeypatch.setattr(sampler_lib, "_view", lambda reach, cache_len: cache_len)
  assert draw() == got


def test_a_stopped_row_takes_the_next_sample_instead_of_waiting(model, prompts, greedy_reference):
  eos, _ = frequent_tokens(model, prompts)
  sampler = Sampler(model, eos_id=eos, batch_size=4, chunk_size=1)
  got = sampler.sample(prompts, SAMPLED, num_samples=3, seed=5)
  steps = [len(c.tokens) + (c.finish_reason == "eos") for row in got for c in row]
  # Fixed batches of 4 rows in queue order would each decode until their longest row is done.
  fixed = sum(max(steps[i:i + 4]) for i in range(0, len(steps), 4))
  assert sampler.stats["decode_steps"] < fixed
  # With one step per chunk no slot idles while work is queued: at most the even share of
  # the work plus one longest sample.
  assert sampler.stats["decode_steps"] <= sum(steps) / 4 + max(steps)
  assert sampler.stats["prefills"] == len(prompts)  # n samples of a prompt share its prefill
  assert sampler.stats["new_tokens"] == sum(len(c.tokens) for row in got for c in row)


def test_min_new_tokens_suppresses_early_eos(model, prompts, greedy_reference):
  eos = mid_way_eos(greedy_reference)
  early = [(i, ref.index(eos)) for i, (ref, _) in enumerate(greedy_reference) if eos in ref]
  assert early, "the EOS id must occur in some greedy row"
  min_new = max(at for _, at in early) + 2
  sampler = Sampler(model, eos_id=eos, batch_size=4, chunk_size=8)
  got = sampler.sample(prompts, SamplingConfig(temperature=0, max_new_tokens=MAX_NEW,
                                               min_new_tokens=min_new))
  for prompt, (completion,) in zip(prompts, got):
    assert (list(completion.tokens), completion.finish_reason) == full_forward_greedy(
        model, prompt, MAX_NEW, eos, min_new)
    assert len(completion.tokens) >= min_new


def test_min_new_tokens_ignores_early_stop_sequences(sampler, prompts, greedy_reference):
  row = max(range(len(prompts)), key=lambda i: len(greedy_reference[i][0]))
  ref = greedy_reference[row][0]
  stop = ref[2:4]
  first = next(i for i in range(len(ref)) if ref[i:i + 2] == stop)  # ends at index first + 1
  later = next((i for i in range(first + 1, len(ref)) if ref[i:i + 2] == stop), None)
  config = SamplingConfig(temperature=0, max_new_tokens=MAX_NEW, min_new_tokens=first + 2)
  got = sampler.sample(prompts, config, stop_sequences=[stop])[row][0]
  if later is None:
    assert (list(got.tokens), got.finish_reason) == (ref, "length")
  else:
    assert (list(got.tokens), got.finish_reason) == (ref[:later], "stop")


def test_greedy_matches_transformers_generate_with_eos_and_min_new_tokens():
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from editseq import hf_convert, model as model_lib  # pylint: disable=import-outside-toplevel
  torch.manual_seed(0)
  hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
      vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, initializer_range=0.3,
      tie_word_embeddings=True, pad_token_id=0)).eval()
  cfg, params = hf_convert.from_torch_model(hf, dtype="float32")
  graphdef, state = nnx.split(model_lib.abstract_model(cfg), nnx.Param)
  nnx.replace_by_pure_dict(state, params)
  ours = nnx.merge(graphdef, state)
  rng = np.random.default_rng(1)
  prompts = [rng.integers(3, VOCAB, n).tolist() for n in (4, 11, 7, 2, 15)]

  def generate(prompt, eos, min_new):
    with torch.no_grad():
      out = hf.generate(torch.as_tensor([prompt]), max_new_tokens=MAX_NEW, do_sample=False,
                        min_new_tokens=min_new, eos_token_id=eos, pad_token_id=0)
    tokens = out[0, len(prompt):].tolist()
    return (tokens[:-1], "eos") if tokens[-1] == eos and len(tokens) > min_new else (
        tokens, "length")

  unbounded = [generate(p, -1, 0)[0] for p in prompts]
  eos = max(unbounded, key=len)[MAX_NEW // 3]
  for min_new in (0, 6):
    sampler = Sampler(ours, eos_id=eos, batch_size=2, chunk_size=4)
    got = sampler.sample(prompts, SamplingConfig(temperature=0, max_new_tokens=MAX_NEW,
                                                 min_new_tokens=min_new))
    expected = [generate(p, eos, min_new) for p in prompts]
    assert [(list(c.tokens), c.finish_reason) for (c,) in got] == expected
    assert {reason for _, reason in expected} == {"eos", "length"}


def test_tiny_temperature_is_greedy(sampler, prompts, greedy_reference):
  got = sampler.sample(prompts, SamplingConfig(temperature=1e-4, max_new_tokens=MAX_NEW))
  assert [(list(c.tokens), c.finish_reason) for (c,) in got] == greedy_reference


def test_sharded_sampling_matches_single_device(model, sampler, prompts):
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  sharded = Sampler(model, eos_id=EOS, batch_size=8, chunk_size=8, mesh=mesh)
  config = SamplingConfig(temperature=1.0, top_p=0.9, max_new_tokens=MAX_NEW)
  assert sharded.sample(prompts, config, num_samples=2, seed=3) == sampler.sample(
      prompts, config, num_samples=2, seed=3)


def smallest_nucleus(logits: np.ndarray, p: float) -> set[int]:
  """Brute force in float64: the most likely tokens, added until their mass reaches p."""
  probs = np.exp(logits - logits.max())
  probs /= probs.sum()
  kept, mass = set(), 0.0
  for i in np.argsort(-probs, kind="stable"):
    kept.add(int(i))
    mass += probs[i]
    if mass >= p:
      return kept
  return kept


@pytest.mark.parametrize("top_p", [0.05, 0.3, 0.5, 0.9, 0.95, 0.999])
def test_nucleus_is_the_smallest_set_reaching_p(top_p):
  rng = np.random.default_rng(int(top_p * 1000))
  logits = rng.normal(size=(16, 300)) * rng.uniform(0.5, 4, size=(16, 1))
  probs = jax.nn.softmax(jnp.asarray(logits, jnp.float32), axis=-1)
  kept = np.asarray(nucleus_mask(probs, top_p))
  for row, kept_row in zip(logits, kept):
    assert set(np.flatnonzero(kept_row)) == smallest_nucleus(row, top_p)


def test_nucleus_edge_cases():
  probs = jax.nn.softmax(jnp.asarray(np.random.default_rng(1).normal(size=(4, 50)), jnp.float32))
  assert np.asarray(nucleus_mask(probs, 1.0)).all()
  tiny = np.asarray(nucleus_mask(probs, 1e-9))
  assert (tiny.sum(axis=1) == 1).all()
  assert (np.argmax(tiny, axis=1) == np.argmax(np.asarray(probs), axis=1)).all()
  # Ties at the threshold are all kept; zero-probability tokens never are.
  tied = jnp.asarray([[0.4, 0.2, 0.2, 0.2, 0.0]])
  assert np.asarray(nucleus_mask(tied, 0.5)).tolist() == [[True, True, True, True, False]]


def test_first_argmax_is_argmax_with_ties_to_the_first():
  x = jnp.asarray(np.random.default_rng(0).integers(0, 5, size=(64, 300)), jnp.float32)
  np.testing.assert_array_equal(first_argmax(x), jnp.argmax(x, axis=-1))
  assert first_argmax(jnp.asarray([[-jnp.inf, 2.0, 2.0, -1.0]])).tolist() == [1]


@pytest.mark.parametrize("vocab", [1, 127, 300, 1024])
def test_inverse_cdf_matches_a_flat_cumulative_sum(vocab):
  rng = np.random.default_rng(vocab)
  weights = rng.exponential(size=(256, vocab)) * (rng.uniform(size=(256, vocab)) < 0.3)
  weights[:, rng.integers(0, vocab)] += 1.0  # no all-zero row
  u = rng.uniform(size=256)
  got = np.asarray(inverse_cdf(jnp.asarray(weights, jnp.float32), jnp.asarray(u, jnp.float32)))
  cdf = np.cumsum(weights, axis=1)
  expected = np.array([np.searchsorted(c, x * c[-1], side="right") for c, x in zip(cdf, u)])
  # Block sums round differently from one long sum: allow a neighbour only at a boundary.
  off = got != expected
  assert off.mean() < 0.01
  assert (weights[np.arange(256), got] > 0).all()


def test_inverse_cdf_never_returns_a_zero_weight_token():
  weights = np.zeros((4, 500), np.float32)
  weights[0, 3] = 1.0  # first block only
  weights[1, 499] = 1e-30  # last (padded) block only, tiny
  weights[2, [130, 131]] = [0.5, 0.5]
  weights[3, :] = 1.0 / 500
  w = jnp.asarray(weights)
  for u in (0.0, 0.5, np.nextafter(np.float32(1), np.float32(0))):
    got = np.asarray(inverse_cdf(w, jnp.full((4,), u, jnp.float32)))
    assert (weights[np.arange(4), got] > 0).all(), (u, got)
  assert np.asarray(inverse_cdf(w, jnp.zeros((4,), jnp.float32))).tolist() == [3, 499, 130, 0]


def test_sampled_frequencies_follow_temperature_and_top_p():
  logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))
  n = 20000
  keys = jax.random.split(jax.random.key(0), n)
  draw = jax.jit(lambda k, t, p: choose_tokens(jnp.repeat(logits, n, 0), k, t, p,
                                               greedy=False, use_top_p=True))
  freq = np.bincount(np.asarray(draw(keys, 1.0, 1.0)), minlength=4) / n
  np.testing.assert_allclose(freq, [0.5, 0.3, 0.15, 0.05], atol=0.015)
  # Temperature 0.5 squares the probabilities (then renormalises).
  sq = np.array([0.5, 0.3, 0.15, 0.05]) ** 2
  freq = np.bincount(np.asarray(draw(keys, 0.5, 1.0)), minlength=4) / n
  np.testing.assert_allclose(freq, sq / sq.sum(), atol=0.015)
  # top_p 0.7: the nucleus is {0.5, 0.3}, renormalised.
  freq = np.bincount(np.asarray(draw(keys, 1.0, 0.7)), minlength=4) / n
  np.testing.assert_allclose(freq, [0.625, 0.375, 0, 0], atol=0.015)
  # min_p 0.5: tokens at least half as likely as the top one, {0.5, 0.3}; 0.2 keeps 0.15 too.
  draw_min_p = jax.jit(lambda k, m: choose_tokens(jnp.repeat(logits, n, 0), k, 1.0, 1.0, m,
                                                  greedy=False, use_top_p=False, use_min_p=True))
  freq = np.bincount(np.asarray(draw_min_p(keys, 0.5)), minlength=4) / n
  np.testing.assert_allclose(freq, [0.625, 0.375, 0, 0], atol=0.015)
  freq = np.bincount(np.asarray(draw_min_p(keys, 0.2)), minlength=4) / n
  np.testing.assert_allclose(freq, [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0], atol=0.015)


def test_stop_sequence_table_right_aligns_with_wildcards():
  table = stop_sequence_table([[7], [2, 5, 2]])
  w = [-2] * 5
  assert table.tolist() == [w + [-2, -2, 7], w + [2, 5, 2], w + [-2] * 3, w + [-2] * 3]
  assert stop_sequence_table([]).tolist() == [[-2] * 8] * 4


@pytest.mark.parametrize("kwargs, message", [
    (dict(temperature=-1.0), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(max_new_tokens=4, min_new_tokens=5), "min_new_tokens"),
    (dict(min_new_tokens=-1), "min_new_tokens"),
    (dict(min_p=1.0), "min_p"),
    (dict(min_p=-0.1), "min_p"),
])
def test_bad_sampling_config(kwargs, message):
  with pytest.raises(ValueError, match=message):
    SamplingConfig(**kwargs)


def test_bad_requests(sampler):
  config = SamplingConfig(max_new_tokens=4)
  with pytest.raises(ValueError, match="at least one token"):
    sampler.sample([[5], []], config)
  with pytest.raises(ValueError, match="num_samples"):
    sampler.sample([[5]], config, num_samples=0)
  with pytest.raises(ValueError, match="vocab"):
    sampler.sample([[5]], config, stop_strings=["\ndef "])
  with pytest.raises(ValueError, match="empty"):
    sampler.sample([[5]], config, stop_sequences=[[]])
