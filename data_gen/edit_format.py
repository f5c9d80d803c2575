"""Text formats of LintSeq data: insertion diffs, `<|diff|>`-separated completions, markdown code.

A *diff* is one or more hunks in unified format with zero context lines and no `---`/`+++`
header, its lines joined by "\\n" and no trailing newline (docs/ARCHITECTURE.md §1):

    @@ -4,0 +5,2 @@
    +    if hi is None:
    +        hi = len(a)

A program is the list of its lines, `program == "\\n".join(lines)`, so a final newline is an
empty last line and every character of the program survives a round trip. Hunks are
insertion-only: the header's old range always has length 0 and is informational; a hunk's `+`
lines are inserted so that the first becomes line `+start` of the file. Applying hunks is
`apply_diff`, the one function used both to rebuild generated programs
(`data_gen.lintseq.apply_diffs`) and to decode model completions (`decode_lintseq_completion`).
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

DIFF_TOKEN = "<|diff|>"
# What precedes every diff of a LintSeq example; twice, it ends the example.
SEPARATOR = "\n" + DIFF_TOKEN
END_OF_EDITS = SEPARATOR + SEPARATOR

_HUNK_HEADER = re.compile(r"@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


class MalformedDiffError(ValueError):
    """A diff that is not a well-formed insertion diff for the program it is applied to."""


def hunk_header(old_start: int, new_start: int, count: int) -> str:
    """The header of a hunk inserting `count` lines that become lines `new_start`.. (1-based)
    after line `old_start` of the old file, with difflib's conventions (`+5`, `+5,2`)."""
    new_range = f"{new_start}" if count == 1 else f"{new_start},{count}"
    return f"@@ -{old_start},0 +{new_range} @@"


def format_hunk(old_start: int, new_start: int, lines: Sequence[str]) -> str:
    """A whole insertion hunk as text."""
    return "\n".join([hunk_header(old_start, new_start, len(lines)), *("+" + l for l in lines)])


def _parse_header(line: str) -> tuple[int, int, int]:
    match = _HUNK_HEADER.fullmatch(line)
    if match is None:
        raise MalformedDiffError(f"not a hunk header: {line[:80]!r}")
    old_start, old_count, new_start, new_count = match.groups()
    if old_count is None or int(old_count) != 0:
        raise MalformedDiffError(f"hunk removes lines (not insertion-only): {line!r}")
    count = 1 if new_count is None else int(new_count)
    if count == 0:
        raise MalformedDiffError(f"empty hunk: {line!r}")
    return int(old_start), int(new_start), count


def apply_diff(lines: list[str], diff: str) -> int:
    """Applies `diff` to `lines` in place, hunk by hunk; returns the number of hunks applied.

    Raises MalformedDiffError at the first malformed hunk (bad header, wrong number of `+`
    lines, a line that is not an insertion, a start outside the file); the hunks before it
    stay applied and the error's `hunks_applied` attribute says how many there were.
    """
    diff_lines = diff.split("\n")
    applied = 0
    i = 0
    try:
        if not diff:
            raise MalformedDiffError("empty diff")
        while i < len(diff_lines):
            old_start, new_start, count = _parse_header(diff_lines[i])
            body = diff_lines[i + 1:i + 1 + count]
            if len(body) < count:
                raise MalformedDiffError(f"hunk announces {count} lines, has {len(body)}")
            if not all(line.startswith("+") for line in body):
                raise MalformedDiffError("hunk line without a leading '+'")
            if not 1 <= new_start <= len(lines) + 1:
                raise MalformedDiffError(f"hunk starts at line {new_start} of a {len(lines)}-line file")
            lines[new_start - 1:new_start - 1] = [line[1:] for line in body]
            applied += 1
            i += 1 + count
    except MalformedDiffError as error:
        error.hunks_applied = applied
        raise
    return applied


def lintseq_prompt(instruction: str) -> str:
    """What a LintSeq model is prompted with at evaluation: the instruction and the separator
    that precedes the first diff (the text it saw before its first diff in training)."""
    return instruction + SEPARATOR


def lintseq_completion(diffs: Sequence[str]) -> str:
    """The target text of a LintSeq example, the reference implementation's format:
    `SEPARATOR + d1 + SEPARATOR + ... + dN + END_OF_EDITS` (the model learns to stop)."""
    if not diffs:
        raise ValueError("a LintSeq completion needs at least one diff")
    for diff in diffs:
        if not diff or DIFF_TOKEN in diff or diff.endswith("\n"):
            raise ValueError(f"not a diff that survives the text format: {diff[:80]!r}")
    return SEPARATOR + SEPARATOR.join(diffs) + END_OF_EDITS


def lintseq_example(instruction: str, diffs: Sequence[str]) -> tuple[str, str]:
    """(prompt, completion) of a training example: only the instruction is masked from the
    loss, as in the reference; the input pipeline appends EOS to the completion."""
    return instruction, lintseq_completion(diffs)


def baseline_prompt(instruction: str) -> str:
    """What a baseline (whole-program) model is conditioned on."""
    return instruction + "\n"


def baseline_completion(program: str) -> str:
    """The target text of a baseline example: the program itself."""
    return program


def split_diffs(text: str) -> list[str]:
    """Splits a LintSeq completion into its diffs; inverse of `lintseq_completion`.

    Leading and trailing separators (the training text's first one and `END_OF_EDITS`; a
    sampled completion has neither) leave empty pieces, which are dropped (a real diff is
    never empty).
    """
    diffs = []
    for piece in text.split(DIFF_TOKEN):
        if piece.endswith("\n"):
            piece = piece[:-1]
        if piece:
            diffs.append(piece)
    return diffs


# What decoding does at a malformed hunk: "skip" it and go on (the LintSeq reference's
# decoder), or "stop" there and keep what came before.
MALFORMED_POLICIES = ("skip", "stop")


@dataclasses.dataclass(frozen=True)
class DecodedProgram:
    """The program a LintSeq completion decodes to.

    `num_diffs` counts the diffs applied completely and `num_hunks` all hunks applied. When
    `malformed` is true, some piece was malformed (the first described by `error`): under the
    "stop" policy decoding stopped there and `program` holds everything applied before it;
    under "skip" the `skipped` malformed pieces were left out and decoding went on.
    """

    program: str
    num_diffs: int
    num_hunks: int
    malformed: bool
    error: str | None = None
    skipped: int = 0


def _hunk_pieces(diff: str) -> list[str]:
    """`diff` cut before every line that starts a hunk header (text before the first one is a
    piece of its own, which fails as a malformed hunk)."""
    pieces: list[list[str]] = []
    for line in diff.split("\n"):
        if line.startswith("@@") or not pieces:
            pieces.append([])
        pieces[-1].append(line)
    return ["\n".join(piece) for piece in pieces]


def decode_lintseq_completion(text: str, malformed: str = "skip") -> DecodedProgram:
    """Decodes a (possibly truncated or garbled) model completion into a program; `malformed`
    is one of MALFORMED_POLICIES."""
    if malformed not in MALFORMED_POLICIES:
        raise ValueError(f"malformed must be one of {MALFORMED_POLICIES}, got {malformed!r}")
    lines: list[str] = []
    num_diffs = num_hunks = skipped = 0
    first_error = None
    for diff in split_diffs(text):
        pieces = [diff] if malformed == "stop" else _hunk_pieces(diff)
        whole = True
        for piece in pieces:
            try:
                num_hunks += apply_diff(lines, piece)
            except MalformedDiffError as error:
                num_hunks += error.hunks_applied
                first_error = first_error or str(error)
                if malformed == "stop":
                    return DecodedProgram("\n".join(lines), num_diffs, num_hunks, True,
                                          first_error)
                skipped += 1
                whole = False
        num_diffs += whole
    return DecodedProgram("\n".join(lines), num_diffs, num_hunks, first_error is not None,
                          first_error, skipped)


_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})\s*([^`\s]*)[^`]*$")
_PYTHON_INFO = frozenset({"python", "py", "python3"})


def extract_python_blocks(markdown: str) -> str:
    """The contents of the ```python fenced blocks of `markdown`, one after another.

    Fences follow CommonMark: ``` or ~~~ (three or more), closed by the same character at
    least as many times; an unclosed block runs to the end. Blocks tagged `python`, `py` or
    `python3` (any case) are kept, each ending with a newline, separated by a blank line;
    other blocks and prose are dropped. Returns "" when there is no python block.
    """
    blocks: list[list[str]] = []
    fence: str | None = None
    keep = False
    lines = markdown.split("\n")
    if lines[-1] == "":
        lines.pop()   # the text ends with a line ending, not with an empty line
    for line in lines:
        line = line.rstrip("\r")
        match = _FENCE.match(line)
        if fence is None:
            if match:
                fence = match.group(1)
                keep = match.group(2).lower() in _PYTHON_INFO
                if keep:
                    blocks.append([])
        elif match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence) \
                and not match.group(2):
            fence = None
        elif keep:
            blocks[-1].append(line)
    return "\n".join("".join(line + "\n" for line in block) for block in blocks)
