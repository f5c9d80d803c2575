"""The embedded default instruction data: size, determinism, standalone programs, honest instructions."""
import ast
import bisect
import heapq
import random
import shlex
import statistics
import textwrap

import pyflakes.checker
import pyflakes.messages
import pytest

from data_gen import stdlib_instructions as si


@pytest.fixture(scope="module")
def pairs():
  return list(si.iter_pairs())


def _target(program: str, qualname: str):
  """The function node `qualname` (`f` or `Class.f`) in a program."""
  scope = ast.parse(program).body
  *owner, name = qualname.split(".")
  if owner:
    scope = next(n for n in scope if isinstance(n, ast.ClassDef) and n.name == owner[0]).body
  return next(n for n in scope
              if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == name)


def test_a_few_thousand_unique_pairs(pairs):
  assert 2000 <= len(pairs) <= 10000
  ids = [p.source_id for p in pairs]
  assert len(set(ids)) == len(ids)
  assert all(i.startswith("stdlib:") and i.count(":") == 2 for i in ids)
  assert ids[0] < ids[-1]  # sorted walk: the first module precedes the last one.


def test_deterministic_prefix_and_cap(pairs):
  assert list(si.iter_pairs(max_programs=150)) == pairs[:150]


def test_programs_stand_alone_without_the_docstring(pairs):
  for pair in pairs[::7]:
    tree = ast.parse(pair.program)
    messages = pyflakes.checker.Checker(tree).messages
    assert not [m for m in messages if isinstance(m, pyflakes.messages.UndefinedName)], pair.source_id
    qualname = pair.source_id.rsplit(":", 1)[1]
    function = _target(pair.program, qualname)
    assert ast.get_docstring(function) is None, pair.source_id
    assert pair.instruction.startswith("Write ")
    assert f"`{function.name}(" in pair.instruction
    assert len(pair.program.splitlines()) <= si.MAX_PROGRAM_LINES


@pytest.mark.parametrize("source_id, name, reference, make_args", [
    ("stdlib:bisect.py:insort_right", "insort_right", bisect.insort_right,
     lambda r: (sorted(r.choices(range(20), k=r.randrange(12))), r.randrange(25))),
    ("stdlib:heapq.py:nsmallest", "nsmallest", heapq.nsmallest,
     lambda r: (r.randrange(6), [r.randrange(50) for _ in range(r.randrange(15))])),
    ("stdlib:textwrap.py:dedent", "dedent", textwrap.dedent,
     lambda r: ("".join(r.choice(["  x\n", "    y\n", "\n", "  \tz\n"]) for _ in range(5)),)),
    ("stdlib:shlex.py:quote", "quote", shlex.quote,
     lambda r: ("".join(r.choice("ab $'\"-_") for _ in range(r.randrange(8))),)),
    ("stdlib:statistics.py:median", "median", statistics.median,
     lambda r: ([r.randrange(100) for _ in range(1 + r.randrange(9))],)),
])
def test_programs_run_like_the_standard_library(pairs, source_id, name, reference, make_args):
  """The mined program, executed on its own, behaves as the stdlib function it came from."""
  pair = next(p for p in pairs if p.source_id == source_id)
  namespace = {}
  exec(compile(pair.program, source_id, "exec"), namespace)  # trusted: stdlib code.
  rng = random.Random(0)
  for _ in range(50):
    args = make_args(rng)
    if name == "insort_right":
      ours, theirs = list(args[0]), list(args[0])
      namespace[name](ours, args[1])
      reference(theirs, args[1])
      assert ours == theirs
    else:
      assert namespace[name](*args) == reference(*args)


def test_rules_on_a_synthetic_module():
  source = textwrap.dedent('''\
      """Module."""
      import os
      from .sibling import helper_a, helper_b as hb
      LIMIT = 10
      STATE = {}

      def uses_imports(path):
          """Return the base name of a path, a documented function."""
          # comment kept
          return os.path.basename(helper_a(path))

      def uses_constant(x):
          """Clamp x to the module's limit, by a documented rule."""
          y = min(x, LIMIT)
          return y + hb(x)

      def uses_global_statement(x):
          """Mutates module state, which the program would not own."""
          global STATE
          STATE = x
          return x

      def undocumented(x):
          return x

      def one_line_doc(x): "A docstring sharing the def line is not removable."; return x

      def only_pass():
          """Nothing but a placeholder body after the docstring."""
          pass

      class Box:
          """A box."""
          size = 3

          def area(self, scale):
              """Area of the box, scaled by a factor given by the caller."""
              side = self.size * scale
              return side ** 2
      ''')
  got = {p.source_id: p for p in si.pairs_from_module(source, "pkg/mod.py", prefix="t")}
  assert sorted(got) == ["t:pkg/mod.py:Box.area", "t:pkg/mod.py:uses_constant",
                         "t:pkg/mod.py:uses_imports"]
  assert got["t:pkg/mod.py:uses_imports"].program == textwrap.dedent('''\
      from pkg.sibling import helper_a
      import os


      def uses_imports(path):
          # comment kept
          return os.path.basename(helper_a(path))
      ''')
  assert got["t:pkg/mod.py:uses_constant"].program == textwrap.dedent('''\
      from pkg.sibling import helper_b as hb

      LIMIT = 10


      def uses_constant(x):
          y = min(x, LIMIT)
          return y + hb(x)
      ''')
  area = got["t:pkg/mod.py:Box.area"]
  assert area.instruction == ("Write a method `area(self, scale)` for the class `Box`.\n\n"
                              "Area of the box, scaled by a factor given by the caller.")
  assert area.program == ("class Box:\n    def area(self, scale):\n        side = self.size * scale\n"
                          "        return side ** 2\n")


def test_unparsable_module_gives_nothing():
  assert list(si.pairs_from_module("def f(:\n", "bad.py")) == []
