"""The pyflakes-verdict predictor: which deletions of whole units leave pyflakes errors.

Removing whole statements (or lines inside a string pyflakes never reads) from a program that
compiles can create only two kinds of errors besides the syntax errors that structure repair
(`data_gen.lintseq_units`) prevents: name-resolution errors (undefined names or locals,
undefined `__all__` exports, `nonlocal` without a binding), which need a removed *binding* of a
name that a remaining statement *uses*. Every other pyflakes error is a property of a single
statement or of its enclosing blocks, which survive unchanged. `NameRecorder` records, during
the one walk over the syntax tree, per-statement bindings and uses with their scopes (strings
where pyflakes reads annotations -- annotations, arguments of `typing` calls, subscripts of
`typing` members -- and `__all__` entries count as uses; `global`/`nonlocal` bind in every
enclosing scope, as pyflakes does; `del x` and `x: int` count as (non-plain) bindings, since
pyflakes' resolution depends on them; a scope is a module, class or function, and
lambdas/comprehensions are folded into their statement's scope with their own names left out).
`Verdicts` turns them into per-unit tables, and for a deletion classifies every remaining use
of a removed binding:
- *certain*: no other binding of the name remains in any enclosing scope, or the only ones left
  are in the use's own scope and later in the text, and it is no builtin; pyflakes reports it
  (it resolves names in textual order within a scope), so the using unit is deleted without
  running the checker;
- *safe*: the name is a builtin with no binding left (and the using statement does not bind it
  itself: "local variable referenced before assignment"), or a plain binding of it in the same
  scope remains earlier in the text and the name is never `del`-eted nor declared
  `global`/`nonlocal`;
- *uncertain* otherwise: the checker (`Checker`: `ast.parse`, `symtable` for programs with
  `nonlocal`/`global`, pyflakes) runs on that state and its errors decide.
Units whose removal changes name resolution without binding anything always run the checker:
`from x import *`, `from __future__ import ...`, an `except` clause naming `NameError`, a
statement about `__all__`, and a comprehension or class body reading a name before its
function's first local store of it (pyflakes' "referenced before assignment" looks at the last
read). The rules err towards deleting and towards checking, never towards skipping a check
that could fail; tests/test_lintseq.py checks every state of real and of randomly generated
programs with an independent checker, and that the sequences equal those of linting every
state (`lint_every_state=True`).

Errors are the pyflakes messages in `ERROR_MESSAGES`: names that do not resolve and constructs
that cannot run. Warnings (unused imports/variables, redefinitions, format string slips, `is`
with a literal) are not errors: an import whose use was deleted may stay (the reference's
pylint run skips its warnings too). The original program's errors (e.g. names a snippet uses but
does not define) are the checker's like any other, so they go with the first deletion; with
`tolerate_original` (LintSeq's `keep_original_errors`) they stay, compared by message class and
its non-numeric arguments (line numbers shift between states).
"""
from __future__ import annotations

import ast
import bisect
import functools
import itertools
import symtable
from collections.abc import Iterator, Sequence

from pyflakes import checker as pyflakes_checker
from pyflakes import messages as pyflakes_messages

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
_COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)
FILENAME = "<lintseq>"


def bits(mask: int) -> Iterator[int]:
    """The indices of the set bits of `mask`, lowest first (sets of units are ints)."""
    while mask:
        low = mask & -mask
        yield low.bit_length() - 1
        mask ^= low


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


class Piece:
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


class NameRecorder:
    """The name half of the walk over the syntax tree (the statement half is
    `lintseq_units.Analysis`): records what each piece binds and uses."""

    def _init_names(self, tree: ast.Module, lines: list[str]) -> None:
        self.deleted_names: set[str] = set()
        self.declared_names: set[str] = set()
        self.has_declarations = False
        self.read_string_lines: set[int] = set()   # 1-based lines of strings pyflakes reads
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

    def _simple(self, stmt: ast.stmt, piece: Piece, scope: int) -> None:
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
            self.read_string_lines.update(range(stmt.lineno, stmt.end_lineno + 1))
            for node in ast.walk(stmt):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    for name in _names_in_string(node.value):
                        piece.uses.append((name, 0, True, False))

    def _targets(self, piece: Piece, scope: int, target: ast.AST, plain: bool) -> None:
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

    def _pattern(self, piece: Piece, scope: int, pattern: ast.AST) -> None:
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
    def _uses_in(self, piece: Piece, scope: int, nodes: Sequence[ast.AST | None],
                 annotation: bool = False) -> None:
        for node in nodes:
            if node is not None:
                self._expr(node, piece, scope, (), False, annotation)

    def _is_typing(self, node: ast.AST) -> bool:
        """Whether pyflakes may resolve `node` to a member of `typing`/`typing_extensions`."""
        return (isinstance(node, ast.Name) and node.id in self.typing_names or
                isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and
                node.value.id in self.typing_modules)

    def _expr(self, node: ast.AST, piece: Piece, scope: int, frames: tuple[frozenset, ...],
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
                    self.read_string_lines.update(range(node.lineno, node.end_lineno + 1))
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



class Verdicts:
    """Per-unit tables of the names a unit's removal may leave unresolved (module docstring)."""

    def __init__(self, analysis, piece_unit: list[int], num_units: int):
        pieces = analysis.pieces
        # For every binding (name, scope) of a unit, the remaining uses it may serve.
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

    def predict(self, after: int, deletion: int) -> tuple[int, bool]:
        """(units that certainly have new errors, whether any other use is uncertain) once
        `deletion` is removed and `after` remains."""
        certain = 0
        uncertain = bool(deletion & self.always_check)
        for unit in bits(deletion):
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
        return certain, uncertain


class Checker:
    """The real checker on states (sets of units), cached per state."""

    def __init__(self, tree: ast.Module, unit_text: list[str], unit_size: list[int],
                 desc: list[int], blame: list[int], needs_symtable: bool,
                 tolerate_original: bool):
        self.tree, self.unit_text, self.unit_size, self.desc = tree, unit_text, unit_size, desc
        self.blame = blame   # the unit that goes for an error on a line of this one
        self.needs_symtable = needs_symtable
        # Tolerated: the original program's errors, by key; otherwise none (they are deleted).
        self._original_errors: frozenset | None = None if tolerate_original else frozenset()
        self._lint_cache: dict[int, int] = {}

    def lint(self, state: int) -> int:
        """Units (with their blocks) that have errors in `state` (beyond the original's, when
        those are tolerated)."""
        if not state:
            return 0
        if state in self._lint_cache:
            return self._lint_cache[state]
        kept = list(bits(state))
        text = "\n".join([self.unit_text[u] for u in kept])
        try:
            tree = ast.parse(text, FILENAME)
            if self.needs_symtable:
                symtable.symtable(text, FILENAME, "exec")
        except SyntaxError as error:
            lines = [error.lineno] if error.lineno else []
        else:
            lines = [m.lineno for m in self._errors(tree)]
        broken = self._lint_cache[state] = self._units_at(lines, state, kept)
        return broken

    def own_errors(self) -> tuple[int, bool]:
        """Units (with their blocks) with errors in the whole program, and whether all are
        undefined names, which pyflakes reports at every use; others may hide further places
        (a local read before its assignment is reported at its last read only)."""
        errors = self._errors(self.tree)
        full = (1 << len(self.unit_text)) - 1
        every_place = all(type(m) is pyflakes_messages.UndefinedName for m in errors)
        return self._units_at([m.lineno for m in errors], full, list(bits(full))), every_place

    def _errors(self, tree: ast.Module) -> list[pyflakes_messages.Message]:
        original = self._original()
        return [m for m in pyflakes_checker.Checker(tree, filename=FILENAME).messages
                if type(m) in ERROR_MESSAGES and _message_key(m) not in original]

    def _units_at(self, lines: list[int], state: int, kept: list[int]) -> int:
        """The units of `state` (whose units are `kept`) that go for errors on `lines`."""
        first_lines = list(itertools.accumulate([1] + [self.unit_size[u] for u in kept[:-1]]))
        num_lines = first_lines[-1] + self.unit_size[kept[-1]] - 1
        broken = 0
        for line in lines:
            if 1 <= line <= num_lines:
                broken |= self.desc[self.blame[kept[bisect.bisect_right(first_lines, line) - 1]]]
            else:
                broken = state
        broken &= state
        if lines and not broken:
            broken = state
        return broken

    def _original(self) -> frozenset:
        if self._original_errors is None:
            messages = pyflakes_checker.Checker(self.tree, filename=FILENAME).messages
            self._original_errors = frozenset(
                _message_key(m) for m in messages if type(m) in ERROR_MESSAGES)
        return self._original_errors


def _message_key(message: pyflakes_messages.Message) -> tuple:
    """A message's identity across states: its class and non-numeric arguments."""
    args = message.message_args
    if not isinstance(args, tuple):   # UndefinedLocal of a builtin carries a bare name
        args = (args,)
    return (type(message).__name__, *(a for a in args if not isinstance(a, int)))
