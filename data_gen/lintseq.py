"""LintSeq: a program -> insertion edit sequences whose every intermediate program is lint-clean.

The algorithm of Piterbarg et al. (arXiv 2410.02749) with pyflakes as the checker, run
in-process on strings. Backward phase, per sequence (`_Program.sample`):

    remaining = the whole program
    while remaining:
        sample a line of it, weighted by indentation      # a unit standing for that line
        deletion = that unit and its block (its indented children)
        repeat: grow deletion by the structure repair and by every unit the checker
                reports broken once deletion is gone, until nothing more is broken
        record deletion; remaining -= deletion

then the forward phase writes the reversed deletions as insertion diffs (`_diffs`,
`data_gen.edit_format`). The units, their blocks, weights and the structure repair live in
`data_gen.lintseq_units`; the name analysis that predicts pyflakes' verdict, so that most
states need no checker run, and the checker itself in `data_gen.lintseq_names`. What a usable
program is, and the reasons for skipping one, is `data_gen.programs`' (LintSeqError is its
BadProgram).

As in the reference, the checker's errors in the program itself (say, names a snippet uses but
does not define) are broken like any other, so their lines go with the first deletion and every
earlier state is error-free; `keep_original_errors=True` tolerates them instead.

Where this differs from the reference implementation (upiterbarg/lintseq, pylint), on purpose:
pyflakes instead of pylint, whose messages differ; a deletion that would not parse grows to
the whole statement at once instead of the checker's syntax errors deleting line after line
(so every intermediate program parses); lines of a multi-line statement go alone only inside
strings pyflakes never reads (docstrings and other multi-line strings), and decorators go
alone; blank and comment lines travel with the next statement, so the round trip is exact and
no diff is empty. On the standard-library benchmark the checker runs once per program (for its
own errors) and besides for <1% of the sequences, and the sequences are identical to those of
`lint_every_state=True`, which lints every candidate state as the paper does (slow; kept to
check exactly that).

Linter-free ablation (`use_linter=False`), the reference's procedure: while lines remain,
delete a random chunk of them, of a size uniform in 1..n-1 (all of them when one is left),
anywhere in the program, blank lines and comments included; intermediate programs may be
broken (about one in eight parses), the round trip is still exact.

Determinism: sample i of a program draws from a SplitMix64 generator seeded by a BLAKE2b hash
of (program text, seed, i), so it does not depend on machine, Python version, process, worker
count or order.
"""
from __future__ import annotations

import contextlib
import hashlib
import time
import warnings
from collections.abc import Iterator, Sequence

from data_gen import edit_format
from data_gen import programs
from data_gen.lintseq_names import Checker, Verdicts, bits
from data_gen.lintseq_units import Analysis, Units

DEFAULT_MAX_LINES = 5_000
DEFAULT_MAX_BYTES = 1_000_000
DEFAULT_TIME_LIMIT_S = 30.0

LintSeqError = programs.BadProgram   # reasons: data_gen.programs, and `timeout`


def lintseq(program: str | bytes, *, num_samples: int = 5, seed: int = 0, use_linter: bool = True,
            max_lines: int | None = DEFAULT_MAX_LINES, max_bytes: int | None = DEFAULT_MAX_BYTES,
            time_limit_s: float | None = DEFAULT_TIME_LIMIT_S,
            lint_every_state: bool = False, keep_original_errors: bool = False
            ) -> list[list[str]]:
    """`num_samples` insertion edit sequences of `program`, each a list of diff strings.

    Sample i equals `lintseq_sample(program, seed=seed, sample_index=i, ...)`. Raises
    LintSeqError (with a `reason`) for programs that cannot be processed. `time_limit_s`
    bounds the whole call (None: no limit); `max_lines` and `max_bytes` the program's size.
    Lines with the program's own checker errors go with the first deletion, as in the reference;
    `keep_original_errors` tolerates them instead (they stay until the last diff's state).
    """
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    deadline = None if time_limit_s is None else time.monotonic() + time_limit_s
    with _input_errors():
        sampler = _prepare(program, max_lines, max_bytes, use_linter, keep_original_errors)
        return [sampler(_rng(sampler.text, seed, i), lint_every_state, deadline)
                for i in range(num_samples)]


def lintseq_sample(program: str | bytes, *, seed: int, sample_index: int, use_linter: bool = True,
                   max_lines: int | None = DEFAULT_MAX_LINES,
                   max_bytes: int | None = DEFAULT_MAX_BYTES,
                   time_limit_s: float | None = DEFAULT_TIME_LIMIT_S,
                   lint_every_state: bool = False, keep_original_errors: bool = False
                   ) -> list[str]:
    """Edit sequence number `sample_index` of `program` for `seed` (see `lintseq`)."""
    deadline = None if time_limit_s is None else time.monotonic() + time_limit_s
    with _input_errors():
        sampler = _prepare(program, max_lines, max_bytes, use_linter, keep_original_errors)
        return sampler(_rng(sampler.text, seed, sample_index), lint_every_state, deadline)


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


@contextlib.contextmanager
def _input_errors() -> Iterator[None]:
    """Compiler warnings stay quiet; inputs too deep for the recursive analysis become errors."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            yield
        except (RecursionError, MemoryError):
            raise LintSeqError("too_deep", "nesting too deep to analyse") from None


def _prepare(program: str | bytes, max_lines: int | None, max_bytes: int | None,
             use_linter: bool, keep_original_errors: bool):
    text, tree = programs.check(program, max_bytes=max_bytes, max_lines=max_lines)
    return _Program(text, tree, keep_original_errors) if use_linter else _Ablation(text)


def _check_deadline(deadline: float | None) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise LintSeqError("timeout")


class _Program:
    """Per-program tables (units, name verdicts, checker), built once, and the sampler."""

    def __init__(self, text: str, tree, keep_original_errors: bool):
        self.text = text
        lines = text.split("\n")
        analysis = Analysis(tree, lines)
        self.units = units = Units(lines, analysis)
        self.verdicts = Verdicts(analysis, units.piece_unit, units.num_units)
        self.checker = Checker(tree, units.text, units.size, units.desc, units.blame,
                               self.verdicts.needs_symtable, keep_original_errors)
        self.keep_original_errors = keep_original_errors
        self._bases: dict[bool, int] = {}

    def _base(self, lint_every_state: bool) -> int:
        """The units with the program's own errors, grown until the rest is clean: part of
        every first deletion. The name analysis may grow it only when pyflakes reported every
        erroneous place (undefined names); otherwise removing one place can reveal another
        (a local read before its assignment is reported at its last read only), so the
        checker decides."""
        if lint_every_state not in self._bases:
            base = 0
            if not self.keep_original_errors:
                broken, every_place = self.checker.own_errors()
                if broken:
                    base = self._repair(self.units.full, broken,
                                        lint_every_state or not every_place)
            self._bases[lint_every_state] = base
        return self._bases[lint_every_state]

    def __call__(self, rng: _SplitMix64, lint_every_state: bool, deadline: float | None
                 ) -> list[str]:
        units = self.units
        weight = units.weight
        remaining = units.full
        alive = [u for u in range(units.num_units) if weight[u]]
        steps = []
        while alive:
            _check_deadline(deadline)
            pick = rng.below(sum(weight[u] for u in alive))
            for unit in alive:
                pick -= weight[unit]
                if pick < 0:
                    break
            if steps:
                deletion = self._repair(remaining, units.desc[unit] & remaining, lint_every_state)
            else:   # from the clean state without the program's own errors
                base = self._base(lint_every_state)
                clean = remaining & ~base
                deletion = base | self._repair(clean, units.desc[unit] & clean, lint_every_state)
            steps.append(deletion)
            remaining &= ~deletion
            alive = [u for u in alive if not deletion >> u & 1]
        return _diffs(steps, units.size, units.plus)

    def _repair(self, remaining: int, deletion: int, lint_every_state: bool) -> int:
        """Grows `deletion` until `remaining - deletion` parses and is lint-clean."""
        desc = self.units.desc
        while True:
            deletion = self.units.close_structure(remaining, deletion)
            after = remaining & ~deletion
            if lint_every_state:
                broken = self.checker.lint(after)
            else:
                certain, uncertain = self.verdicts.predict(after, deletion)
                if certain:
                    for unit in bits(certain):
                        deletion |= desc[unit]
                    continue
                broken = self.checker.lint(after) if uncertain else 0
            if not broken:
                return deletion
            deletion |= broken


class _Ablation:
    """The linter-free ablation (module docstring): random chunks of lines."""

    def __init__(self, text: str):
        self.text = text
        self.lines = text.split("\n")

    def __call__(self, rng: _SplitMix64, lint_every_state: bool, deadline: float | None
                 ) -> list[str]:
        del lint_every_state   # there is no checker
        left = list(range(len(self.lines)))
        steps = []
        while left:
            _check_deadline(deadline)
            size = 1 + rng.below(len(left) - 1) if len(left) > 1 else 1
            for i in range(size):   # a uniform random chunk: the first `size` of a shuffle
                j = i + rng.below(len(left) - i)
                left[i], left[j] = left[j], left[i]
            steps.append(sum(1 << line for line in left[:size]))
            left = sorted(left[size:])
        return _diffs(steps, [1] * len(self.lines), ["+" + line for line in self.lines])


def _diffs(steps: list[int], size: list[int], plus: list[str]) -> list[str]:
    """The deletions `steps` (sets of units of `size` lines, `plus` their lines as `+` lines),
    reversed, as insertion diffs: each run of inserted units is one hunk."""
    diffs = []
    state = 0
    for deletion in reversed(steps):
        state |= deletion
        hunks = []
        run: list[str] = []
        old = new = run_old = run_new = run_lines = 0
        for unit in bits(state):
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
