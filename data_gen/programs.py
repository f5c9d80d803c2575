"""What counts as a usable program: the one check that every source and LintSeq share.

A program is skipped (not crashed on) when `check_text` or `parse` raises `BadProgram`; its
`reason` is the counter name in the pipeline's stats. Reasons:

- `not_text`: neither str nor bytes;
- `binary`: a NUL character;
- `not_utf8`: bytes that are not UTF-8, or text that cannot be written as UTF-8 (a lone
  surrogate such as "\\udcff", which JSON may hold);
- `too_many_bytes` / `too_many_lines`: over the caller's limits (UTF-8 bytes; lines as a file
  has them, a final newline ends the last line);
- `empty`: no statement (only whitespace or comments);
- `bare_cr`: a carriage return not followed by a newline (Python sees a line break there that
  the diff format does not);
- `contains_diff_token`: the text would collide with the edit separator;
- `syntax_error`: does not compile (the compiler front end also rejects what parses but cannot
  run: `return` outside a function, a bad `nonlocal`, ...);
- `too_deep`: nested too deeply for Python's recursive parser and compiler.

Sources add their own skip reasons (`no_python_block`, `missing_key`, `bad_json`, ...) and
LintSeq adds `timeout`. Bytes are decoded as UTF-8 the way Python reads a source file: a leading
byte-order mark is dropped; in text, a byte-order mark is a character (and a syntax error).
"""
from __future__ import annotations

import ast
import functools
import warnings

from data_gen import edit_format

FILENAME = "<program>"


class BadProgram(ValueError):
  """A program that is skipped; `reason` is the counter name in the stats report."""

  def __init__(self, reason: str, detail: str = ""):
    super().__init__(f"{reason}: {detail}" if detail else reason)
    self.reason = reason


def check_text(raw: str | bytes, *, max_bytes: int | None, max_lines: int | None) -> str:
  """The program's text, decoded and checked (everything but the parse); raises BadProgram."""
  if isinstance(raw, bytes):
    if b"\x00" in raw:
      raise BadProgram("binary")
    try:
      text = raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as error:
      raise BadProgram("not_utf8", str(error)) from None
    size = len(raw)
  elif isinstance(raw, str):
    text = raw
    if "\x00" in text:
      raise BadProgram("binary")
    try:
      size = len(text.encode("utf-8"))
    except UnicodeEncodeError as error:
      raise BadProgram("not_utf8", str(error)) from None
  else:
    raise BadProgram("not_text", type(raw).__name__)
  if max_bytes is not None and size > max_bytes:
    raise BadProgram("too_many_bytes", f"{size} > {max_bytes}")
  if not text.strip():
    raise BadProgram("empty")
  lines = text.count("\n") + (not text.endswith("\n"))
  if max_lines is not None and lines > max_lines:
    raise BadProgram("too_many_lines", f"{lines} > {max_lines}")
  if "\r" in text and text.count("\r") != text.count("\r\n"):
    raise BadProgram("bare_cr")
  if edit_format.DIFF_TOKEN in text:
    raise BadProgram("contains_diff_token")
  return text


def check_instruction(instruction: str) -> None:
  """Raises BadProgram for an instruction that cannot go into a record (`not_utf8`) or
  would collide with the edit separator (`contains_diff_token`)."""
  try:
    instruction.encode("utf-8")
  except UnicodeEncodeError as error:
    raise BadProgram("not_utf8", str(error)) from None
  if edit_format.DIFF_TOKEN in instruction:
    raise BadProgram("contains_diff_token")


@functools.lru_cache(maxsize=8)
def parse(text: str) -> ast.Module:
  """The syntax tree of checked text, compiled once to be sure it runs; raises BadProgram.

  Cached for the last few programs, so the pipeline's variants, which see each program one
  after another in the same worker, parse it once. Callers must not modify the tree.
  """
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")   # SyntaxWarnings of the program are not ours to show
    try:
      tree = ast.parse(text, FILENAME)
      compile(tree, FILENAME, "exec", dont_inherit=True)
    except SyntaxError as error:
      raise BadProgram("syntax_error", f"line {error.lineno}: {error.msg}") from None
    except (RecursionError, MemoryError):
      raise BadProgram("too_deep", "nesting too deep to parse") from None
    except ValueError as error:
      raise BadProgram("syntax_error", str(error)) from None
  if not tree.body:
    raise BadProgram("empty", "no statements")
  return tree


def check(raw: str | bytes, *, max_bytes: int | None, max_lines: int | None
          ) -> tuple[str, ast.Module]:
  """`check_text`, then `parse`: the text and tree of a usable program; raises BadProgram."""
  text = check_text(raw, max_bytes=max_bytes, max_lines=max_lines)
  return text, parse(text)
