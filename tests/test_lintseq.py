"""LintSeq on real code: round trips, lint-clean intermediate states, determinism, bad input.

Every intermediate program is checked by an independent checker written here (full `compile`
plus pyflakes, every pyflakes message that is not on an explicit list of warnings counts), and
every diff is re-applied by an independent applier that uses the *old* line ranges.
"""
import ast
import functools
import hashlib
import json
import multiprocessing
import pathlib
import random
import re
import sysconfig
import warnings

import pyflakes.checker
import pytest

from data_gen import edit_format
from data_gen.perf import bench
from data_gen.lintseq import LintSeqError, apply_diffs, lintseq, lintseq_sample

STDLIB = pathlib.Path(sysconfig.get_paths()["stdlib"])
FAST_MODULES = ["textwrap.py", "json/decoder.py", "json/encoder.py", "shlex.py", "fnmatch.py",
                "posixpath.py", "heapq.py", "string.py", "difflib.py", "pprint.py", "tokenize.py",
                "csv.py", "dataclasses.py", "calendar.py", "gettext.py", "statistics.py",
                "contextlib.py", "functools.py", "argparse.py", "inspect.py"]
FAST_WHOLE_MODULES = ["bisect.py", "colorsys.py", "fnmatch.py", "shlex.py", "textwrap.py",
                      "keyword.py", "this.py", "json/__init__.py"]

# pyflakes messages that do not make a program broken; every other message is an error here.
WARNINGS = frozenset({
    "UnusedImport", "UnusedVariable", "UnusedAnnotation", "UnusedIndirectAssignment",
    "RedefinedWhileUnused", "ImportShadowedByLoopVar", "ImportStarUsed", "ImportStarUsage",
    "MultiValueRepeatedKeyLiteral", "MultiValueRepeatedKeyVariable", "IfTuple", "AssertTuple",
    "IsLiteral", "FStringMissingPlaceholders", "TStringMissingPlaceholders",
    "StringDotFormatExtraPositionalArguments", "StringDotFormatExtraNamedArguments",
    "StringDotFormatMissingArgument", "StringDotFormatMixingAutomatic",
    "StringDotFormatInvalidFormat", "PercentFormatInvalidFormat",
    "PercentFormatMixedPositionalAndNamed", "PercentFormatUnsupportedFormatCharacter",
    "PercentFormatPositionalCountMismatch", "PercentFormatExtraNamedArguments",
    "PercentFormatMissingArgument", "PercentFormatExpectedMapping",
    "PercentFormatExpectedSequence", "PercentFormatStarRequiresSequence",
})
_HEADER = re.compile(r"@@ -(\d+),0 \+(\d+)(?:,(\d+))? @@")


def checker_errors(text: str) -> set:
    """Errors of `text`: SyntaxError from a full compile, else pyflakes errors as keys."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compile(text, "<test>", "exec", dont_inherit=True)
        messages = pyflakes.checker.Checker(ast.parse(text), filename="<test>").messages
    keys = set()
    for m in messages:
        if type(m).__name__ not in WARNINGS:
            args = m.message_args if isinstance(m.message_args, tuple) else (m.message_args,)
            keys.add((type(m).__name__, *(a for a in args if not isinstance(a, int))))
    return keys


def apply_by_old_ranges(old: list[str], diff: str) -> list[str]:
    """Applies an insertion diff the way `patch` reads it: after line `-a` of the old file."""
    hunks = []
    for line in diff.split("\n"):
        if line.startswith("@@"):
            match = _HEADER.fullmatch(line)
            assert match, f"bad header {line!r}"
            hunks.append((int(match[1]), int(match[2]), int(match[3] or 1), []))
        else:
            assert line.startswith("+"), f"not an insertion line: {line!r}"
            hunks[-1][3].append(line[1:])
    new, previous, inserted = [], 0, 0
    for old_start, new_start, count, lines in hunks:
        assert count == len(lines) > 0
        assert old_start >= previous and new_start == old_start + inserted + 1
        new += old[previous:old_start] + lines
        previous, inserted = old_start, inserted + count
    return new + old[previous:]


def assert_valid_sequence(program: str, diffs: list[str], linted: bool = True,
                          keep_original_errors: bool = False) -> None:
    """Round trip, insertion-only non-empty diffs, and (linted) every state before the last
    free of errors (with `keep_original_errors`: none but the original program's)."""
    original = checker_errors(program) if linted else None
    tolerated = original if keep_original_errors else set()
    assert diffs, "no diffs"
    lines: list[str] = []
    for i, diff in enumerate(diffs):
        assert diff and not diff.endswith("\n") and edit_format.DIFF_TOKEN not in diff
        expected = apply_by_old_ranges(lines, diff)
        edit_format.apply_diff(lines, diff)
        assert lines == expected
        if linted:
            state = "\n".join(lines)
            try:
                errors = checker_errors(state)
            except SyntaxError as error:
                pytest.fail(f"state {i} does not compile ({error}):\n{state}")
            allowed = original if i == len(diffs) - 1 else tolerated
            assert errors <= allowed, f"state {i} has new errors {errors - allowed}:\n{state}"
    assert "\n".join(lines) == program
    assert apply_diffs(diffs) == program


@functools.cache
def stdlib_functions(modules: tuple[str, ...], max_lines: int = 80) -> list[tuple[str, str]]:
    found = []
    for rel_path in modules:
        for source_id, program in bench.module_functions(str(STDLIB / rel_path), rel_path):
            if program.count("\n") <= max_lines:
                found.append((source_id, program))
    return found


FAST_FUNCTIONS = stdlib_functions(tuple(FAST_MODULES))[::3][:180]


def test_fast_corpus_is_real():
    assert len(FAST_FUNCTIONS) >= 150
    assert sum(p.count("\n") for _, p in FAST_FUNCTIONS) > 2000


@pytest.mark.parametrize("chunk", range(6))
def test_stdlib_functions_round_trip_and_lint_clean(chunk):
    for source_id, program in FAST_FUNCTIONS[chunk::6]:
        for diffs in lintseq(program, num_samples=2, seed=chunk):
            assert_valid_sequence(program, diffs)


@pytest.mark.parametrize("rel_path", FAST_WHOLE_MODULES)
def test_whole_stdlib_modules(rel_path):
    program = (STDLIB / rel_path).read_text(encoding="utf-8")
    (diffs,) = lintseq(program, num_samples=1, seed=1)
    assert_valid_sequence(program, diffs)


def test_installed_package_module():
    program = pathlib.Path(pyflakes.checker.__file__).read_text(encoding="utf-8")
    (diffs,) = lintseq(program, num_samples=1)
    assert apply_diffs(diffs) == program
    assert len(diffs) > 20


@pytest.mark.slow
def test_slow_sweep_stdlib_functions():
    programs = stdlib_functions(tuple(sorted(
        str(p.relative_to(STDLIB)) for p in STDLIB.glob("*.py"))), max_lines=150)
    assert len(programs) > 2000
    for source_id, program in programs[::2]:
        try:
            sequences = lintseq(program, num_samples=2)
        except LintSeqError as error:   # a few stdlib files have syntax only their own tools read
            assert error.reason == "syntax_error", source_id
            continue
        for diffs in sequences:
            assert_valid_sequence(program, diffs)


@pytest.mark.slow
def test_slow_sweep_whole_modules():
    paths = sorted(p for p in STDLIB.glob("**/*.py")
                   if "test" not in p.parts and "site-packages" not in p.parts)
    site = pathlib.Path(pyflakes.__file__).parent.parent
    paths = paths[::25] + sorted(site.glob("pyflakes/*.py")) + sorted(site.glob("absl/*.py"))
    checked = 0
    for path in paths:
        program = path.read_text(encoding="utf-8", errors="replace")
        if program.count("\n") > 2500:
            continue
        try:
            sequences = lintseq(program, num_samples=1, seed=checked)
        except LintSeqError as error:
            assert error.reason in ("syntax_error", "empty"), path
            continue
        assert_valid_sequence(program, sequences[0])
        checked += 1
    assert checked >= 40


def test_lint_every_state_agrees_with_fast_path():
    """The fast path skips only checks whose outcome it can prove. Its rules may delete more
    than the checker asks for in corner cases; on real code it gives exactly the sequences of
    the paper's check-every-state loop."""
    for source_id, program in FAST_FUNCTIONS[::2]:
        fast = lintseq(program, num_samples=2)
        slow = lintseq(program, num_samples=2, lint_every_state=True)
        assert fast == slow, source_id
        for diffs in slow:
            assert_valid_sequence(program, diffs)
    for source_id, program in FAST_FUNCTIONS[1::6]:
        fast = lintseq(program, num_samples=2, keep_original_errors=True)
        slow = lintseq(program, num_samples=2, lint_every_state=True, keep_original_errors=True)
        assert fast == slow, source_id
        for diffs in slow:
            assert_valid_sequence(program, diffs, keep_original_errors=True)


def _steps_by_line(diffs: list[str]) -> list[int]:
    """For each line of the final program, the index of the diff that inserted it."""
    steps: list[int] = []
    for step, diff in enumerate(diffs):
        for match in _HEADER.finditer(diff):
            start, count = int(match[2]), int(match[3] or 1)
            steps[start - 1:start - 1] = [step] * count
    return steps


def test_linter_free_ablation_is_the_references_random_chunks():
    """Random chunks of lines anywhere, blank lines and comments included: many diffs have
    several hunks and many states do not parse; the round trip stays exact."""
    multi_hunk = diffs_off = states = parsing = 0
    for source_id, program in FAST_FUNCTIONS[::4]:
        for diffs in lintseq(program, num_samples=2, use_linter=False):
            assert_valid_sequence(program, diffs, linted=False)
            diffs_off += len(diffs)
            multi_hunk += sum(d.count("@@ -") > 1 for d in diffs)
            for k in range(1, len(diffs)):
                states += 1
                try:
                    ast.parse(apply_diffs(diffs[:k]))
                    parsing += 1
                except SyntaxError:
                    pass
    assert multi_hunk > diffs_off / 5
    assert 0 < parsing < states / 2


def test_linter_free_chunk_sizes_are_uniform():
    """The first deletion (the last diff) takes k of the n lines, k uniform in 1..n-1; a
    one-line program is one diff."""
    program = "def f(x):\n    # c\n\n    return x\n"   # 5 lines with the final empty one
    sizes = {}
    for seed in range(400):
        (diffs,) = lintseq(program, num_samples=1, seed=seed, use_linter=False)
        size = len(diffs[-1].split("\n")) - diffs[-1].count("@@ -")
        sizes[size] = sizes.get(size, 0) + 1
        assert lintseq(program, num_samples=1, seed=seed, use_linter=False) == [diffs]
    assert sorted(sizes) == [1, 2, 3, 4] and min(sizes.values()) > 60
    assert lintseq("x = 1", num_samples=1, use_linter=False) == [["@@ -0,0 +1 @@\n+x = 1"]]


def test_docstring_lines_go_alone_other_statements_whole():
    """Lines inside docstrings (and other strings pyflakes never reads) are deleted alone or
    with the deeper-indented lines after them, as the reference deletes lines; every other
    multi-line statement is inserted in one step. Every state is still checked by
    `assert_valid_sequence` (compiles, lint-clean)."""
    docstring_splits = 0
    for source_id, program in FAST_FUNCTIONS[:60]:
        spans = [(n.lineno - 1, n.end_lineno - 1, isinstance(n, ast.Expr) and isinstance(
                     n.value, ast.Constant) or any(isinstance(c, ast.Constant) and c.end_lineno > c.lineno
                                                   for c in ast.walk(n)))
                 for n in ast.walk(ast.parse(program))
                 if isinstance(n, ast.stmt) and not hasattr(n, "body") and n.end_lineno > n.lineno]
        for diffs in lintseq(program, num_samples=3):
            assert_valid_sequence(program, diffs)
            steps = _steps_by_line(diffs)
            for first, last, has_string in spans:
                if len(set(steps[first:last + 1])) > 1:
                    assert has_string, (source_id, program.split("\n")[first:last + 1])
                    docstring_splits += 1
    assert docstring_splits > 20


def test_docstring_children_and_strings_pyflakes_reads():
    program = ('def f(x: """\nint\n""") -> int:\n    """Doc.\n\n    Args:\n'
               '        x: a number.\n    """\n    return x\n')
    seen_alone = set()
    for diffs in lintseq(program, num_samples=40):
        assert_valid_sequence(program, diffs)
        lines: list[str] = []
        for diff in diffs:
            edit_format.apply_diff(lines, diff)
            added = [line[1:] for line in diff.split("\n") if line.startswith("+")]
            if "        x: a number." in lines:   # deleting a line deletes its deeper lines
                assert "    Args:" in lines
            if "int" in added:   # an annotation string: pyflakes reads it, never split
                assert 'def f(x: """' in added
            if len(added) == 1:
                seen_alone.add(added[0])
    assert "        x: a number." in seen_alone


def test_bench_edit_shape_counts():
    """`data_gen.perf.bench`'s figures on a hand-made sequence: hunks, split statements, parses."""
    program = 'def f():\n    """Doc.\n\n    More.\n    """\n    return (1,\n            2)\n'
    diffs = ["@@ -0,0 +1,2 @@\n+def f():\n+",
             '@@ -1,0 +2,3 @@\n+    """Doc.\n+\n+    """',
             "@@ -3,0 +4 @@\n+    More.\n@@ -4,0 +6,2 @@\n+    return (1,\n+            2)"]
    assert apply_diffs(diffs) == program
    assert bench.sequence_shape(program, diffs) == {
        "edits": 3, "added_lines": 8, "multi_hunk_diffs": 1, "steps": 3, "split_steps": 2,
        "docstring_split_steps": 2, "states": 2, "parsing_states": 1}


# --- determinism ------------------------------------------------------------------------
def _sequences_of(program: str) -> list[list[str]]:
    return lintseq(program, num_samples=3, seed=7)


def test_deterministic_and_sample_api_consistent():
    for source_id, program in FAST_FUNCTIONS[:20]:
        first = lintseq(program, num_samples=4, seed=11)
        assert lintseq(program, num_samples=4, seed=11) == first
        for i, diffs in enumerate(first):
            assert lintseq_sample(program, seed=11, sample_index=i) == diffs
        assert lintseq(program, num_samples=2, seed=11) == first[:2]


def test_seeds_and_samples_differ():
    """Programs with a choice differ by seed (some have none: one deletion takes everything,
    e.g. when the `def` line itself uses a name the snippet does not define)."""
    distinct = differs_by_seed = one_step = 0
    for source_id, program in FAST_FUNCTIONS[:30]:
        sequences = lintseq(program, num_samples=5, seed=0)
        distinct += len({tuple(s) for s in sequences})
        if all(len(s) == 1 for s in sequences):
            one_step += 1
            continue
        differs_by_seed += lintseq(program, num_samples=5, seed=1) != sequences
    assert distinct / (30 * 5) > 0.6
    assert one_step <= 6 and differs_by_seed >= 0.9 * (30 - one_step)


def test_order_and_worker_independence():
    programs = [p for _, p in FAST_FUNCTIONS[:24]]
    in_order = [_sequences_of(p) for p in programs]
    reversed_order = [_sequences_of(p) for p in reversed(programs)][::-1]
    assert in_order == reversed_order
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pooled = pool.map(_sequences_of, programs, chunksize=5)
    assert pooled == in_order


def test_golden_output():
    """Pins the exact output: a change here changes every generated dataset."""
    program = EDGE_CASES["try_forms"] + EDGE_CASES["loops_with_else"]
    digest = hashlib.sha256(json.dumps(lintseq(program, num_samples=3, seed=0)).encode())
    assert digest.hexdigest()[:16] == GOLDEN


GOLDEN = "8f0a9b0323ad760d"


# --- hand-written edge cases ----------------------------------------------------------------
EDGE_CASES = {
    "future_annotations": (
        "from __future__ import annotations\n\n\n"
        "def f(x: Later) -> Later:\n    return x\n\n\nclass Later:\n    pass\n"),
    "global": (
        "counter = 0\n\n\ndef bump():\n    global counter\n    counter += 1\n    return counter\n\n"
        "print(bump())\n"),
    "nonlocal": (
        "def outer():\n    total = 0\n\n    def add(x):\n        nonlocal total\n"
        "        total += x\n        return total\n    return add\n"),
    "nonlocal_two_bindings": (
        "def outer(flag):\n    total = 0\n    if flag:\n        total = 1\n"
        "    def add(x):\n        nonlocal total\n        total += x\n        return total\n"
        "    return add\n"),
    "dunder_all": (
        "__all__ = ['a', 'b']\n\n\ndef a():\n    return 1\n\n\ndef b():\n    return a()\n"),
    "star_import": (
        "from os.path import *\n\n\ndef f(p):\n    return join(p, 'x')\n"),
    "except_name_error": (
        "try:\n    value = basestring\nexcept ImportError:\n    value = None\n"
        "except NameError:\n    value = str\nprint(value)\n"),
    "docstrings": (
        '"""Module doc."""\n\n\nclass A:\n    """Only a docstring."""\n\n\n'
        'def f():\n    """Doc."""\n    return A()\n'),
    "main_guard": (
        "import sys\n\n\ndef main(argv):\n    return len(argv)\n\n\n"
        "if __name__ == '__main__':\n    sys.exit(main(sys.argv))\n"),
    "multiline_strings": (
        'def f():\n    s = """\n# not a comment\n    still string\n"""\n    t = (\n        "a"\n'
        '        # a comment inside brackets\n        "b"\n    )\n    return s + t\n'),
    "continuations": (
        "x = 1 + \\\n    2\nif x and \\\n   x > 1:\n    y = x\nelse:\n    y = 0\n"
        "def f(): \\\n    return y\n"),
    "tabs": "def f(x):\n\tif x:\n\t\treturn 1\n\telse:\n\t\treturn 2\n",
    "crlf": "def f(x):\r\n    if x:\r\n        return 1\r\n    return 2\r\n",
    "form_feed": "import os\n\x0c\n\ndef f():\n    return os.sep\n",
    "no_final_newline": "x = 1\ny = x + 1",
    "semicolons_and_inline_bodies": (
        "a = 1; b = a\nif a: print(b)\nelif b: print(a)\nelse: pass\nwhile a: a -= 1\n"),
    "decorators": (
        "import functools\n\n\n@functools.cache\n# between decorators\n@staticmethod\n"
        "def f(n):\n    return n\n\n\nclass C:\n    @property\n    def p(self):\n        return f(1)\n"),
    "try_forms": (
        "import threading\nlock = threading.Lock()\n\n\ndef f():\n    lock.acquire()\n    try:\n"
        "        return 1\n    finally:\n        lock.release()\n\n\ntry:\n    import json\n"
        "except ImportError:\n    json = None\nelse:\n    x = json\nfinally:\n    y = 1\n"),
    "loops_with_else": (
        "def f(xs):\n    for x in xs:\n        if x:\n            break\n    else:\n        x = None\n"
        "    while xs:\n        xs = xs[1:]\n    else:\n        pass\n    return x\n"),
    "match": (
        "def f(command):\n    match command.split():\n        case [action]:\n            return action\n"
        "        case [action, obj]:\n            return action + obj\n"
        "        case Point(x=0, y=yy) if yy > 0:\n            return yy\n        case _:\n"
        "            return None\n"),
    "comprehensions_lambda_walrus": (
        "def f(xs):\n    if (n := len(xs)) > 2:\n        return [x * n for x in xs if x]\n"
        "    key = lambda item: item[n]\n    return sorted({x: x for x in xs}, key=key)\n"),
    "async": (
        "async def f(s):\n    async with s as c:\n        async for x in c:\n            await x\n"
        "    return c\n"),
    "del_and_rebind": "x = 1\ndel x\nx = 2\nprint(x)\n",
    "builtin_shadowing": (
        "def f(module):\n    if module:\n        object = module\n    else:\n        object = None\n"
        "    object = getattr(object, 'x')\n    return object\n"),
    "string_annotations": (
        "from typing import List\n\n\ndef f(x: 'List[int]') -> 'List':\n    return x\n"),
    "original_errors": "def f(x):\n    y = helper(x)\n    return y + CONSTANT\n",
    # pyflakes reports only the last read before the assignment; deleting it reveals the first.
    "masked_undefined_local": "x = 1\n\n\ndef f():\n    print(x)\n    y = x\n    x = 2\n    return y\n",
    "undefined_decorator": (
        "@abstractmethod\n@property\ndef f(self):\n    x = self.y\n    return x\n"),
    "class_scope": (
        "class A:\n    x = 1\n    y = x + 1\n\n    def m(self):\n        return self.y\n"
        "    z = [y for _ in range(3)]\n"),
    "unicode": "def größe(ä):\n    # 日本語のコメント\n    return ä * 2  # 🚀\n\ns = '\\u2028'\n",
    "comments_only_tail": "x = 1\n# trailing comment\n\n",
    "nested_functions": (
        "def outer(a):\n    def inner(b):\n        return a + b\n    def other():\n"
        "        return inner(1)\n    return other\n"),
}


@pytest.mark.parametrize("name", sorted(EDGE_CASES))
def test_edge_cases(name):
    program = EDGE_CASES[name]
    for diffs in lintseq(program, num_samples=25):
        assert_valid_sequence(program, diffs)
    for diffs in lintseq(program, num_samples=5, lint_every_state=True):
        assert_valid_sequence(program, diffs)
    for diffs in lintseq(program, num_samples=5, use_linter=False):
        assert_valid_sequence(program, diffs, linted=False)


def _inserted_together(diffs: list[str], *texts: str) -> bool:
    return any(all(f"+{t}" in diff.split("\n") for t in texts) for diff in diffs)


def test_units_keep_comments_and_statements_together_decorators_go_alone():
    """A comment goes with the unit below it; a decorator is a unit of its own (as a line of
    the reference), which its definition's deletion takes along."""
    program = EDGE_CASES["decorators"]
    decorator_after_def = 0
    for diffs in lintseq(program, num_samples=20):
        assert _inserted_together(diffs, "# between decorators", "@staticmethod")
        steps = _steps_by_line(diffs)
        lines = program.split("\n")
        for decorator, definition in [("@functools.cache", "def f(n):"),
                                      ("@staticmethod", "def f(n):"),
                                      ("    @property", "    def p(self):")]:
            step, def_step = steps[lines.index(decorator)], steps[lines.index(definition)]
            assert step >= def_step
            decorator_after_def += step > def_step
    assert decorator_after_def > 10
    program = "x = 1\n# about y\ny = (x,\n     2)\n"
    for diffs in lintseq(program, num_samples=10):
        assert _inserted_together(diffs, "# about y", "y = (x,", "     2)")


def test_future_import_stays_first():
    program = EDGE_CASES["future_annotations"]
    for diffs in lintseq(program, num_samples=20):
        lines: list[str] = []
        for diff in diffs:
            edit_format.apply_diff(lines, diff)
            code = [l for l in lines if l.strip()]
            if "from __future__ import annotations" in code:
                assert code[0] == "from __future__ import annotations"


def test_original_errors_are_tolerated_not_rejected():
    program = EDGE_CASES["original_errors"]
    assert checker_errors(program) == {("UndefinedName", "helper"), ("UndefinedName", "CONSTANT")}
    assert len(lintseq(program, num_samples=3)) == 3
    for diffs in lintseq(program, num_samples=5, keep_original_errors=True):
        assert_valid_sequence(program, diffs, keep_original_errors=True)


def test_original_errors_go_with_the_first_deletion():
    """As in the reference, whose linter flags a program's own errors like any other: the
    lines with them are deleted in the first step, wherever the sampled line is, so the last
    diff inserts them too (often as a second hunk); every earlier state is error-free. With
    `keep_original_errors` such a line is sampled like any other and may come earlier."""
    program = "a = 1\nb = missing\nc = 2\nd = a + c\ne = 3\n"
    last_hunks = set()
    kept_earlier = 0
    for fast in (True, False):
        for diffs in lintseq(program, num_samples=30, lint_every_state=not fast):
            assert_valid_sequence(program, diffs)
            assert "+b = missing" in diffs[-1].split("\n")
            last_hunks.add(diffs[-1].count("@@ -"))
    for diffs in lintseq(program, num_samples=30, keep_original_errors=True):
        assert_valid_sequence(program, diffs, keep_original_errors=True)
        kept_earlier += "+b = missing" not in diffs[-1].split("\n")
    assert last_hunks == {1, 2}
    assert kept_earlier > 5
    program = EDGE_CASES["undefined_decorator"]   # the decorator alone, not the function
    sequences = lintseq(program, num_samples=10)
    assert all("+@abstractmethod" in diffs[-1].split("\n") for diffs in sequences)
    assert sum("+def f(self):" not in diffs[-1].split("\n") for diffs in sequences) >= 3


# --- bad input --------------------------------------------------------------------------
BAD_INPUTS = {
    "syntax_error": ("def f(:\n    pass\n", "syntax_error"),
    "compile_only_error": ("return 1\n", "syntax_error"),
    "nonlocal_at_module": ("nonlocal x\n", "syntax_error"),
    "empty": ("", "empty"),
    "whitespace_only": ("  \n\t\n\n", "empty"),
    "comments_only": ("# nothing here\n# at all\n", "empty"),
    "null_bytes": ("x = 1\x00\n", "binary"),
    "null_bytes_in_bytes": (b"x = 1\x00\n", "binary"),
    "not_utf8": (b"x = '\xff\xfe'\n", "not_utf8"),
    "lone_surrogate": ("x = '\ud800'\n", "not_utf8"),
    "lone_surrogate_from_json": (json.loads('"x = \\"\\udcff\\"\\n"'), "not_utf8"),
    "bare_cr": ("x = 1\ry = 2\n", "bare_cr"),
    "diff_token": ("x = '<|diff|>'\n", "contains_diff_token"),
    "not_text": (None, "not_text"),
    "too_many_lines": ("x = 1\n" * 6000, "too_many_lines"),
    "too_many_bytes": ("x = '" + "a" * 1_100_000 + "'\n", "too_many_bytes"),
    "nested_parens": ("x = " + "(" * 300 + "1" + ")" * 300 + "\n", "syntax_error"),
    "nested_blocks": ("".join("    " * i + "for x in y:\n" for i in range(30)) + "    " * 30
                      + "pass\n", "syntax_error"),
    "indentation": ("def f():\nreturn 1\n", "syntax_error"),
    "bom": ("\ufeffx = 1\n", "syntax_error"),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_input_raises_lintseq_error(name):
    program, reason = BAD_INPUTS[name]
    with pytest.raises(LintSeqError) as info:
        lintseq(program, num_samples=2)
    assert info.value.reason == reason
    assert isinstance(info.value, ValueError)


def test_size_and_time_limits():
    program = FAST_FUNCTIONS[0][1]
    with pytest.raises(LintSeqError) as info:
        lintseq(program, max_lines=3)
    assert info.value.reason == "too_many_lines"
    with pytest.raises(LintSeqError) as info:
        lintseq(program, max_bytes=30)
    assert info.value.reason == "too_many_bytes"
    with pytest.raises(LintSeqError) as info:
        lintseq(program, time_limit_s=-1.0)
    assert info.value.reason == "timeout"
    assert lintseq(program, max_lines=None, max_bytes=None, time_limit_s=None, num_samples=1)


def test_bytes_input_is_utf8():
    program = EDGE_CASES["unicode"]
    assert lintseq(program.encode("utf-8"), num_samples=2) == lintseq(program, num_samples=2)


def test_deep_expressions_never_crash():
    for program in ["x = " + " + ".join(["1"] * 3000) + "\n",
                    "x = " + "-" * 5000 + "1\n",
                    "x = [" * 150 + "]" * 150 + "\n",
                    "def f():\n    return " + "lambda: " * 150 + "1\n",
                    "x = 1\n" + "".join("    " * i + "if x:\n" for i in range(60)) + "    " * 60 + "x = 2\n",
                    "".join("    " * i + "if x:\n" for i in range(120)) + "    " * 120 + "pass\n"]:
        try:
            sequences = lintseq(program, num_samples=1)
        except LintSeqError as error:
            assert error.reason in ("too_deep", "syntax_error")
        else:
            assert apply_diffs(sequences[0]) == program


def test_mutated_programs_never_crash():
    """Random damage to real code: a valid edit sequence or a LintSeqError, nothing else."""
    rng = random.Random(0)
    alphabet = ["(", ")", ":", "\n", "    ", "\t", "\\", "'", '"""', "#", "é", "\r\n", "\x0c",
                "lambda", "nonlocal x\n", "global y\n", "yield", "return", "*", "@", "del x\n"]
    outcomes = {"ok": 0, "error": 0}
    for source_id, program in FAST_FUNCTIONS[:60]:
        for _ in range(4):
            text = program
            for _ in range(rng.randint(1, 3)):
                i = rng.randrange(len(text) + 1)
                j = min(len(text), i + rng.randint(0, 6))
                text = text[:i] + rng.choice(alphabet) + text[j:]
            try:
                sequences = lintseq(text, num_samples=1)
            except LintSeqError:
                outcomes["error"] += 1
                continue
            outcomes["ok"] += 1
            assert_valid_sequence(text, sequences[0])
    assert outcomes["ok"] > 20 and outcomes["error"] > 20, outcomes


# --- random programs that stress the checker-skipping rules ---------------------------------
class _ProgramGenerator:
    """Small random programs that reuse a few names across scopes, `del`, `global`/`nonlocal`,
    comprehensions, lambdas, `:=`, annotations, star imports, `__all__`, `except NameError`,
    `match` guards: the corners of pyflakes' name resolution."""

    NAMES = ["a", "b", "c", "len", "x"]

    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    def name(self) -> str:
        return self.rng.choice(self.NAMES)

    def expr(self, depth: int = 0) -> str:
        r, n = self.rng.random(), self.name()
        if depth > 1 or r < 0.4:
            return self.rng.choice([n, self.name(), "1", "'s'", "None"])
        forms = [f"{self.expr(depth + 1)} + {self.expr(depth + 1)}", f"f({self.expr(depth + 1)})",
                 f"[{n} for {n} in {self.expr(depth + 1)} if {self.expr(depth + 1)}]",
                 f"(lambda {n}: {n} + {self.expr(depth + 1)})", f"({n} := {self.expr(depth + 1)})",
                 f"cast('{n}', {self.expr(depth + 1)})", f"{n}.attr"]
        return self.rng.choice(forms)

    def block(self, indent: int, ctx: frozenset, depth: int) -> list[str]:
        return [line for _ in range(self.rng.randint(1, 3))
                for line in self.statement(indent, ctx, depth)]

    def statement(self, indent: int, ctx: frozenset, depth: int) -> list[str]:
        pad, n, r = "    " * indent, self.name(), self.rng.random()
        sub = lambda extra=frozenset(), drop=frozenset(): self.block(indent + 1, (ctx | extra) - drop, depth + 1)
        if depth >= 3 or r < 0.3:
            simple = [f"{n} = {self.expr()}", f"{n} += {self.expr()}", f"print({self.expr()})",
                      f"del {n}", f"{n}: int", f"{n}: 'int' = {self.expr()}", f"import os as {n}",
                      f"{n}, {self.name()} = {self.expr()}, 1", f"{n} = 1; {self.name()} = {self.expr()}"]
            if "function" in ctx:
                simple += [f"return {self.expr()}", f"global {n}", f"nonlocal {n}"]
            if "loop" in ctx:
                simple += ["break", "continue"]
            if "module" in ctx:
                simple += ["from os.path import *", f"__all__ = ['{n}', '{self.name()}']"]
            return [pad + self.rng.choice(simple)]
        if r < 0.45:
            out = [pad + f"if {self.expr()}:", *sub()]
            if self.rng.random() < 0.4:
                out += [pad + f"elif {self.expr()}:", *sub()]
            if self.rng.random() < 0.4:
                out += [pad + "else:", *sub()]
            return out
        if r < 0.55:
            head = f"for {n} in {self.expr()}:" if self.rng.random() < 0.6 else f"while {self.expr()}:"
            return [pad + head, *sub(frozenset({"loop"}))]
        if r < 0.67:
            out = [pad + "try:", *sub()]
            handlers = self.rng.randint(0, 2)
            for _ in range(handlers):
                kind = self.rng.choice(["NameError", "ValueError", f"ValueError as {n}", "(NameError, KeyError)"])
                out += [pad + f"except {kind}:", *sub()]
            if handlers and self.rng.random() < 0.3:
                out += [pad + "else:", *sub()]
            if not handlers or self.rng.random() < 0.3:
                out += [pad + "finally:", *sub()]
            return out
        if r < 0.82:
            args = self.rng.choice(["", n, f"{n}, {self.name()}=1", f"{n}: '{self.name()}'", f"*{n}"])
            returns = self.rng.choice(["", f" -> '{self.name()}'", f" -> {self.name()}"])
            decorator = [pad + "@" + self.name()] if self.rng.random() < 0.2 else []
            return [*decorator, pad + f"def {self.rng.choice(['f', 'g', n])}({args}){returns}:",
                    *sub(frozenset({"function"}), frozenset({"loop", "module"}))]
        if r < 0.88:
            return [pad + f"class {self.rng.choice(['C', n])}({self.name()}):",
                    *sub(drop=frozenset({"loop", "function", "module"}))]
        if r < 0.93:
            return [pad + f"with {self.expr()} as {n}:", *sub()]
        return [pad + f"match {self.expr()}:", pad + f"    case [{n}] if {self.name()}:",
                *self.block(indent + 2, ctx, depth + 1), pad + "    case _:",
                *self.block(indent + 2, ctx, depth + 1)]

    def programs(self, count: int) -> list[str]:
        found = []
        while len(found) < count:
            lines = []
            if self.rng.random() < 0.2:
                lines.append("from __future__ import annotations")
            if self.rng.random() < 0.3:
                lines.append("from typing import cast")
            for _ in range(self.rng.randint(2, 6)):
                lines += self.statement(0, frozenset({"module"}), 0)
            program = "\n".join(lines) + "\n"
            try:
                compile(program, "<generated>", "exec", dont_inherit=True)
            except SyntaxError:
                continue
            found.append(program)
        return found


def _check_generated(seed: int, count: int) -> None:
    for program in _ProgramGenerator(seed).programs(count):
        for diffs in lintseq(program, num_samples=3):
            assert_valid_sequence(program, diffs)
        for diffs in lintseq(program, num_samples=2, lint_every_state=True):
            assert_valid_sequence(program, diffs)


def test_random_programs_stay_lint_clean():
    _check_generated(seed=100, count=40)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(5))
def test_random_programs_stay_lint_clean_sweep(seed):
    _check_generated(seed=seed, count=400)
