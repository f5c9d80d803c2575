"""Logit parity with `transformers`' PyTorch models (fp32), through editseq.hf_convert.

Small random models of each supported family are built locally (no downloads), with noise added
to the norm weights so that a wrong norm mapping cannot hide behind all-ones scales.
"""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from editseq import hf_convert  # noqa: E402
from editseq import model as model_lib  # noqa: E402

VOCAB = 101
COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_attention_heads=4,
              initializer_range=0.1, pad_token_id=0, bos_token_id=1, eos_token_id=2)
FAMILIES = {
    # GQA and Llama 3.1's rope scaling (original context short enough to matter here).
    "llama": lambda: transformers.LlamaConfig(
        **COMMON, num_hidden_layers=2, num_key_value_heads=2, rope_theta=500.0,
        rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                          high_freq_factor=4.0, original_max_position_embeddings=16)),
    # Non-parametric LayerNorm, tied embeddings.
    "olmo": lambda: transformers.OlmoConfig(**COMMON, num_hidden_layers=2,
                                            tie_word_embeddings=True),
    # Softcaps, sliding window on even layers, post-norms, GeGLU, embedding scaling, head_dim 12.
    "gemma2": lambda: transformers.Gemma2Config(
        **COMMON, num_hidden_layers=3, num_key_value_heads=2, head_dim=12,
        query_pre_attn_scalar=10, sliding_window=4, attn_logit_softcapping=2.0,
        final_logit_softcapping=3.0),
    # Fused qkv / gate_up, sliding window on every layer.
    "phi3": lambda: transformers.Phi3Config(**COMMON, num_hidden_layers=2, num_key_value_heads=2,
                                            sliding_window=5),
}
ATOL = 1e-4


@pytest.fixture(autouse=True)
def exact_matmuls():
  """fp32 tolerances hold on GPUs too (XLA would use TF32 there by default)."""
  with jax.default_matmul_precision("highest"):
    yield


def hf_model(family, seed=0):
  torch.manual_seed(seed)
  model = transformers.AutoModelForCausalLM.from_config(FAMILIES[family](),
                                                        attn_implementation="eager").eval()
  with torch.no_grad():
    for name, param in model.named_parameters():
      if "norm" in name:
        param.add_(0.3 * torch.randn_like(param))
  return model


def to_ours(hf):
  cfg, params = hf_convert.from_torch_model(hf, dtype="float32")
  graphdef, state = nnx.split(model_lib.abstract_model(cfg), nnx.Param)
  nnx.replace_by_pure_dict(state, params)
  return nnx.merge(graphdef, state)


@nnx.jit
def run(model, tokens, positions=None, segment_ids=None, cache=None):
  return model(tokens, positions=positions, segment_ids=segment_ids, cache=cache)


def hf_logits(hf, ids):
  with torch.no_grad():
    return hf(torch.as_tensor(np.asarray(ids), dtype=torch.long)).logits.numpy()


def random_ids(shape, seed=1):
  return np.random.default_rng(seed).integers(3, VOCAB, size=shape)


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def pair(request):
  hf = hf_model(request.param)
  return request.param, hf, to_ours(hf)


def test_logits_match(pair):
  _, hf, ours = pair
  ids = random_ids((2, 12))
  np.testing.assert_allclose(run(ours, jnp.asarray(ids)), hf_logits(hf, ids), atol=ATOL)


def test_packed_rows_match_separate_runs(pair):
  _, hf, ours = pair
  lengths = (7, 3, 4)
  parts = [random_ids((1, n), seed=10 + i) for i, n in enumerate(lengths)]
  packed = np.concatenate(parts + [np.zeros((1, 2), np.int64)], axis=1)
  segment_ids = np.concatenate([np.full(n, i + 1) for i, n in enumerate(lengths)] + [[0, 0]])
  positions = np.concatenate([np.arange(n) for n in lengths] + [[0, 1]])
  logits = run(ours, jnp.asarray(packed), positions=jnp.asarray(positions[None]),
               segment_ids=jnp.asarray(segment_ids[None]))
  start = 0
  for part, n in zip(parts, lengths):
    np.testing.assert_allclose(logits[:, start:start + n], hf_logits(hf, part), atol=ATOL)
    start += n


def greedy_decode(model, prompts, positions, new_tokens):
  """Greedy decoding with our KV cache: prefill, then one token per step."""
  batch, prompt_len = prompts.shape
  cache = model.init_cache(batch, prompt_len + new_tokens, jnp.float32)
  logits, cache = run(model, prompts, positions=positions, cache=cache)
  next_pos = positions[:, -1:] + 1
  out, step_logits = [], [logits[:, -1]]
  for _ in range(new_tokens):
    token = jnp.argmax(step_logits[-1], axis=-1)[:, None].astype(jnp.int32)
    out.append(token)
    logits, cache = run(model, token, positions=next_pos, cache=cache)
    step_logits.append(logits[:, -1])
    next_pos = next_pos + 1
  return np.asarray(jnp.concatenate(out, axis=1)), np.stack(step_logits[:-1], axis=1)


def test_kv_cache_greedy_decoding_matches_generate(pair):
  family, hf, ours = pair
  prompt, new = random_ids((2, 5), seed=3), 8  # 13 > the sliding windows of gemma2 / phi3
  positions = jnp.broadcast_to(jnp.arange(5, dtype=jnp.int32), (2, 5))
  tokens, logits = greedy_decode(ours, jnp.asarray(prompt, jnp.int32), positions, new)
  with torch.no_grad():
    generated = hf.generate(torch.as_tensor(prompt), max_new_tokens=new, do_sample=False,
                            min_new_tokens=new, pad_token_id=0)
  np.testing.assert_array_equal(tokens, generated[:, 5:].numpy(), err_msg=family)
  full = hf_logits(hf, generated.numpy())
  np.testing.assert_allclose(logits, full[:, 4:-1], atol=ATOL)


def test_left_padded_batch_matches_generate():
  hf = hf_model("llama")
  ours = to_ours(hf)
  prompt = random_ids((2, 6), seed=4)
  mask = np.ones_like(prompt)
  prompt[0, :2], mask[0, :2] = 0, 0  # row 0: 2 pad tokens, then a 4-token prompt
  positions = np.where(mask > 0, np.cumsum(mask, axis=1) - 1, -1)
  tokens, _ = greedy_decode(ours, jnp.asarray(prompt, jnp.int32),
                            jnp.asarray(positions, jnp.int32), 6)
  with torch.no_grad():
    generated = hf.generate(torch.as_tensor(prompt), attention_mask=torch.as_tensor(mask),
                            max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0)
  np.testing.assert_array_equal(tokens, generated[:, 6:].numpy())


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_load_params_from_saved_folder(tmp_path, dtype):
  hf = hf_model("gemma2").to(getattr(torch, dtype))
  hf.save_pretrained(tmp_path, safe_serialization=True)
  cfg = hf_convert.model_config_from_hf(hf_convert.read_hf_config(tmp_path), dtype="float32")
  loaded = hf_convert.load_params(tmp_path, cfg)
  _, expected = hf_convert.from_torch_model(hf, dtype="float32")
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), loaded, expected)
  assert {x.dtype for x in jax.tree.leaves(loaded)} == {np.dtype("float32")}


def test_load_params_rejects_a_different_architecture(tmp_path):
  hf = hf_model("olmo")
  hf.save_pretrained(tmp_path, safe_serialization=True)
  cfg = hf_convert.model_config_from_hf(hf_convert.read_hf_config(tmp_path))
  with pytest.raises(ValueError, match="num_layers: config 3 vs checkpoint 2"):
    hf_convert.load_params(tmp_path, model_lib.ModelConfig(
        **{**cfg.__dict__, "num_layers": 3}))


def test_missing_weights_raise(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps(FAMILIES["olmo"]().to_dict()))
  with pytest.raises(FileNotFoundError, match="no \\*.safetensors"):
    hf_convert.load_params(tmp_path, hf_convert.model_config_from_hf(
        hf_convert.read_hf_config(tmp_path)))


@pytest.mark.parametrize("family, change, message", [
    ("llama", dict(model_type="mistral"), "unsupported model_type 'mistral'"),
    ("llama", dict(rope_scaling=dict(rope_type="yarn", factor=4.0)), "rope_scaling 'yarn'"),
    ("olmo", dict(clip_qkv=8.0), "clip_qkv"),
    ("llama", dict(attention_bias=True), "biases"),
    ("phi3", dict(partial_rotary_factor=0.5), "partial rotary"),
    ("gemma2", dict(layer_types=["full_attention"] * 3), "layer_types pattern"),
])
def test_unsupported_configs_raise(family, change, message):
  with pytest.raises(ValueError, match=message):
    hf_convert.model_config_from_hf({**FAMILIES[family]().to_dict(), **change})


def test_missing_tensor_raises():
  hf = hf_model("llama")
  cfg = hf_convert.model_config_from_hf(hf.config.to_dict())
  tensors = {k: v.numpy() for k, v in hf.state_dict().items()
             if k != "model.layers.1.mlp.up_proj.weight"}
  with pytest.raises(ValueError, match="no tensor 'model.layers.1.mlp.up_proj.weight'"):
    hf_convert.convert_state_dict(tensors, cfg, "llama")


@pytest.mark.parametrize("family", ["llama", "olmo", "phi3"])  # Gemma's norm offset is not linear
def test_training_gradients_match(family):
  """Gradients of the training loss (chunked fused head + cross entropy, scanned layers, the
  layers' own backward passes) equal PyTorch autodiff's, mapped by the same weight converter."""
  from editseq import losses  # pylint: disable=import-outside-toplevel
  hf = hf_model(family)
  ids, targets = random_ids((2, 12)), random_ids((2, 12), seed=2)
  logits = hf(torch.as_tensor(ids, dtype=torch.long)).logits
  torch.nn.functional.cross_entropy(logits.flatten(0, 1), torch.as_tensor(targets).flatten(),
                                    reduction="sum").backward()
  hf_grads = {name: p.grad.numpy() for name, p in hf.named_parameters()}
  cfg, _ = hf_convert.from_torch_model(hf)
  want = hf_convert.convert_state_dict(hf_grads, cfg, hf.config.model_type)
  ours = to_ours(hf)
  graphdef, params = nnx.split(ours, nnx.Param)
  batch = {"inputs": jnp.asarray(ids), "targets": jnp.asarray(targets),
           "loss_mask": jnp.ones(ids.shape, jnp.int32),
           "positions": jnp.broadcast_to(jnp.arange(12), ids.shape),
           "segment_ids": jnp.ones(ids.shape, jnp.int32)}
  got = jax.jit(jax.grad(
      lambda p: losses.loss_sums(nnx.merge(graphdef, p), batch, chunk_size=5)[0]))(params)
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-3, atol=1e-5),
               nnx.to_pure_dict(got), want)
