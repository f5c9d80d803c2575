"""Chat prompts: a model's own chat template, so instruct models are evaluated as their authors
intended (the instruction as the user turn, the answer as the assistant turn).

The template is the Jinja text of a Hugging Face tokenizer folder: `tokenizer_config.json`'s
"chat_template" (a string, or a list of named templates of which "default" is used), else a
`chat_template.jinja` file. It is rendered the way `transformers`' `apply_chat_template` renders
it (a sandboxed environment with trim_blocks and lstrip_blocks, loop controls, `raise_exception`,
`strftime_now`, a `tojson` that does not escape HTML, the special tokens as variables), so the
prompts are byte-identical to that reference (tests/test_chat.py).
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import pathlib

import jinja2
import jinja2.ext
import jinja2.sandbox

TOKENIZER_CONFIG = "tokenizer_config.json"
TEMPLATE_FILE = "chat_template.jinja"
_SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token",
                   "mask_token")


class ChatTemplateError(ValueError):
  """No usable chat template, or one that fails to render."""


def _raise_exception(message):
  raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
  return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                    sort_keys=sort_keys)


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
  """A Jinja chat template and the special tokens it may refer to (`bos_token`, ...)."""

  source: str
  special_tokens: dict = dataclasses.field(default_factory=dict)

  def render(self, messages: list[dict], *, add_generation_prompt: bool = True) -> str:
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    try:
      return env.from_string(self.source).render(
          messages=messages, tools=None, documents=None,
          add_generation_prompt=add_generation_prompt, **self.special_tokens)
    except jinja2.exceptions.TemplateError as e:
      raise ChatTemplateError(f"the chat template failed: {e}") from e

  def prompt(self, instruction: str, assistant_prefix: str = "") -> str:
    """The prompt for one instruction: the user turn, the opened assistant turn, and
    `assistant_prefix` (e.g. `<|diff|>` for LintSeq models) as the start of the answer."""
    return self.render([{"role": "user", "content": instruction}]) + assistant_prefix


  def end_of_turn(self) -> str:
    """What the template writes after an assistant message (e.g. "<|im_end|>"), without
    surrounding whitespace: where a chat answer ends, whatever the tokenizer's EOS."""
    marker = "ANSWER-7f3a"
    text = self.render([{"role": "user", "content": "Q"},
                        {"role": "assistant", "content": marker}], add_generation_prompt=False)
    return text[text.rindex(marker) + len(marker):].strip() if marker in text else ""


def _token_text(value) -> str | None:
  if isinstance(value, dict):  # {"content": "<|im_end|>", "lstrip": ...}
    value = value.get("content")
  return value if isinstance(value, str) else None


def load_chat_template(folder: str | pathlib.Path) -> ChatTemplate:
  """The chat template of a tokenizer folder (or of the folder of a `tokenizer.json`)."""
  folder = pathlib.Path(folder)
  if folder.is_file():
    folder = folder.parent
  config = {}
  if (folder / TOKENIZER_CONFIG).is_file():
    try:
      config = json.loads((folder / TOKENIZER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
      raise ChatTemplateError(f"cannot read {folder / TOKENIZER_CONFIG}: {e}") from None
  source = config.get("chat_template") if isinstance(config, dict) else None
  if isinstance(source, list):  # named templates
    source = {t.get("name"): t.get("template") for t in source if isinstance(t, dict)}.get(
        "default")
  if source is None and (folder / TEMPLATE_FILE).is_file():
    source = (folder / TEMPLATE_FILE).read_text(encoding="utf-8")
  if not isinstance(source, str) or not source.strip():
    raise ChatTemplateError(
        f"no chat template in {folder} (neither {TOKENIZER_CONFIG}'s \"chat_template\" nor "
        f"{TEMPLATE_FILE}); the chat format needs the model's own template")
  special = {name: _token_text(config.get(name)) for name in _SPECIAL_TOKENS}
  special = {k: v for k, v in special.items() if v is not None}
  extra = [t for t in (_token_text(x) for x in config.get("additional_special_tokens") or [])
           if t is not None]
  if extra:
    special["additional_special_tokens"] = extra
  try:
    jinja2.sandbox.ImmutableSandboxedEnvironment(
        extensions=[jinja2.ext.loopcontrols]).parse(source)
  except jinja2.exceptions.TemplateSyntaxError as e:
    raise ChatTemplateError(f"the chat template of {folder} is not valid Jinja: {e}") from None
  return ChatTemplate(source, special)
