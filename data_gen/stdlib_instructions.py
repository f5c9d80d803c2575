"""Embedded default instruction data: (instruction, program) pairs mined from the standard library.

The paper finetunes on instruction + Python pairs that are not released; this module makes an
offline stand-in from the running Python's standard library, so the whole project runs with no
downloads. Each pair is one documented function or method:

- instruction: "Write a Python function `name(signature)`." (for a method: "Write a method
  `name(signature)` for the class `Class`.") followed by the docstring, `inspect.cleandoc`-ed.
  An honest task description: the docstring is what the author wrote to explain the code, the
  signature fixes the interface.
- program: the imports it needs (rebuilt from the module's top-level imports with only the names
  used, relative imports made absolute), the module-level definitions it needs, transitively
  (helper functions, classes, constants, verbatim and in source order), then the function's
  source as written (decorators and comments included) minus its docstring lines. A method is
  emitted inside its class's header (decorators, `class Name(bases):`) with the other members
  left out: it is the method as written in its class, not a working class.

The rules, applied in this order:
1. modules under `site-packages`, `dist-packages`, `test`, `tests`, `idle_test` and `__pycache__`
   are not read (third-party code and test suites); a module that fails to decode or parse is
   passed over;
2. candidates are top-level `def`/`async def`s and the methods of top-level classes, not dunder
   (`__x__`/`__x`), whose name is bound once in their scope (module or class body);
3. a docstring of at least `MIN_DOC_CHARS` characters that occupies whole lines of its own
   (so deleting those lines leaves valid code);
4. a body, without the docstring, with at least one statement that is not `pass`, `...` or
   `raise NotImplementedError`, of `MIN_LINES`..`MAX_FUNCTION_LINES` lines;
5. no `global`/`nonlocal` (module state it would not own);
6. every name it uses, per pyflakes, resolves to a builtin, a parameter, a local, a top-level
   import, or a top-level definition bound exactly once and unconditionally (not inside `if`/
   `try`/loops), whose own names resolve the same way; otherwise the function is dropped;
7. the whole program is at most `MAX_PROGRAM_LINES` lines.

The walk is sorted (directories and files by name, functions in source order), so the output is
identical on every run of the same Python; ids are `stdlib:<relative path>:<qualified name>`.
On CPython 3.11 this gives about 3,100 pairs (a third of them top-level functions).
"""
from __future__ import annotations

import ast
import copy
import dataclasses
import os
import sysconfig
from typing import Iterator

import pyflakes.checker
import pyflakes.messages

MIN_DOC_CHARS = 20
MIN_LINES = 3
MAX_FUNCTION_LINES = 80
MAX_PROGRAM_LINES = 150
EXCLUDED_DIRS = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"})
_FATAL_PYFLAKES = (pyflakes.messages.UndefinedName, pyflakes.messages.UndefinedLocal,
                   pyflakes.messages.UndefinedExport)


@dataclasses.dataclass(frozen=True)
class InstructionPair:
  source_id: str
  instruction: str
  program: str


def stdlib_root() -> str:
  """The running Python's standard library folder."""
  return sysconfig.get_paths()["stdlib"]


def module_files(root: str) -> list[str]:
  """Relative paths of the `.py` files under `root` that the rules read, in sorted order."""
  found = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDED_DIRS)
    rel_dir = os.path.relpath(dirpath, root)
    for name in sorted(filenames):
      if name.endswith(".py"):
        found.append(os.path.normpath(os.path.join(rel_dir, name)))
  return sorted(found, key=lambda p: p.split(os.sep))


def _package_of(rel_path: str) -> list[str]:
  """Package path of a module file, for resolving its relative imports."""
  parts = rel_path[:-len(".py")].split(os.sep)
  return parts[:-1]  # for pkg/__init__.py and pkg/mod.py alike, the package is pkg.


def _import_table(tree: ast.Module, package: list[str]) -> dict[str, str]:
  """Maps each name bound by a top-level import to one import statement binding only it."""
  table = {}
  for node in tree.body:
    if isinstance(node, ast.Import):
      for alias in node.names:
        bound = alias.asname or alias.name.split(".")[0]
        table[bound] = f"import {alias.name}" + (f" as {alias.asname}" if alias.asname else "")
    elif isinstance(node, ast.ImportFrom):
      if node.level:
        if node.level > len(package) + 1 or (node.level == len(package) + 1 and not node.module):
          continue
        base = package[:len(package) - node.level + 1]
        module = ".".join(base + ([node.module] if node.module else []))
      else:
        module = node.module
      if not module or module == "__future__":
        continue
      for alias in node.names:
        if alias.name == "*":
          continue
        bound = alias.asname or alias.name
        table[bound] = (f"from {module} import {alias.name}" +
                        (f" as {alias.asname}" if alias.asname else ""))
  return table


def _is_trivial(stmt: ast.stmt) -> bool:
  if isinstance(stmt, ast.Pass):
    return True
  if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
    return True
  if isinstance(stmt, ast.Raise) and stmt.exc is not None:
    exc = stmt.exc.func if isinstance(stmt.exc, ast.Call) else stmt.exc
    return isinstance(exc, ast.Name) and exc.id == "NotImplementedError"
  return False


def _signature(node: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
  sig = f"{node.name}({ast.unparse(node.args)})"
  if node.returns is not None:
    sig += f" -> {ast.unparse(node.returns)}"
  return sig


def _instruction(node: ast.FunctionDef | ast.AsyncFunctionDef, doc: str, owner: str | None) -> str:
  kind = "an async" if isinstance(node, ast.AsyncFunctionDef) else "a"
  what = f"{kind} method `{_signature(node)}` for the class `{owner}`" if owner else (
      f"{kind} Python function `{_signature(node)}`")
  return f"Write {what}.\n\n{doc}"


def _class_header(node: ast.ClassDef, lines: list[str]) -> list[str]:
  """Decorators and `class ...:` line(s) of a class, without its docstring or members."""
  first = min([node.lineno] + [d.lineno for d in node.decorator_list])
  header_end = node.body[0].lineno - 1
  header = lines[first - 1:header_end]
  while header and (not header[-1].strip() or header[-1].lstrip().startswith("#")):
    header.pop()
  return header


def _function_source(node, lines: list[str]) -> list[str] | None:
  """The function's source lines with the docstring lines (and blank lines after them) removed."""
  doc_node = node.body[0]
  first = min([node.lineno] + [d.lineno for d in node.decorator_list])
  if lines[doc_node.lineno - 1][:doc_node.col_offset].strip():
    return None  # docstring shares its first line with the header.
  tail = lines[doc_node.end_lineno - 1][doc_node.end_col_offset:].strip()
  if tail and not tail.startswith("#"):
    return None  # code after the docstring on its last line.
  before = lines[first - 1:doc_node.lineno - 1]
  after = lines[doc_node.end_lineno:node.end_lineno]
  while after and not after[0].strip():
    after = after[1:]
  return before + after


def _undefined(tree: ast.Module) -> set[str] | None:
  """Names pyflakes reports as undefined in `tree`, or None for another fatal message."""
  names = set()
  for message in pyflakes.checker.Checker(tree, filename="<program>").messages:
    if isinstance(message, pyflakes.messages.UndefinedName):
      names.add(message.message_args[0])
    elif isinstance(message, _FATAL_PYFLAKES):
      return None
  return names


def _definition_table(tree: ast.Module) -> dict[str, int]:
  """Maps a name bound exactly once by a top-level def, class or plain assignment to its index."""
  bindings: dict[str, list[int]] = {}
  for index, node in enumerate(tree.body):
    names = []
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
      names = [node.name]
    elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
      targets = node.targets if isinstance(node, ast.Assign) else [node.target]
      for target in targets:
        elts = target.elts if isinstance(target, (ast.Tuple, ast.List)) else [target]
        names += [e.id for e in elts if isinstance(e, ast.Name)]
    elif isinstance(node, (ast.If, ast.Try, ast.For, ast.While, ast.With)):
      # Conditional bindings make a name ambiguous.
      names = [n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)]
      names += [n.name for n in ast.walk(node)
                if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    for name in names:
      bindings.setdefault(name, []).append(index)
  return {name: idx[0] for name, idx in bindings.items() if len(idx) == 1}


def _statement_lines(node: ast.stmt, lines: list[str]) -> list[str]:
  first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
  return lines[first - 1:node.end_lineno]


def _assemble(imports: list[str], chunks: list[tuple[bool, list[str]]]) -> str:
  """Imports, then code chunks: two blank lines around defs and classes (PEP 8), one after the
  imports, none between consecutive assignments."""
  text = "\n".join(imports)
  after_imports, previous_is_def = bool(imports), False
  for is_def, chunk_lines in chunks:
    if text:
      text += "\n\n\n" if (is_def or previous_is_def) else ("\n\n" if after_imports else "\n")
    text += "\n".join(chunk_lines)
    after_imports, previous_is_def = False, is_def
  return text + "\n"


class _ModuleIndex:
  """A parsed module with its import table, definition table and per-statement free names."""

  def __init__(self, tree: ast.Module, lines: list[str], rel_path: str):
    self.tree, self.lines = tree, lines
    self.imports = _import_table(tree, _package_of(rel_path))
    self.definitions = _definition_table(tree)
    self._free: dict[int, set[str] | None] = {}

  def _free_names(self, index: int) -> set[str] | None:
    if index not in self._free:
      self._free[index] = _undefined(ast.Module(body=[self.tree.body[index]], type_ignores=[]))
    return self._free[index]

  def program(self, target: ast.stmt, target_index: int, target_lines: list[str]) -> str | None:
    """`target_lines` plus the imports and module-level definitions they need, transitively.

    `target` is the AST of `target_lines` (the function without its docstring, in its class
    stub for a method). Returns None when a name stays undefined or the program is too long.
    Free names come from pyflakes, one run per statement, so parameters, locals and builtins
    never count as dependencies.
    """
    missing = _undefined(ast.Module(body=[target], type_ignores=[]))
    if missing is None:
      return None
    needed_imports: set[str] = set()
    needed_defs: set[int] = set()
    seen: set[str] = set()
    while missing:
      name = missing.pop()
      if name in seen:
        continue
      seen.add(name)
      if name in self.imports:
        needed_imports.add(self.imports[name])
      elif name in self.definitions:
        index = self.definitions[name]
        if index != target_index and index not in needed_defs:
          free = self._free_names(index)
          if free is None:
            return None
          needed_defs.add(index)
          missing |= free
      else:
        return None
    chunks = [(isinstance(self.tree.body[i], (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)),
               _statement_lines(self.tree.body[i], self.lines)) for i in sorted(needed_defs)]
    program = _assemble(sorted(needed_imports), chunks + [(True, target_lines)])
    return program if len(program.splitlines()) <= MAX_PROGRAM_LINES else None


def _candidates(tree: ast.Module):
  """(top-level index, function node, owning class or None): top-level functions and the
  methods of top-level classes whose name is unique in the class body, in source order."""
  for index, node in enumerate(tree.body):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      yield index, node, None
    elif isinstance(node, ast.ClassDef):
      members = [m.name for m in node.body
                 if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
      for member in node.body:
        if (isinstance(member, (ast.FunctionDef, ast.AsyncFunctionDef)) and
            members.count(member.name) == 1):
          yield index, member, node


def _without_docstring(node, owner: ast.ClassDef | None) -> ast.stmt:
  """The AST of the emitted code: the function minus its docstring, in its class stub if any."""
  function = copy.copy(node)
  function.body = node.body[1:]
  if owner is None:
    return function
  stub = copy.copy(owner)
  stub.body = [function]
  return stub


def pairs_from_module(source: str, rel_path: str, prefix: str = "stdlib") -> Iterator[InstructionPair]:
  """Yields the instruction pairs of one module's source text, by the rules of this module."""
  try:
    tree = ast.parse(source)
  except (SyntaxError, ValueError):
    return
  module = _ModuleIndex(tree, source.splitlines(), rel_path)
  for index, node, owner in _candidates(tree):
    name = node.name if owner is None else owner.name
    if node.name.startswith("__") or module.definitions.get(name) != index:
      continue
    doc = ast.get_docstring(node, clean=True)
    if not doc or len(doc) < MIN_DOC_CHARS or len(node.body) < 2:
      continue
    if all(_is_trivial(stmt) for stmt in node.body[1:]):
      continue
    if any(isinstance(n, (ast.Global, ast.Nonlocal)) for n in ast.walk(node)):
      continue
    function_lines = _function_source(node, module.lines)
    if function_lines is None or not MIN_LINES <= len(function_lines) <= MAX_FUNCTION_LINES:
      continue
    header = _class_header(owner, module.lines) if owner is not None else []
    program = module.program(_without_docstring(node, owner), index, header + function_lines)
    if program is not None:
      qualname = node.name if owner is None else f"{owner.name}.{node.name}"
      yield InstructionPair(
          source_id=f"{prefix}:{rel_path.replace(os.sep, '/')}:{qualname}",
          instruction=_instruction(node, doc, owner.name if owner else None), program=program)


def read_module(root: str, rel_path: str) -> str | None:
  """A module's text, or None when it is unreadable or not UTF-8 (the standard library declares
  no other encoding)."""
  try:
    with open(os.path.join(root, rel_path), "rb") as f:
      return f.read().decode("utf-8")
  except (OSError, UnicodeDecodeError):
    return None


def iter_pairs(root: str | None = None, max_programs: int | None = None) -> Iterator[InstructionPair]:
  """All pairs under `root` (default: the standard library) in sorted order, at most `max_programs`."""
  root = root or stdlib_root()
  count = 0
  for rel_path in module_files(root):
    source = read_module(root, rel_path)
    if source is None:
      continue
    for pair in pairs_from_module(source, rel_path):
      if max_programs is not None and count >= max_programs:
        return
      count += 1
      yield pair
