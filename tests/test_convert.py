"""`python -m editseq.convert` on small random models: GGUF files of each supported tensor type
and sharded Hugging Face folders of each supported family, against transformers' own reading of
the same files; the vocabulary growth for <|diff|>; import -> export -> import bit for bit."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from editseq import checkpointing
from editseq import convert
from editseq import gguf_import
from editseq import hf_convert
from editseq import model as model_lib
from editseq import tokenizer as tokenizer_lib
from tests import pretrained_models as pm
from tests.conftest import REPO_ROOT
from tests.test_cli_paths import run_module

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("gguf")

ATOL = 1e-4
FAMILIES = ("llama", "olmo", "gemma2", "phi3")


@pytest.fixture(autouse=True)
def exact_matmuls():
  with jax.default_matmul_precision("highest"):
    yield


def run_convert(*args, cwd=REPO_ROOT):
  return run_module("editseq.convert", *args, cwd=cwd)


def params_of(path):
  model, _, _ = checkpointing.load_for_inference(str(path))
  return model, jax.device_get(nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def sample_ids(tok, length=40):
  text = (tokenizer_lib.stdlib_root() / "json" / "decoder.py").read_text()[:400]
  return np.asarray([tok.encode(text).ids[:length]])


def torch_logits(model, ids):
  with torch.no_grad():
    return model(torch.as_tensor(ids, dtype=torch.long)).logits.numpy()


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def gguf_imported(request, tmp_path_factory):
  """A tiny Llama written as GGUF (F32/F16/Q8_0/Q4_0/Q4_1 by turns), imported by the CLI."""
  tmp = tmp_path_factory.mktemp("gguf")
  tok = pm.train_tokenizer(tmp / "tok")
  path = tmp / "tiny.gguf"
  pm.write_gguf(path, pm.hf_model("llama", tie=request.param), tok)
  result = run_convert("gguf-to-editseq", path, tmp / "imported")
  assert result.returncode == 0, result.stderr[-3000:]
  return path, tmp / "imported", tok


def test_gguf_tensors_equal_transformers_reading(gguf_imported):
  path, _, _ = gguf_imported
  model = pm.transformers_gguf_model(path)
  theirs = model.state_dict()
  ours = gguf_import.GGUFModel(path).tensors()
  untied = not model.config.tie_word_embeddings
  assert set(ours) == {k for k in theirs if untied or k != "lm_head.weight"}
  for name in ours:
    np.testing.assert_array_equal(ours[name], theirs[name].numpy(), err_msg=name)


def test_gguf_import_logits_match_transformers(gguf_imported):
  path, imported, tok = gguf_imported
  model, config, vocab = checkpointing.load_for_inference(str(imported))
  ids = sample_ids(tok)
  logits = np.asarray(model(jnp.asarray(ids, jnp.int32)))
  assert logits.shape[-1] == pm.VOCAB + 1
  np.testing.assert_allclose(logits[..., :pm.VOCAB],
                             torch_logits(pm.transformers_gguf_model(path), ids), atol=ATOL)
  assert config.model.num_kv_heads == 2 and config.model.vocab_size == pm.VOCAB + 1


def test_gguf_import_carries_the_tokenizer_eos_and_chat_template(gguf_imported):
  _, imported, tok = gguf_imported
  vocab = tokenizer_lib.load_vocabulary(imported / "tokenizer.json")
  assert vocab.vocab_size == pm.VOCAB + 1 and vocab.diff_id == pm.VOCAB
  assert vocab.eos_id == pm.EOS_ID and vocab.pad_id == pm.EOS_ID
  text = (tokenizer_lib.stdlib_root() / "json" / "scanner.py").read_text()
  assert vocab.encode(text) == tok.encode(text).ids  # the same BPE, digits one by one
  assert vocab.decode(vocab.encode(text)) == text
  assert vocab.encode("x\n<|diff|>") == [*tok.encode("x\n").ids, pm.VOCAB]
  tokenizer_config = json.loads((imported / "tokenizer_config.json").read_text())
  assert tokenizer_config["chat_template"] == pm.CHAT_TEMPLATE
  assert tokenizer_config["eos_token"] == "<|im_end|>"
  generation = json.loads((imported / "generation_config.json").read_text())
  assert generation["eos_token_id"] == pm.EOS_ID


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_growing_the_vocabulary_keeps_every_old_logit_bit_identical(tie):
  hf = pm.hf_model("llama", tie=tie)
  cfg, params = hf_convert.from_torch_model(hf, dtype="float32")
  tensors = {k: v.numpy() for k, v in hf.state_dict().items()}
  grown_cfg = model_lib.ModelConfig(**{**cfg.__dict__, "vocab_size": pm.VOCAB + 1})
  grown = hf_convert.convert_state_dict(tensors, grown_cfg, "llama")
  np.testing.assert_array_equal(grown["embed"][:pm.VOCAB], params["embed"])
  np.testing.assert_array_equal(grown["embed"][pm.VOCAB],
                                params["embed"].astype(np.float64).mean(0).astype(np.float32))
  if not tie:
    np.testing.assert_array_equal(grown["lm_head"][:, :pm.VOCAB], params["lm_head"])
  ids = jnp.asarray(np.random.default_rng(0).integers(0, pm.VOCAB, (2, 16)), jnp.int32)

  def logits(c, p):
    graphdef, state = nnx.split(model_lib.abstract_model(c), nnx.Param)
    nnx.replace_by_pure_dict(state, p)
    return np.asarray(nnx.merge(graphdef, state)(ids))

  np.testing.assert_array_equal(logits(grown_cfg, grown)[..., :pm.VOCAB], logits(cfg, params))


@pytest.fixture(scope="module", params=FAMILIES)
def hf_import(request, tmp_path_factory):
  """A tiny sharded Hugging Face folder of each family, imported by the CLI (in process)."""
  tmp = tmp_path_factory.mktemp(request.param)
  hf = pm.write_hf_folder(tmp / "hf", request.param, tie=request.param != "llama")
  assert len(list((tmp / "hf").glob("*.safetensors"))) > 1
  assert convert.main(["hf-to-editseq", str(tmp / "hf"), str(tmp / "imported")]) == 0
  return request.param, hf, tmp


def test_hf_import_logits_match_transformers(hf_import):
  _, hf, tmp = hf_import
  model, _, vocab = checkpointing.load_for_inference(str(tmp / "imported"))
  assert vocab.eos_id == pm.EOS_ID and vocab.vocab_size == pm.VOCAB + 1
  ids = sample_ids(vocab.tokenizer)
  np.testing.assert_allclose(np.asarray(model(jnp.asarray(ids, jnp.int32)))[..., :pm.VOCAB],
                             torch_logits(hf, ids), atol=ATOL)


def test_import_export_import_is_bit_exact_and_transformers_generates_the_same(hf_import):
  """Export writes a folder transformers loads (sharded here), whose greedy tokens are ours."""
  family, _, tmp = hf_import
  assert convert.main(["editseq-to-hf", str(tmp / "imported"), str(tmp / "exported"),
                       "--max_shard_mb", "0.05"]) == 0
  assert (tmp / "exported" / "model.safetensors.index.json").is_file()
  assert convert.main(["hf-to-editseq", str(tmp / "exported"), str(tmp / "again")]) == 0
  ours, first = params_of(tmp / "imported")
  _, second = params_of(tmp / "again")
  jax.tree.map(np.testing.assert_array_equal, first, second)
  for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
    assert (tmp / "again" / name).read_text() == (tmp / "imported" / name).read_text(), name

  import transformers  # pylint: disable=import-outside-toplevel
  exported = transformers.AutoModelForCausalLM.from_pretrained(
      tmp / "exported", attn_implementation="eager").float().eval()
  assert exported.config.model_type == family
  assert exported.config.eos_token_id == pm.EOS_ID
  assert json.loads((tmp / "exported" / "tokenizer_config.json").read_text())[
      "chat_template"] == pm.CHAT_TEMPLATE
  prompt = sample_ids(tokenizer_lib.load_vocabulary(tmp / "exported").tokenizer, 6)
  with torch.no_grad():
    want = exported.generate(torch.as_tensor(prompt), max_new_tokens=8, min_new_tokens=8,
                             do_sample=False, pad_token_id=pm.EOS_ID)[:, 6:].numpy()
  tokens = jnp.asarray(prompt, jnp.int32)
  for _ in range(8):  # greedy, recomputing the whole sequence each step
    tokens = jnp.concatenate([tokens, jnp.argmax(ours(tokens)[:, -1:], axis=-1)], axis=1)
  np.testing.assert_array_equal(np.asarray(tokens[:, 6:]), want)


def test_gguf_round_trip_is_bit_exact(gguf_imported, tmp_path):
  _, imported, _ = gguf_imported
  assert convert.main(["editseq-to-hf", str(imported), str(tmp_path / "hf")]) == 0
  assert convert.main(["hf-to-editseq", str(tmp_path / "hf"), str(tmp_path / "again")]) == 0
  jax.tree.map(np.testing.assert_array_equal, params_of(imported)[1],
               params_of(tmp_path / "again")[1])


def test_relative_paths_from_another_folder(gguf_imported, tmp_path):
  """orbax refuses relative checkpoint paths: the CLI resolves them where it reads them."""
  path, imported, _ = gguf_imported
  work = tmp_path / "work"
  work.mkdir()
  (work / "in.gguf").symlink_to(path)
  for args in (("gguf-to-editseq", "in.gguf", "models/tiny"),
               ("editseq-to-hf", "models/tiny", "../hf_tiny")):
    result = run_convert(*args, cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
  assert (tmp_path / "hf_tiny" / "config.json").is_file()
  jax.tree.map(np.testing.assert_array_equal, params_of(imported)[1],
               params_of(work / "models" / "tiny")[1])


def test_eos_from_generation_config_wins_with_one_warning_and_can_be_overridden(tmp_path, capsys):
  pm.train_tokenizer(tmp_path)
  pm.write_tokenizer_configs(tmp_path)
  vocab = tokenizer_lib.load_vocabulary(tmp_path / "tokenizer.json")
  assert vocab.eos_id == pm.EOS_ID
  tokenizer_lib.load_vocabulary(tmp_path / "tokenizer.json")
  lines = [line for line in capsys.readouterr().err.splitlines() if "generation_config" in line]
  assert len(lines) == 1 and "'<|im_start|>'" in lines[0] and "'<|im_end|>'" in lines[0]
  chosen = tokenizer_lib.load_vocabulary(tmp_path / "tokenizer.json", eos_token="<|endoftext|>")
  assert chosen.eos_id == 0 and chosen.fingerprint != vocab.fingerprint


def _bad_gguf(tmp_path, **kwargs):
  tok = pm.train_tokenizer(tmp_path / "tok")
  path = tmp_path / "bad.gguf"
  pm.write_gguf(path, pm.hf_model("llama"), tok, **kwargs)
  return path


@pytest.mark.parametrize("kind, message", [
    ("architecture", "unsupported GGUF architecture 'gpt2'; supported: llama"),
    ("quantization", "unsupported GGUF tensor type Q5_0 (tensor token_embd.weight); supported: "
                     "F32, F16, Q8_0, Q4_0, Q4_1"),
])
def test_unsupported_gguf_is_one_line_and_writes_nothing(tmp_path, kind, message):
  path = (_bad_gguf(tmp_path, architecture="gpt2") if kind == "architecture"
          else _bad_gguf(tmp_path, types=("Q5_0",)))
  result = run_convert("gguf-to-editseq", path, tmp_path / "out")
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1] == f"error: {path}: {message}"
  assert "Traceback" not in result.stderr
  assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, message", [
    (["hf-to-editseq", "{tmp}/missing", "{tmp}/out"], "{tmp}/missing does not exist"),
    (["gguf-to-editseq", "{tmp}/hf", "{tmp}/out"], "{tmp}/hf is not a .gguf file"),
    (["hf-to-editseq", "{tmp}/hf", "{tmp}/hf"], "{tmp}/hf exists and is not an empty folder"),
    (["hf-to-editseq", "{tmp}/hf", "{tmp}/out"],
     "unsupported model_type 'mistral'; supported: llama, olmo, gemma2, phi3"),
    (["editseq-to-hf", "{tmp}/hf", "{tmp}/out"], "no checkpoint in {tmp}/hf"),
    (["hf-to-editseq", "{tmp}/broken", "{tmp}/out"],
     "{tmp}/broken/model.safetensors: not a readable safetensors file"),
])
def test_user_mistakes_are_one_line_errors(tmp_path, capsys, args, message):
  (tmp_path / "hf").mkdir()
  (tmp_path / "hf" / "config.json").write_text(json.dumps({"model_type": "mistral"}))
  (tmp_path / "hf" / "tokenizer.json").write_text(pm.train_tokenizer(tmp_path / "t").to_str())
  (tmp_path / "hf" / "model.safetensors").write_bytes(b"")
  broken = tmp_path / "broken"
  pm.write_hf_folder(broken, "llama")
  for shard in broken.glob("*.safetensors"):
    shard.unlink()
  (broken / "model.safetensors").write_bytes(b"\x10")
  if args[0] == "editseq-to-hf":
    (tmp_path / "hf" / "model.safetensors").unlink()
  with pytest.raises(SystemExit) as exit_info:
    convert.main([a.format(tmp=tmp_path) for a in args])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err[-1].startswith("error: ") and message.format(tmp=tmp_path) in err[-1]
  assert not (tmp_path / "out").exists()


def test_help_lists_the_three_conversions():
  result = run_convert("--help")
  assert result.returncode == 0
  for command in ("gguf-to-editseq", "hf-to-editseq", "editseq-to-hf"):
    assert command in result.stdout
