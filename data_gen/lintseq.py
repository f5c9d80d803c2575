"""LintSeq: a program -> insertion edit sequences whose every intermediate program is lint-clean.

The algorithm of DESIGN.md §2 (Piterbarg et al., arXiv 2410.02749) with pyflakes as the checker,
run in-process on strings. Backward phase, per sequence: repeatedly sample a unit of the
program (probability proportional to its nesting depth, 1 at the top level), delete it with its
block, and keep deleting what the checker then reports as broken until the rest is clean; the
forward phase writes the reversed deletions as insertion diffs (`data_gen.edit_format`).

Units (the granularity). The program's lines are split into units derived from the AST:
- a simple statement is one unit, however many lines it spans (strings, brackets, `\\`);
- a compound statement's header lines (decorators, `def`/`class`/`if`/`for`/`while`/`with`/
  `try`/`match` up to the colon) are one unit whose *block* is the whole statement;
- every `elif`/`else`/`except`/`finally`/`case` clause header is a unit whose block is its body,
  and it belongs to the header's block;
- units that share a line (`a = 1; b = 2`, `if x: return y`, a line ending in `\\`) are merged.
Comment-only and blank lines are never sampled: each travels with the next unit below it, and
those after the last unit travel with the last unit, so applying all diffs gives back the
program character for character (a final newline is an empty last line, CRLF line ends keep
their "\\r"). Deleting a unit deletes its block, so no statement outlives its header.

Structure repair (what deleting whole statements can still break syntactically): a clause
whose body is gone goes too (the whole statement when it is the first clause); a `try` left
without `except` loses its `else`, and without `finally` as well goes entirely; a `match`
left without cases goes entirely. These are the deletions a syntax check would force; they are
applied directly, so the checker never sees an empty block.

Errors. The checker is `ast.parse` (plus `symtable` for programs with `nonlocal`/`global`,
whose binding errors only the compiler front end finds) and pyflakes; the pyflakes messages in
`ERROR_MESSAGES` count as errors: names that do not resolve and constructs that cannot run
(`return`/`yield` outside a function, `break`/`continue` outside a loop, late `__future__`
imports, duplicate arguments, ...). Warnings (unused imports/variables, redefinitions, format
string slips, `is` with a literal) are not errors: an import whose use was deleted may stay.
Errors of the original program are tolerated, compared by message class and its non-numeric
arguments (line numbers shift between states).

Speed (why most states are never linted). Removing whole statements from a program that
compiles can only create three kinds of errors: syntax errors from emptied blocks or broken
`try`/`match` structure (repaired above), and name-resolution errors (undefined names or
locals, undefined `__all__` exports, `nonlocal` without a binding), which need a removed
*binding* of a name that a remaining statement *uses*. Every other pyflakes error is a property
of a single statement or of its enclosing blocks, which survive unchanged. Each program is
analysed once into per-unit tables of bindings and uses with their scopes (strings where
pyflakes reads annotations -- annotations, arguments of `typing` calls, subscripts of `typing`
members -- and `__all__` entries count as uses; `global`/`nonlocal` bind in every enclosing
scope, as pyflakes does; `del x` and `x: int` count as (non-plain) bindings, since pyflakes'
resolution depends on them; a scope is a module, class or function, and lambdas/comprehensions
are folded into their statement's scope with their own names left out). For a deletion, every
remaining use of a removed binding is then classified:
- *certain*: no other binding of the name remains in any enclosing scope, or the only ones left
  are in the use's own scope and later in the text, and it is no builtin; pyflakes reports
  it (it resolves names in textual order within a scope), so the using unit is deleted without
  running the checker;
- *safe*: the name is a builtin with no binding left (and the using statement does not bind it
  itself: "local variable referenced before assignment"), or a plain binding of it in the same
  scope remains earlier in the text and the name is never `del`-eted nor declared
  `global`/`nonlocal`;
- *uncertain* otherwise: the checker runs on that state and its errors decide.
Units whose removal changes name resolution without binding anything always run the checker:
`from x import *`, `from __future__ import ...`, an `except` clause naming `NameError`, a
statement about `__all__`, and a comprehension or class body reading a name before its
function's first local store of it (pyflakes' "referenced before assignment" looks at the last
read). The rules err towards deleting (where pyflakes would tolerate a use, e.g. under
`except NameError`, the unit still goes) and towards checking, never towards skipping a check
that could fail; the tests check every state of real and of randomly generated programs with an
independent checker. A state is linted only when something is uncertain, checker results are
cached per state, and the per-program tables are built once. On the standard-library benchmark
input the checker runs for <1% of the sequences, and the sequences are identical to those of
`lint_every_state=True`, which lints every candidate state as the paper does (slow; kept to
check exactly that).

Linter-free ablation (`use_linter=False`): units are sampled uniformly and deleted with their
blocks, nothing else; intermediate programs may be broken, as in the paper's ablation.

Determinism: sample i of a program draws from a SplitMix64 generator seeded by a BLAKE2b hash
of (program text, seed, i), so it does not depend on machine, Python version, process, worker
count or order.
"""
from __future__ import annotations

import ast
import bisect
import contextlib
import functools
import hashlib
import itertools
import symtable
import time
import warnings
from collections.abc import Iterator, Sequence

from pyflakes import checker as pyflakes_checker
from pyflakes import messages as pyflakes_messages

from data_gen import edit_format

DEFAULT_MAX_LINES = 5_000
DEFAULT_MAX_CHARS = 1_000_000
DEFAULT_TIME_LIMIT_S = 30.0

ERROR_MESSAGES: frozenset[type] = frozenset({
    pyflakes_messages.UndefinedName,
    pyflakes_messages.UndefinedLocal,
    pyflakes_messages.UndefinedExport,
    pyflakes_messages.ImportStarNotPermitted,
    pyflakes_messages.DuplicateArgument,
    pyflakes_messages.LateFutureImport,
    pyflakes_messages.FutureFeatureNotDefined,
    pyflakes_messages.ReturnOutsideFunction,
    pyflakes_messages.YieldOutsideFunction,
    pyflakes_messages.ContinueOutsideLoop,
    pyflakes_messages.BreakOutsideLoop,
    pyflakes_messages.DefaultExceptNotLast,
    pyflakes_messages.TwoStarredExpressions,
    pyflakes_messages.TooManyExpressionsInStarredAssignment,
    pyflakes_messages.ForwardAnnotationSyntaxError,
    pyflakes_messages.InvalidPrintSyntax,
    pyflakes_messages.RaiseNotImplemented,
})
"""pyflakes messages that mean the program cannot run as written (the rest are warnings)."""

_BUILTINS = pyflakes_checker.builtin_vars
_TYPING_MODULES = frozenset({"typing", "typing_extensions"})
_SAFE, _CERTAIN, _UNCERTAIN = range(3)   # how a use fares when no other binding is left
_FILENAME = "<lintseq>"


class LintSeqError(ValueError):
    """A program LintSeq cannot process; `reason` is a short machine-readable tag.

    Reasons: not_text, not_utf8, null_bytes, empty, too_large, syntax_error, too_deep,
    bare_cr (a carriage return not followed by a newline: Python would see a line break that
    the diff format does not), contains_diff_token, timeout.
    """

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def lintseq(program: str | bytes, *, num_samples: int = 5, seed: int = 0, use_linter: bool = True,
            max_lines: int | None = DEFAULT_MAX_LINES,
            time_limit_s: float | None = DEFAULT_TIME_LIMIT_S,
            lint_every_state: bool = False) -> list[list[str]]:
    """`num_samples` insertion edit sequences of `program`, each a list of diff strings.

    Sample i equals `lintseq_sample(program, seed=seed, sample_index=i, ...)`. Raises
    LintSeqError (with a `reason`) for programs that cannot be processed. `time_limit_s`
    bounds the whole call (None: no limit); `max_lines` the program's size.
    """
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    deadline = None if time_limit_s is None else time.monotonic() + time_limit_s
    with _input_errors():
        prepared = _prepare(program, max_lines)
        return [prepared.sample(_rng(prepared.text, seed, i), use_linter, lint_every_state,
                                deadline) for i in range(num_samples)]


def lintseq_sample(program: str | bytes, *, seed: int, sample_index: int, use_linter: bool = True,
                   max_lines: int | None = DEFAULT_MAX_LINES,
                   time_limit_s: float | None = DEFAULT_TIME_LIMIT_S,
                   lint_every_state: bool = False) -> list[str]:
    """Edit sequence number `sample_index` of `program` for `seed` (see `lintseq`)."""
    deadline = None if time_limit_s is None else time.monotonic() + time_limit_s
    with _input_errors():
        prepared = _prepare(program, max_lines)
        return prepared.sample(_rng(prepared.text, seed, sample_index), use_linter,
                               lint_every_state, deadline)


def apply_diffs(diffs: Sequence[str]) -> str:
    """The program that `diffs` build from the empty file (MalformedDiffError if they do not fit)."""
    lines: list[str] = []
    for diff in diffs:
        edit_format.apply_diff(lines, diff)
    return "\n".join(lines)


_MASK64 = (1 << 64) - 1


class _SplitMix64:
    """A tiny, fully specified PRNG: the same draws on every platform and Python version."""

    __slots__ = ("state",)

    def __init__(self, seed: int):
        self.state = seed & _MASK64

    def below(self, n: int) -> int:
        """A uniform integer in [0, n) (rejection sampling, no modulo bias)."""
        limit = (1 << 64) - (1 << 64) % n
        while True:
            self.state = z = (self.state + 0x9E3779B97F4A7C15) & _MASK64
            z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
            z ^= z >> 31
            if z < limit:
                return z % n


def _rng(text: str, seed: int, sample_index: int) -> _SplitMix64:
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8, person=b"editseq-lintseq")
    digest.update(f"|{int(seed)}|{int(sample_index)}".encode())
    return _SplitMix64(int.from_bytes(digest.digest(), "little"))


def _bits(mask: int) -> Iterator[int]:
    while mask:
        low = mask & -mask
        yield low.bit_length() - 1
        mask ^= low


def _validate(program: str | bytes, max_lines: int | None) -> str:
    if isinstance(program, bytes):
        if b"\x00" in program:
            raise LintSeqError("null_bytes")
        try:
            program = program.decode("utf-8")
        except UnicodeDecodeError as error:
            raise LintSeqError("not_utf8", str(error)) from None
    if not isinstance(program, str):
        raise LintSeqError("not_text", type(program).__name__)
    if len(program) > DEFAULT_MAX_CHARS:
        raise LintSeqError("too_large", f"{len(program)} characters")
    if "\x00" in program:
        raise LintSeqError("null_bytes")
    try:
        program.encode("utf-8")
    except UnicodeEncodeError as error:
        raise LintSeqError("not_utf8", str(error)) from None
    if not program.strip():
        raise LintSeqError("empty")
    if max_lines is not None and program.count("\n") + 1 > max_lines:
        raise LintSeqError("too_large", f"{program.count(chr(10)) + 1} lines > {max_lines}")
    if "\r" in program and program.count("\r") != program.count("\r\n"):
        raise LintSeqError("bare_cr")
    if edit_format.DIFF_TOKEN in program:
        raise LintSeqError("contains_diff_token")
    return program


@contextlib.contextmanager
def _input_errors() -> Iterator[None]:
    """Compiler warnings stay quiet; inputs too deep for the recursive parsers become errors."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            yield
        except (RecursionError, MemoryError):
            raise LintSeqError("too_deep", "nesting too deep to analyse") from None


def _prepare(program: str | bytes, max_lines: int | None) -> _Program:
    text = _validate(program, max_lines)
    try:
        tree = ast.parse(text, _FILENAME)
        compile(tree, _FILENAME, "exec", dont_inherit=True)
    except SyntaxError as error:
        raise LintSeqError("syntax_error", f"line {error.lineno}: {error.msg}") from None
    return _Program(text, tree)


@functools.lru_cache(maxsize=4096)
def _names_in_string(value: str) -> frozenset[str]:
    """Names pyflakes may read from a string (it parses string annotations and `__all__`)."""
    try:
        tree = ast.parse(value)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return frozenset()
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value != value:
            names |= _names_in_string(node.value)
    return frozenset(names)


class _Piece:
    """A statement, or the header of a compound statement or clause, before merging."""

    __slots__ = ("start", "end", "depth", "parent", "binds", "uses", "always_check", "stores_last",
                 "pending")

    def __init__(self, start: int, end: int, depth: int, parent: int):
        self.start, self.end, self.depth, self.parent = start, end, depth, parent
        self.binds: list[tuple[str, int, bool]] = []   # (name, scope, plain)
        self.uses: list[tuple[str, int, bool, bool]] = []    # (name, scope, nested, by `del`)
        self.always_check = False
        # All its reads happen before its bindings (false for `:=`, guards after a pattern,
        # `with a() as x, b(x):`), so a name it both reads and binds is read unbound.
        self.stores_last = True
        self.pending = None  # how to find start/end lines once string lines are known


_COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)
_COMPOUND = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.For, ast.AsyncFor, ast.While,
             ast.If, ast.With, ast.AsyncWith, ast.Try, ast.TryStar, ast.Match)


class _Analysis:
    """Walks the AST once: pieces with their line spans, bindings, uses and block structure."""

    def __init__(self, tree: ast.Module, lines: list[str]):
        self.lines = lines
        self.pieces: list[_Piece] = []
        self.scope_parent: list[int] = [-1]
        self.scope_is_function: list[bool] = [False]
        self.string_lines: set[int] = set()   # 1-based lines that start inside a string
        self.deleted_names: set[str] = set()
        self.declared_names: set[str] = set()
        self.has_declarations = False
        # Names pyflakes may take for typing members, which make string arguments annotations.
        self.typing_names: set[str] = set()
        self.typing_modules: set[str] = set()
        if "typing" in "\n".join(lines):
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.module in _TYPING_MODULES:
                    self.typing_names.update(a.asname or a.name for a in node.names)
                elif isinstance(node, ast.Import):
                    self.typing_modules.update(a.asname or a.name for a in node.names
                                               if a.name in _TYPING_MODULES)
        # (header piece, kind, [(clause piece, [body pieces], role)])
        self.compounds: list[tuple[int, str, list[tuple[int, list[int], str]]]] = []
        self._block(tree.body, 0, 0, -1)
        for piece in self.pieces:
            if piece.pending is not None:
                self._resolve_span(piece)

    # --- statements -------------------------------------------------------------------
    def _block(self, stmts: list[ast.stmt], scope: int, depth: int, parent: int) -> list[int]:
        return [self._statement(stmt, scope, depth, parent) for stmt in stmts]

    def _new_piece(self, start: int, end: int, depth: int, parent: int) -> int:
        self.pieces.append(_Piece(start, end, depth, parent))
        return len(self.pieces) - 1

    def _new_scope(self, parent: int, is_function: bool) -> int:
        self.scope_parent.append(parent)
        self.scope_is_function.append(is_function)
        return len(self.scope_parent) - 1

    def _statement(self, stmt: ast.stmt, scope: int, depth: int, parent: int) -> int:
        if not isinstance(stmt, _COMPOUND):
            index = self._new_piece(stmt.lineno, stmt.end_lineno, depth, parent)
            self._simple(stmt, self.pieces[index], scope)
            return index
        start = min([stmt.lineno, *(d.lineno for d in getattr(stmt, "decorator_list", ()))])
        header = self._new_piece(start, -1, depth, parent)
        piece = self.pieces[header]
        piece.pending = ("header", stmt.body[0]) if not isinstance(stmt, ast.Match) else None
        body_scope = scope
        clauses: list[tuple[int, list[int], str]] = []
        kind = type(stmt).__name__
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = stmt.args
            self._uses_in(piece, scope, [*stmt.decorator_list, *args.defaults,
                                         *(d for d in args.kw_defaults if d is not None)])
            self._uses_in(piece, scope, [stmt.returns], annotation=True)
            for arg in [*args.posonlyargs, *args.args, args.vararg, *args.kwonlyargs, args.kwarg]:
                if arg is not None:
                    self._uses_in(piece, scope, [arg.annotation], annotation=True)
            body_scope = self._new_scope(scope, True)
            for arg in [*args.posonlyargs, *args.args, args.vararg, *args.kwonlyargs, args.kwarg]:
                if arg is not None:
                    piece.binds.append((arg.arg, body_scope, True))
            piece.binds.append((stmt.name, scope, True))
        elif isinstance(stmt, ast.ClassDef):
            self._uses_in(piece, scope, [*stmt.decorator_list, *stmt.bases,
                                         *(k.value for k in stmt.keywords)])
            body_scope = self._new_scope(scope, False)
            piece.binds.append((stmt.name, scope, True))
        elif isinstance(stmt, (ast.For, ast.AsyncFor)):
            self._targets(piece, scope, stmt.target, plain=True)
            self._uses_in(piece, scope, [stmt.iter])
        elif isinstance(stmt, (ast.While, ast.If)):
            self._uses_in(piece, scope, [stmt.test])
        elif isinstance(stmt, (ast.With, ast.AsyncWith)):
            piece.stores_last = len(stmt.items) == 1
            for item in stmt.items:
                self._uses_in(piece, scope, [item.context_expr])
                if item.optional_vars is not None:
                    self._targets(piece, scope, item.optional_vars, plain=True)
        elif isinstance(stmt, ast.Match):
            self._uses_in(piece, scope, [stmt.subject])
        body = getattr(stmt, "body", [])
        clauses.append((header, self._block(body, body_scope, depth + 1, header), "body"))
        prev_end = body[-1].end_lineno if body else None
        if isinstance(stmt, ast.If):
            node = stmt
            while node.orelse:
                first = node.orelse[0]
                if len(node.orelse) == 1 and isinstance(first, ast.If) and self._is_elif(first):
                    clause = self._new_piece(first.lineno, -1, depth, header)
                    self.pieces[clause].pending = ("header", first.body[0])
                    self._uses_in(self.pieces[clause], scope, [first.test])
                    clauses.append((clause, self._block(first.body, scope, depth + 1, clause), "elif"))
                    prev_end = first.body[-1].end_lineno
                    node = first
                    continue
                clauses.append(self._else(node.orelse, prev_end, scope, depth, header, "else"))
                break
        elif isinstance(stmt, (ast.For, ast.AsyncFor, ast.While)) and stmt.orelse:
            clauses.append(self._else(stmt.orelse, prev_end, scope, depth, header, "else"))
        elif isinstance(stmt, (ast.Try, ast.TryStar)):
            for handler in stmt.handlers:
                clause = self._new_piece(handler.lineno, -1, depth, header)
                cpiece = self.pieces[clause]
                cpiece.pending = ("header", handler.body[0])
                if handler.type is not None:
                    self._uses_in(cpiece, scope, [handler.type])
                    types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
                    if any(isinstance(t, ast.Name) and t.id == "NameError" or
                           isinstance(t, ast.Attribute) and t.attr == "NameError" for t in types):
                        cpiece.always_check = True
                if handler.name:
                    cpiece.binds.append((handler.name, scope, False))
                clauses.append((clause, self._block(handler.body, scope, depth + 1, clause), "except"))
                prev_end = handler.body[-1].end_lineno
            if stmt.orelse:
                clauses.append(self._else(stmt.orelse, prev_end, scope, depth, header, "else"))
                prev_end = stmt.orelse[-1].end_lineno
            if stmt.finalbody:
                clauses.append(self._else(stmt.finalbody, prev_end, scope, depth, header, "finally"))
        elif isinstance(stmt, ast.Match):
            piece.pending = ("header_before", stmt.cases[0].pattern.lineno)
            prev_end = None
            for case in stmt.cases:
                clause = self._new_piece(-1, -1, depth + 1, header)
                cpiece = self.pieces[clause]
                cpiece.pending = ("clause", prev_end, case.body[0], header)
                self._pattern(cpiece, scope, case.pattern)
                self._uses_in(cpiece, scope, [case.guard])
                cpiece.stores_last = case.guard is None
                clauses.append((clause, self._block(case.body, scope, depth + 2, clause), "case"))
                prev_end = case.body[-1].end_lineno
        self.compounds.append((header, kind, clauses))
        return header

    def _else(self, body, prev_end, scope, depth, header, role):
        clause = self._new_piece(-1, -1, depth, header)
        self.pieces[clause].pending = ("clause", prev_end, body[0], None)
        return clause, self._block(body, scope, depth + 1, clause), role

    def _is_elif(self, node: ast.If) -> bool:
        line = self.lines[node.lineno - 1].encode("utf-8")
        return line[node.col_offset:node.col_offset + 4] == b"elif"

    def _simple(self, stmt: ast.stmt, piece: _Piece, scope: int) -> None:
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            if isinstance(stmt, ast.ImportFrom) and stmt.module == "__future__":
                piece.always_check = True
                return
            for alias in stmt.names:
                if alias.name == "*":
                    piece.always_check = True
                elif alias.asname:
                    piece.binds.append((alias.asname, scope, True))
                else:
                    piece.binds.append((alias.name.partition(".")[0], scope, True))
        elif isinstance(stmt, (ast.Global, ast.Nonlocal)):
            # pyflakes binds a declared name in every scope up to the module; the compiler
            # wants a binding in an enclosing function for `nonlocal`.
            self.has_declarations = True
            for name in stmt.names:
                self.declared_names.add(name)
                s = scope
                while s != -1:
                    piece.binds.append((name, s, False))
                    s = self.scope_parent[s]
                if isinstance(stmt, ast.Nonlocal):
                    piece.uses.append((name, self.scope_parent[scope], True, False))
        elif isinstance(stmt, ast.Assign):
            for target in stmt.targets:
                self._targets(piece, scope, target, plain=True)
            self._uses_in(piece, scope, [stmt.value])
        elif isinstance(stmt, ast.AugAssign):
            if isinstance(stmt.target, ast.Name):
                piece.uses.append((stmt.target.id, scope, False, False))
            self._targets(piece, scope, stmt.target, plain=True)
            self._uses_in(piece, scope, [stmt.value])
        elif isinstance(stmt, ast.AnnAssign):
            # `x: int` alone binds nothing at run time, but pyflakes resolves names in
            # postponed (string or `from __future__`) annotations to it.
            self._targets(piece, scope, stmt.target, plain=stmt.value is not None)
            self._uses_in(piece, scope, [stmt.annotation], annotation=True)
            self._uses_in(piece, scope, [stmt.value], annotation=self._is_typing(stmt.annotation))
        elif isinstance(stmt, ast.Delete):
            for target in stmt.targets:
                self._targets(piece, scope, target, plain=True)
        elif isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
            self._mark_string(stmt.value)   # a docstring or bare string: never parsed by pyflakes
        else:
            self._uses_in(piece, scope, [stmt])
        if any("__all__" in self.lines[line - 1] for line in range(stmt.lineno, stmt.end_lineno + 1)):
            # Its strings are exports pyflakes checks; removing it can bring back an earlier
            # `__all__` whose exports were shadowed, so its removal is always checked.
            piece.always_check = True
            for node in ast.walk(stmt):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    for name in _names_in_string(node.value):
                        piece.uses.append((name, 0, True, False))

    def _targets(self, piece: _Piece, scope: int, target: ast.AST, plain: bool) -> None:
        if isinstance(target, ast.Name):
            if isinstance(target.ctx, ast.Del):
                # `del x` reads x, and changes what later reads of x resolve to (removing it
                # can turn a builtin into "local variable referenced before assignment").
                self.deleted_names.add(target.id)
                piece.uses.append((target.id, scope, False, True))
                piece.binds.append((target.id, scope, False))
            else:
                piece.binds.append((target.id, scope, plain))
        elif isinstance(target, (ast.Tuple, ast.List)):
            for element in target.elts:
                self._targets(piece, scope, element, plain)
        elif isinstance(target, ast.Starred):
            self._targets(piece, scope, target.value, plain)
        else:   # attribute or subscript: reads its parts
            self._uses_in(piece, scope, [target])

    def _pattern(self, piece: _Piece, scope: int, pattern: ast.AST) -> None:
        for node in ast.walk(pattern):
            if isinstance(node, (ast.MatchAs, ast.MatchStar)) and node.name:
                piece.binds.append((node.name, scope, True))
            elif isinstance(node, ast.MatchMapping) and node.rest:
                piece.binds.append((node.rest, scope, True))
        for node in ast.walk(pattern):
            if isinstance(node, ast.MatchValue):
                self._uses_in(piece, scope, [node.value])
            elif isinstance(node, ast.MatchClass):
                self._uses_in(piece, scope, [node.cls])
            elif isinstance(node, ast.MatchMapping):
                self._uses_in(piece, scope, node.keys)

    # --- expressions --------------------------------------------------------------------
    def _uses_in(self, piece: _Piece, scope: int, nodes: Sequence[ast.AST | None],
                 annotation: bool = False) -> None:
        for node in nodes:
            if node is not None:
                self._expr(node, piece, scope, (), False, annotation)

    def _is_typing(self, node: ast.AST) -> bool:
        """Whether pyflakes may resolve `node` to a member of `typing`/`typing_extensions`."""
        return (isinstance(node, ast.Name) and node.id in self.typing_names or
                isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and
                node.value.id in self.typing_modules)

    def _mark_string(self, node: ast.AST) -> None:
        if node.end_lineno > node.lineno:
            self.string_lines.update(range(node.lineno + 1, node.end_lineno + 1))

    def _expr(self, node: ast.AST, piece: _Piece, scope: int, frames: tuple[frozenset, ...],
              nested: bool, annotation: bool) -> None:
        """Records the names `node` reads (and binds, for `:=`); `frames` are the names local
        to enclosing lambdas/comprehensions inside this statement (`nested` when inside one).
        Inside an `annotation` context (where pyflakes parses strings) strings count too."""
        if isinstance(node, ast.Name):
            if isinstance(node.ctx, ast.Load):
                if not any(node.id in frame for frame in frames):
                    piece.uses.append((node.id, scope, nested, False))
            elif isinstance(node.ctx, ast.Del):
                self.deleted_names.add(node.id)
                piece.uses.append((node.id, scope, nested, True))
                piece.binds.append((node.id, scope, False))
            elif not frames:
                piece.binds.append((node.id, scope, True))
            return
        if isinstance(node, ast.Constant):
            if isinstance(node.value, str):
                self._mark_string(node)
                if annotation:
                    for name in _names_in_string(node.value):
                        if not any(name in frame for frame in frames):
                            piece.uses.append((name, scope, True, False))
            elif isinstance(node.value, bytes):
                self._mark_string(node)
            return
        if isinstance(node, ast.JoinedStr):
            self._mark_string(node)
        elif isinstance(node, ast.NamedExpr):
            piece.stores_last = False
            if isinstance(node.target, ast.Name):
                piece.binds.append((node.target.id, scope, False))
            self._expr(node.value, piece, scope, frames, nested, annotation)
            return
        elif not annotation and isinstance(node, ast.Call) and self._is_typing(node.func):
            self._expr(node.func, piece, scope, frames, nested, False)
            for argument in [*node.args, *(k.value for k in node.keywords)]:
                self._expr(argument, piece, scope, frames, nested, True)
            return
        elif not annotation and isinstance(node, ast.Subscript) and self._is_typing(node.value):
            self._expr(node.value, piece, scope, frames, nested, False)
            self._expr(node.slice, piece, scope, frames, nested, True)
            return
        elif isinstance(node, ast.Lambda):
            args = node.args
            for default in [*args.defaults, *(d for d in args.kw_defaults if d is not None)]:
                self._expr(default, piece, scope, frames, nested, annotation)
            names = frozenset(a.arg for a in [*args.posonlyargs, *args.args, args.vararg,
                                              *args.kwonlyargs, args.kwarg] if a is not None)
            self._expr(node.body, piece, scope, (*frames, names), True, annotation)
            return
        elif isinstance(node, _COMPREHENSIONS):
            generators = node.generators
            self._expr(generators[0].iter, piece, scope, frames, nested, annotation)
            names = frozenset(n.id for g in generators for n in ast.walk(g.target)
                              if isinstance(n, ast.Name))
            inner = (*frames, names)
            for i, generator in enumerate(generators):
                if i:
                    self._expr(generator.iter, piece, scope, inner, True, annotation)
                for condition in generator.ifs:
                    self._expr(condition, piece, scope, inner, True, annotation)
                for sub in ast.walk(generator.target):   # subscript/attribute targets read
                    if not isinstance(sub, (ast.Name, ast.Tuple, ast.List, ast.Starred)):
                        self._expr(sub, piece, scope, inner, True, annotation)
            elements = [node.key, node.value] if isinstance(node, ast.DictComp) else [node.elt]
            for element in elements:
                self._expr(element, piece, scope, inner, True, annotation)
            return
        for child in ast.iter_child_nodes(node):
            self._expr(child, piece, scope, frames, nested, annotation)

    # --- line spans ---------------------------------------------------------------------
    def _is_code_line(self, line: int) -> bool:
        text = self.lines[line - 1].strip(" \t\f\r")
        return bool(text) and not text.startswith("#") or line in self.string_lines

    def _header_end(self, start: int, body0: ast.stmt) -> int:
        """Last line of a header (its colon) whose block starts with `body0`."""
        first = min([body0.lineno, *(d.lineno for d in getattr(body0, "decorator_list", ()))])
        if not isinstance(body0, _COMPOUND):
            prefix = self.lines[first - 1].encode("utf-8")[:body0.col_offset]
            if prefix.strip():
                return first   # `if x: y` — the body shares the header's line
        line = first - 1
        while line > start and not self._is_code_line(line):
            line -= 1
        return line

    def _resolve_span(self, piece: _Piece) -> None:
        pending, piece.pending = piece.pending, None
        if pending[0] == "header":
            piece.end = self._header_end(piece.start, pending[1])
        elif pending[0] == "header_before":     # `match x:` ends before its first `case`
            line = pending[1] - 1
            while line > piece.start and not self._is_code_line(line):
                line -= 1
            piece.end = line
        else:   # an else/finally/case clause: starts at the first code line after `prev_end`
            _, prev_end, body0, match_header = pending
            if prev_end is None:
                prev_end = self.pieces[match_header].end
            line = prev_end + 1
            while not self._is_code_line(line):
                line += 1
            piece.start = line
            piece.end = self._header_end(line, body0)


class _Program:
    """Per-program tables (units, blocks, bindings and uses), built once, and the sampler."""

    def __init__(self, text: str, tree: ast.Module):
        self.text = text
        self.lines = text.split("\n")
        analysis = _Analysis(tree, self.lines)
        pieces = analysis.pieces
        if not pieces:
            raise LintSeqError("empty", "no statements")
        num_lines = len(self.lines)

        # Merge pieces that share a line (a line ending in a backslash joins the next one).
        owner = [-1] * num_lines
        group = list(range(len(pieces)))

        def find(i: int) -> int:
            while group[i] != i:
                group[i] = group[group[i]]
                i = group[i]
            return i

        for index, piece in enumerate(pieces):
            end = piece.end
            while end < num_lines and self.lines[end - 1].rstrip(" \t\f\r").endswith("\\"):
                end += 1
            for line in range(piece.start - 1, end):
                if owner[line] == -1:
                    owner[line] = index
                else:
                    group[find(index)] = find(owner[line])
        first_line: dict[int, int] = {}
        for index, piece in enumerate(pieces):
            root = find(index)
            first_line[root] = min(first_line.get(root, piece.start), piece.start)
        roots = sorted(first_line, key=first_line.__getitem__)
        unit_of_root = {root: u for u, root in enumerate(roots)}
        piece_unit = [unit_of_root[find(i)] for i in range(len(pieces))]
        num_units = len(roots)
        self.num_units = num_units
        self.full = (1 << num_units) - 1

        # Lines: a unit owns its own lines and the comment/blank lines above it (the last unit
        # also those below it), so units are consecutive line ranges covering the program.
        ends = [0] * num_units
        for line in range(num_lines):
            if owner[line] != -1:
                ends[piece_unit[owner[line]]] = line + 1
        ends[-1] = num_lines
        starts = [0, *ends[:-1]]
        self.unit_text = ["\n".join(self.lines[a:b]) for a, b in zip(starts, ends)]
        self.unit_plus = ["\n".join("+" + line for line in self.lines[a:b])
                          for a, b in zip(starts, ends)]
        self.unit_size = [b - a for a, b in zip(starts, ends)]

        # Tree: a unit's parent is the unit of its outermost piece's parent piece.
        depth = [0] * num_units
        parent = [-1] * num_units
        outer: dict[int, int] = {}
        for index, piece in enumerate(pieces):
            unit = piece_unit[index]
            if unit not in outer or piece.depth < pieces[outer[unit]].depth:
                outer[unit] = index
        for unit, index in outer.items():
            depth[unit] = pieces[index].depth
            if pieces[index].parent != -1:
                parent[unit] = piece_unit[pieces[index].parent]
        desc = [1 << u for u in range(num_units)]
        for unit in range(num_units - 1, -1, -1):
            if parent[unit] != -1:
                desc[parent[unit]] |= desc[unit]
        self.desc = desc
        self.weight = [max(1, d) for d in depth]

        # Blocks for the structure repair, innermost statements first (analysis is post-order).
        self.compounds = []
        for header, kind, clauses in analysis.compounds:
            hunit = piece_unit[header]
            entries = []
            for clause, body, role in clauses:
                cunit = piece_unit[clause]
                body_mask = 0
                for b in body:
                    if piece_unit[b] != cunit:
                        body_mask |= 1 << piece_unit[b]
                entries.append((cunit, body_mask, role))
            self.compounds.append((hunit, kind, entries))

        # Names: for every binding (name, scope) of a unit, the remaining uses it may serve.
        scope_parent = analysis.scope_parent
        chains = []
        for s in range(len(scope_parent)):
            chain = []
            while s != -1:
                chain.append(s)
                s = scope_parent[s]
            chains.append(chain)
        binders: dict[tuple[str, int], int] = {}
        plain_binders: dict[tuple[str, int], list[int]] = {}
        unit_keys: list[set] = [set() for _ in range(num_units)]
        always = 0
        pieces_of = [0] * num_units
        reads_first = [True] * num_units   # every read of the unit precedes its bindings
        for index, piece in enumerate(pieces):
            unit = piece_unit[index]
            pieces_of[unit] += 1
            reads_first[unit] &= piece.stores_last and pieces_of[unit] == 1
            if piece.always_check:
                always |= 1 << unit
            for name, scope, plain in piece.binds:
                key = (name, scope)
                binders[key] = binders.get(key, 0) | 1 << unit
                unit_keys[unit].add(key)
                if plain:
                    plain_binders.setdefault(key, []).append(unit)
        unsafe_order = analysis.deleted_names | analysis.declared_names
        # pyflakes reports "local variable referenced before assignment" at a function's read
        # of an outer binding when the function's first local store of the name comes next and
        # nothing else read that binding in between; comprehensions and class bodies run
        # inline, so removing their reads before the first local store is always checked.
        function_of = [next((s for s in chain if analysis.scope_is_function[s]), -1)
                       for chain in chains]
        entries_of: dict[tuple[str, int], set] = {}
        for index, piece in enumerate(pieces):
            unit = piece_unit[index]
            for name, scope, nested, deleting in piece.uses:
                function = function_of[scope]
                if function != -1 and (nested or function != scope):
                    local = binders.get((name, function), 0)
                    if local and not local & ((2 << unit) - 1):
                        always |= 1 << unit
                chain_mask = 0
                keys = []
                for s in chains[scope]:
                    key = (name, s)
                    if key in binders:
                        chain_mask |= binders[key]
                        keys.append(key)
                if not keys:
                    continue
                builtin = name in _BUILTINS and not deleting   # `del len` needs a binding
                binds_too = chain_mask >> unit & 1
                # What pyflakes says about this use once no other binding is left: a builtin
                # resolves (unless the unit binds it after reading it: "local variable
                # referenced before assignment"), anything else is undefined -- unless the
                # unit may bind it before reading it (`:=`, a guard, a merged line).
                if binds_too and not reads_first[unit]:
                    alone = _UNCERTAIN
                elif builtin:
                    alone = _UNCERTAIN if binds_too else _SAFE
                else:
                    alone = _CERTAIN
                before = later = 0
                if not nested and name not in unsafe_order:
                    for b in plain_binders.get((name, scope), ()):
                        if b < unit:
                            before |= 1 << b
                    if alone == _CERTAIN:
                        later = binders.get((name, scope), 0) >> (unit + 1) << (unit + 1)
                entry = (1 << unit, chain_mask & ~(1 << unit), before, later, alone)
                for key in keys:
                    entries_of.setdefault(key, set()).add(entry)
        self.always_check = always
        self.threats = [sorted({e for key in keys for e in entries_of.get(key, ())})
                        for keys in unit_keys]
        self.needs_symtable = analysis.has_declarations
        self.tree = tree
        self._original_errors: frozenset | None = None
        self._lint_cache: dict[int, int] = {}

    # --- sampling -----------------------------------------------------------------------
    def sample(self, rng: _SplitMix64, use_linter: bool, lint_every_state: bool,
               deadline: float | None) -> list[str]:
        remaining = self.full
        alive = list(range(self.num_units))
        weight = self.weight if use_linter else [1] * self.num_units
        steps = []
        while alive:
            if deadline is not None and time.monotonic() > deadline:
                raise LintSeqError("timeout")
            pick = rng.below(sum(weight[u] for u in alive))
            for unit in alive:
                pick -= weight[unit]
                if pick < 0:
                    break
            deletion = self.desc[unit] & remaining
            if use_linter:
                deletion = self._repair(remaining, deletion, lint_every_state)
            steps.append(deletion)
            remaining &= ~deletion
            alive = [u for u in alive if not deletion >> u & 1]
        return self._diffs(steps)

    def _close_structure(self, remaining: int, deletion: int) -> int:
        gone = ~remaining | deletion
        for header, kind, clauses in self.compounds:
            if gone >> header & 1:
                continue
            for clause, body, role in clauses:
                if body and not gone >> clause & 1 and not body & ~gone:
                    gone |= self.desc[header] if role == "body" else self.desc[clause]
                    if role == "body":
                        break
            if gone >> header & 1:
                continue
            if kind in ("Try", "TryStar"):
                left = {role for clause, _, role in clauses if not gone >> clause & 1}
                if "except" not in left:
                    if "else" in left:
                        gone |= next(self.desc[c] for c, _, r in clauses if r == "else")
                    if "finally" not in left:
                        gone |= self.desc[header]
            elif kind == "Match" and all(gone >> c & 1 for c, _, r in clauses if r == "case"):
                gone |= self.desc[header]
        return gone & remaining

    def _repair(self, remaining: int, deletion: int, lint_every_state: bool) -> int:
        """Grows `deletion` until `remaining - deletion` is lint-clean (see module docstring)."""
        desc = self.desc
        while True:
            deletion = self._close_structure(remaining, deletion)
            after = remaining & ~deletion
            if lint_every_state:
                broken = self._lint(after)
            else:
                certain = 0
                uncertain = bool(deletion & self.always_check)
                for unit in _bits(deletion):
                    for bit, others, before, later, alone in self.threats[unit]:
                        if not after & bit:
                            continue
                        others &= after
                        if not others:
                            if alone == _CERTAIN:
                                certain |= bit
                            elif alone == _UNCERTAIN:
                                uncertain = True
                        elif before & after:
                            continue
                        elif not others & ~later:
                            certain |= bit
                        else:
                            uncertain = True
                if certain:
                    for unit in _bits(certain):
                        deletion |= desc[unit]
                    continue
                broken = self._lint(after) if uncertain else 0
            if not broken:
                return deletion
            deletion |= broken

    # --- the checker --------------------------------------------------------------------
    def _lint(self, state: int) -> int:
        """Units (with their blocks) that have errors in `state` beyond the original's."""
        if not state:
            return 0
        if state in self._lint_cache:
            return self._lint_cache[state]
        kept = list(_bits(state))
        text = "\n".join([self.unit_text[u] for u in kept])
        first_lines = list(itertools.accumulate([1] + [self.unit_size[u] for u in kept[:-1]]))
        num_lines = first_lines[-1] + self.unit_size[kept[-1]] - 1
        broken = 0
        try:
            tree = ast.parse(text, _FILENAME)
            if self.needs_symtable:
                symtable.symtable(text, _FILENAME, "exec")
        except SyntaxError as error:
            lines = [error.lineno] if error.lineno else []
        else:
            messages = pyflakes_checker.Checker(tree, filename=_FILENAME).messages
            original = self._original()
            lines = [m.lineno for m in messages
                     if type(m) in ERROR_MESSAGES and _message_key(m) not in original]
        for line in lines:
            if 1 <= line <= num_lines:
                broken |= self.desc[kept[bisect.bisect_right(first_lines, line) - 1]]
            else:
                broken = state
        broken &= state
        if lines and not broken:
            broken = state
        self._lint_cache[state] = broken
        return broken

    def _original(self) -> frozenset:
        if self._original_errors is None:
            messages = pyflakes_checker.Checker(self.tree, filename=_FILENAME).messages
            self._original_errors = frozenset(
                _message_key(m) for m in messages if type(m) in ERROR_MESSAGES)
        return self._original_errors

    # --- forward phase ------------------------------------------------------------------
    def _diffs(self, steps: list[int]) -> list[str]:
        """The deletions, reversed, as insertion diffs (runs of inserted units are hunks)."""
        diffs = []
        state = 0
        size, plus = self.unit_size, self.unit_plus
        for deletion in reversed(steps):
            state |= deletion
            hunks = []
            run: list[int] = []
            old = new = run_old = run_new = run_lines = 0
            for unit in _bits(state):
                if deletion >> unit & 1:
                    if not run:
                        run_old, run_new, run_lines = old, new, 0
                    run.append(plus[unit])
                    run_lines += size[unit]
                else:
                    if run:
                        hunks.append(edit_format.hunk_header(run_old, run_new + 1, run_lines))
                        hunks.extend(run)
                        run = []
                    old += size[unit]
                new += size[unit]
            if run:
                hunks.append(edit_format.hunk_header(run_old, run_new + 1, run_lines))
                hunks.extend(run)
            diffs.append("\n".join(hunks))
        return diffs


def _message_key(message: pyflakes_messages.Message) -> tuple:
    """A message's identity across states: its class and non-numeric arguments."""
    args = message.message_args
    if not isinstance(args, tuple):   # UndefinedLocal of a builtin carries a bare name
        args = (args,)
    return (type(message).__name__, *(a for a in args if not isinstance(a, int)))
