"""Statement units of a program, and the structure repair that keeps every state parsing.

Units (the granularity of a LintSeq deletion). The program's lines are split into units derived
from the syntax tree:
- a simple statement is one unit, however many lines it spans (brackets, `\\`), except that
  each line inside a triple-quoted string of a simple statement (a docstring, a multi-line
  string argument or value) that pyflakes never reads is a unit of its own, a child of the
  statement: such a line can go alone and the program still parses, as in the reference
  implementation, which deletes lines. Its children are the string's following lines indented
  deeper (the reference's rule). The statement's lines after a string's last line are a *glue*
  unit that goes only with the statement;
- a compound statement's header lines (`def`/`class`/`if`/`for`/`while`/`with`/`try`/`match`
  up to the colon) are one unit whose *block* is the whole statement, decorators included;
  each decorator is a unit of its own in that block, so it can go alone, as a line can in the
  reference (where a decorator is a line with no deeper lines after it);
- every `elif`/`else`/`except`/`finally`/`case` clause header is a unit whose block is its body,
  and it belongs to the header's block;
- units that share a line (`a = 1; b = 2`, `if x: return y`, a line ending in `\\`) are merged.
Comment-only and blank lines are never sampled: each travels with the next unit below it, and
those after the last unit travel with the last unit, so applying all diffs gives back the
program character for character (a final newline is an empty last line, CRLF line ends keep
their "\\r"). Deleting a unit deletes its block, so no statement outlives its header.

Sampling weights are the reference's, per line: a line indented by i columns weighs
i / (the program's first indentation), a line at the margin 1 (lines of one character or
fewer take the indentation of the line above); blank and comment lines weigh nothing. A unit
weighs the sum of its lines (a glue unit's go to its statement), so sampling a unit is sampling
a line: a line whose deletion alone would not parse stands for its whole statement.

Structure repair (what deleting whole statements can still break syntactically): a clause
whose body is gone goes too (the whole statement when it is the first clause); a `try` left
without `except` loses its `else`, and without `finally` as well goes entirely; a `match`
left without cases goes entirely. These are the deletions a syntax check would force; they are
applied directly, so the checker never sees an empty block.
"""
from __future__ import annotations

import ast

from data_gen.lintseq_names import NameRecorder, Piece

_COMPOUND = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.For, ast.AsyncFor, ast.While,
             ast.If, ast.With, ast.AsyncWith, ast.Try, ast.TryStar, ast.Match)


class Analysis(NameRecorder):
    """Walks the AST once: pieces with their line spans, bindings, uses and block structure."""

    def __init__(self, tree: ast.Module, lines: list[str]):
        self.lines = lines
        self.pieces: list[Piece] = []
        self.scope_parent: list[int] = [-1]
        self.scope_is_function: list[bool] = [False]
        self.string_lines: set[int] = set()   # 1-based lines that start inside a string
        self.strings: list[tuple[int, int]] = []   # (first, last) line of triple-quoted strings
        self.simple: set[int] = set()   # pieces that are simple statements
        self._init_names(tree, lines)
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
        self.pieces.append(Piece(start, end, depth, parent))
        return len(self.pieces) - 1

    def _new_scope(self, parent: int, is_function: bool) -> int:
        self.scope_parent.append(parent)
        self.scope_is_function.append(is_function)
        return len(self.scope_parent) - 1

    def _statement(self, stmt: ast.stmt, scope: int, depth: int, parent: int) -> int:
        if not isinstance(stmt, _COMPOUND):
            index = self._new_piece(stmt.lineno, stmt.end_lineno, depth, parent)
            self.simple.add(index)
            self._simple(stmt, self.pieces[index], scope)
            return index
        header = self._new_piece(stmt.lineno, -1, depth, parent)
        piece = self.pieces[header]
        for decorator in getattr(stmt, "decorator_list", ()):
            index = self._new_piece(decorator.lineno, decorator.end_lineno, depth + 1, header)
            self._uses_in(self.pieces[index], scope, [decorator])
        piece.pending = ("header", stmt.body[0]) if not isinstance(stmt, ast.Match) else None
        body_scope = scope
        clauses: list[tuple[int, list[int], str]] = []
        kind = type(stmt).__name__
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = stmt.args
            self._uses_in(piece, scope, [*args.defaults,
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
            self._uses_in(piece, scope, [*stmt.bases, *(k.value for k in stmt.keywords)])
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

    def _mark_string(self, node: ast.AST) -> None:
        if node.end_lineno > node.lineno:
            self.string_lines.update(range(node.lineno + 1, node.end_lineno + 1))
            if isinstance(node, ast.Constant) and self._one_token(node):
                self.strings.append((node.lineno, node.end_lineno))

    def _one_token(self, node: ast.Constant) -> bool:
        """Whether a multi-line constant is one triple-quoted string token (not implicitly
        joined strings), so that its inner lines hold nothing but the string's characters."""
        first = self.lines[node.lineno - 1].encode("utf-8")[node.col_offset:].decode("utf-8")
        last = self.lines[node.end_lineno - 1].encode("utf-8")[:node.end_col_offset].decode("utf-8")
        body = first.lstrip("rRbBuU")
        quote = body[:3]
        if quote not in ('"""', "\'\'\'") or not last.endswith(quote):
            return False
        inner = [body[3:], last[:-3], *self.lines[node.lineno:node.end_lineno - 1]]
        return not any(quote in line for line in inner)

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

    def _resolve_span(self, piece: Piece) -> None:
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




def line_weights(lines: list[str]) -> tuple[list[int], list[int]]:
    """The lines' weights (the reference's sampling weight times the program's first
    indentation, so integers; 0 for blank and comment lines) and indentations."""
    indents, indent, tab = [], 0, 0
    for line in lines:
        stripped = line.lstrip()
        if len(stripped.rstrip("\r")) > 1:
            indent = len(line) - len(stripped)
        indents.append(indent)
        if not tab and indent:
            tab = indent
    tab = tab or 1
    return [0 if not line.strip() or line.lstrip().startswith("#") else (i or tab)
            for line, i in zip(lines, indents)], indents


class Units:
    """A program's units as line ranges, their blocks (`desc`), weights and compound structure.

    Units are numbered in text order and cover the program's lines consecutively: unit u is
    the `size[u]` lines after those of units 0..u-1, `text[u]` and `plus[u]` (as insertion
    lines); `blame[u]` is the unit that goes for a checker error on its lines. Sets of units
    are int bitmasks.
    """

    def __init__(self, lines: list[str], analysis: Analysis):
        pieces = analysis.pieces
        num_lines = len(lines)

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
            while end < num_lines and lines[end - 1].rstrip(" \t\f\r").endswith("\\"):
                end += 1
            for line in range(piece.start - 1, end):
                if owner[line] == -1:
                    owner[line] = index
                else:
                    group[find(index)] = find(owner[line])
        first_line: dict[int, int] = {}
        members: dict[int, int] = {}
        for index, piece in enumerate(pieces):
            root = find(index)
            first_line[root] = min(first_line.get(root, piece.start), piece.start)
            members[root] = members.get(root, 0) + 1
        roots = sorted(first_line, key=first_line.__getitem__)

        # Statement units: a unit owns its own lines and the comment/blank lines above it (the
        # last unit also those below it).
        ends = {}
        for line in range(num_lines):
            if owner[line] != -1:
                ends[find(owner[line])] = line + 1
        ends[roots[-1]] = num_lines

        # Lines inside strings that can go alone, by the statement (root) holding them.
        weights, indents = line_weights(lines)
        inner: dict[int, list[tuple[int, list[int]]]] = {}
        for first, last in sorted(set(analysis.strings)):
            index = owner[first - 1]
            candidates = [line for line in range(first, last - 1) if weights[line]]
            if (candidates and index in analysis.simple and members[find(index)] == 1
                    and not analysis.read_string_lines.intersection(range(first, last + 1))):
                inner.setdefault(index, []).append((first, candidates))

        # Number the units in text order, splitting statements at their string lines.
        starts: list[int] = []
        parent: list[int] = []
        unit_weight: list[int] = []
        blame: list[int] = []   # the unit that goes when the checker reports a line of this one
        unit_of_root = {}
        begin = 0
        for root in roots:
            head = len(starts)
            unit_of_root[root] = head
            starts.append(begin)
            parent.append(-1)
            blame.append(head)
            unit_weight.append(sum(weights[begin:ends[root]]))
            for after_opening, candidates in inner.get(root, ()):
                stack: list[tuple[int, int]] = []   # (indentation, unit) of enclosing lines
                start = after_opening   # the line after the string's first line (0-based)
                for line in candidates:
                    while stack and stack[-1][0] >= indents[line]:
                        stack.pop()
                    stack.append((indents[line], len(starts)))
                    parent.append(stack[-2][1] if len(stack) > 1 else head)
                    starts.append(start)
                    blame.append(head)
                    unit_weight.append(weights[line])
                    unit_weight[head] -= weights[line]
                    start = line + 1
                starts.append(start)   # glue: the string's last line and what follows
                parent.append(head)
                blame.append(head)
                unit_weight.append(0)
            begin = ends[root]
        num_units = len(starts)
        sizes = [b - a for a, b in zip(starts, [*starts[1:], num_lines])]
        # Tree: a statement unit's parent is the unit of its outermost piece's parent piece.
        piece_unit = [unit_of_root[find(i)] for i in range(len(pieces))]
        outer: dict[int, int] = {}
        for index, piece in enumerate(pieces):
            unit = piece_unit[index]
            if unit not in outer or piece.depth < pieces[outer[unit]].depth:
                outer[unit] = index
        for unit, index in outer.items():
            if pieces[index].parent != -1:
                parent[unit] = piece_unit[pieces[index].parent]
        # Blocks, deepest units first (a decorator is its definition's child but comes first).
        depth = [-1] * num_units
        for unit in range(num_units):
            chain = []
            while unit != -1 and depth[unit] == -1:
                chain.append(unit)
                unit = parent[unit]
            level = -1 if unit == -1 else depth[unit]
            for member in reversed(chain):
                level += 1
                depth[member] = level
        desc = [1 << u for u in range(num_units)]
        for unit in sorted(range(num_units), key=depth.__getitem__, reverse=True):
            if parent[unit] != -1:
                desc[parent[unit]] |= desc[unit]

        self.num_units = num_units
        self.full = (1 << num_units) - 1
        self.piece_unit = piece_unit
        self.desc = desc
        self.weight = unit_weight
        self.blame = blame
        self.size = sizes
        self.text = ["\n".join(lines[a:a + n]) for a, n in zip(starts, sizes)]
        self.plus = ["\n".join("+" + line for line in lines[a:a + n]) for a, n in zip(starts, sizes)]

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

    def close_structure(self, remaining: int, deletion: int) -> int:
        """`deletion` grown by the structure repair (module docstring), within `remaining`."""
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
