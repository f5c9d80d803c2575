"""Diff and training-text formats: round trips, difflib parity, the eval decoder on broken text."""
import difflib
import pathlib
import sysconfig

import pytest

from data_gen import edit_format
from data_gen.perf import bench
from data_gen.edit_format import (DIFF_TOKEN, SEPARATOR, MalformedDiffError, apply_diff,
                                  baseline_completion, baseline_prompt, decode_lintseq_completion,
                                  extract_python_blocks, format_hunk, hunk_header,
                                  lintseq_completion, lintseq_example, lintseq_prompt, split_diffs)
from data_gen.lintseq import apply_diffs, lintseq

STDLIB = pathlib.Path(sysconfig.get_paths()["stdlib"])
PROGRAMS = [p for _, p in bench.module_functions(str(STDLIB / "textwrap.py"), "textwrap.py")][:12]


def _states(diffs: list[str]) -> list[str]:
    lines: list[str] = []
    states = [""]
    for diff in diffs:
        apply_diff(lines, diff)
        states.append("\n".join(lines))
    return states


def test_hunk_header_matches_difflib():
    old = ["a", "b", "c"]
    for position, inserted in [(0, ["x"]), (1, ["x", "y"]), (3, ["x"]), (2, ["x", "y", "z"])]:
        new = old[:position] + inserted + old[position:]
        got = [l for l in difflib.unified_diff(old, new, n=0, lineterm="")][2:]
        assert "\n".join(got) == format_hunk(position, position + 1, inserted)
    assert hunk_header(4, 5, 2) == "@@ -4,0 +5,2 @@"
    assert hunk_header(0, 1, 1) == "@@ -0,0 +1 @@"


def test_generated_diffs_agree_with_difflib_where_unambiguous():
    """Where the inserted lines are unique, difflib finds exactly our hunks."""
    compared = 0
    for program in PROGRAMS:
        for diffs in lintseq(program, num_samples=3):
            states = _states(diffs)
            for before, after, diff in zip(states, states[1:], diffs):
                old, new = before.split("\n") if before else [], after.split("\n")
                if len(set(new)) != len(new):
                    continue
                reference = list(difflib.unified_diff(old, new, n=0, lineterm=""))[2:]
                assert "\n".join(reference) == diff
                compared += 1
    assert compared > 20


def test_completion_round_trip_and_prompts():
    for program in PROGRAMS:
        for diffs in lintseq(program, num_samples=2):
            completion = lintseq_completion(diffs)
            assert split_diffs(completion) == diffs
            assert split_diffs(completion + "\n" + DIFF_TOKEN + "\n" + DIFF_TOKEN) == diffs
            assert split_diffs(DIFF_TOKEN + completion + "\n" + DIFF_TOKEN) == diffs
            decoded = decode_lintseq_completion(completion)
            assert decoded.program == program and not decoded.malformed
            assert decoded.num_diffs == len(diffs) and decoded.error is None
            prompt, target = lintseq_example("Write f.", diffs)
            assert prompt == "Write f." and target == completion
            assert (prompt + target).startswith(lintseq_prompt("Write f."))
            assert split_diffs(target) == diffs
    assert baseline_prompt("Write f.") + baseline_completion("x = 1\n") == "Write f.\nx = 1\n"


def test_training_text_is_the_references_byte_for_byte():
    """instruction + "\\n<|diff|>" + d1 + ... + "\\n<|diff|>" + dN + "\\n<|diff|>\\n<|diff|>",
    with only the instruction in the (masked) prompt; the input pipeline appends EOS."""
    diffs = ["@@ -0,0 +1 @@\n+def f(x):", "@@ -1,0 +2,2 @@\n+    y = x\n+    return y"]
    prompt, completion = lintseq_example("Write f.", diffs)
    assert prompt == "Write f."
    assert completion == ("\n<|diff|>@@ -0,0 +1 @@\n+def f(x):"
                          "\n<|diff|>@@ -1,0 +2,2 @@\n+    y = x\n+    return y"
                          "\n<|diff|>\n<|diff|>")
    for program in PROGRAMS[:3]:
        for diffs in lintseq(program, num_samples=2):
            prompt, completion = lintseq_example("Do it.", diffs)
            reference = "Do it." + "".join("\n<|diff|>" + d for d in diffs) + "\n<|diff|>\n<|diff|>"
            assert (prompt + completion).encode() == reference.encode()
            assert prompt == "Do it."


def test_reference_trailing_separators_decode():
    diffs = lintseq(PROGRAMS[0], num_samples=1)[0]
    reference_style = "\n<|diff|>".join(diffs) + "\n<|diff|>\n<|diff|>"
    decoded = decode_lintseq_completion(reference_style)
    assert decoded.program == PROGRAMS[0] and not decoded.malformed


def test_completion_rejects_unrepresentable_diffs():
    for bad in [[], [""], ["@@ -0,0 +1 @@\n+x\n"], ["@@ -0,0 +1 @@\n+<|diff|>"]]:
        with pytest.raises(ValueError):
            lintseq_completion(bad)


def test_truncated_completions_decode_to_a_prefix():
    """Cut anywhere: no exception, and the result is a state of the sequence or a partial one
    that stops at the first broken hunk."""
    program = PROGRAMS[3]
    diffs = lintseq(program, num_samples=1, seed=4)[0]
    completion = lintseq_completion(diffs)
    states = _states(diffs)
    boundaries = {len(SEPARATOR + SEPARATOR.join(diffs[:k])): k for k in range(1, len(diffs) + 1)}
    for cut in range(len(completion) + 1):
        decoded = decode_lintseq_completion(completion[:cut])
        assert decoded.num_diffs <= len(diffs)
        if cut in boundaries:
            assert not decoded.malformed and decoded.program == states[boundaries[cut]]
        if not decoded.malformed:
            assert decoded.program == states[decoded.num_diffs] or decoded.num_hunks > 0


def test_malformed_pieces_stop_decoding_and_are_reported():
    good = "@@ -0,0 +1,2 @@\n+def f():\n+    return 1"
    cases = {
        "bad header": good + "\n<|diff|>@@ -1 +2 @@\n+x",
        "removal": good + "\n<|diff|>@@ -1,1 +1,1 @@\n-def f():\n+def g():",
        "too few lines": good + "\n<|diff|>@@ -2,0 +3,3 @@\n+x = 1",
        "not an insertion": good + "\n<|diff|>@@ -2,0 +3 @@\n x = 1",
        "start past the end": good + "\n<|diff|>@@ -9,0 +10 @@\n+x = 1",
        "garbage": good + "\n<|diff|>def g():\n    pass",
    }
    later = "\n<|diff|>@@ -2,0 +3 @@\n+x = 2"
    for name, text in cases.items():
        decoded = decode_lintseq_completion(text + later, malformed="stop")
        assert decoded.malformed, name
        assert decoded.program == "def f():\n    return 1", name
        assert decoded.num_diffs == 1 and decoded.error and decoded.skipped == 0, name
        # The reference's policy (the default): the malformed piece is skipped, decoding goes on.
        decoded = decode_lintseq_completion(text + later)
        assert decoded.malformed and decoded.error and decoded.skipped >= 1, name
        assert decoded.program == "def f():\n    return 1\nx = 2", name
        assert decoded.num_diffs == 2, name


def test_skip_keeps_the_good_hunks_around_a_malformed_one():
    text = ("@@ -0,0 +1 @@\n+a = 1\n@@ -1,0 +9 @@\n+bad = 0\n@@ -1,0 +2 @@\n+b = 2"
            "\n<|diff|>junk line\n@@ -2,0 +3 @@\n+c = 3")
    decoded = decode_lintseq_completion(text)
    assert decoded.program == "a = 1\nb = 2\nc = 3"
    assert (decoded.num_diffs, decoded.num_hunks, decoded.skipped) == (0, 3, 2)
    assert decoded.error == "hunk starts at line 9 of a 1-line file"
    stopped = decode_lintseq_completion(text, malformed="stop")
    assert stopped.program == "a = 1" and stopped.num_hunks == 1
    with pytest.raises(ValueError, match="malformed must be one of"):
        decode_lintseq_completion(text, malformed="ignore")


def test_lines_beyond_a_hunks_count_are_malformed():
    decoded = decode_lintseq_completion("@@ -0,0 +1 @@\n+x = 1\n+y = 2", malformed="stop")
    assert decoded.malformed and decoded.num_hunks == 1 and decoded.num_diffs == 0
    assert decoded.program == "x = 1"


def test_partial_diff_keeps_good_hunks():
    text = "@@ -0,0 +1 @@\n+a = 1\n@@ -1,0 +2 @@\n+b = 2\n@@ -2,0 +9 @@\n+c = 3"
    decoded = decode_lintseq_completion(text, malformed="stop")
    assert decoded.malformed and decoded.num_diffs == 0 and decoded.num_hunks == 2
    assert decoded.program == "a = 1\nb = 2"
    with pytest.raises(MalformedDiffError) as info:
        apply_diffs([text])
    assert info.value.hunks_applied == 2


def test_empty_completion_decodes_to_empty_program():
    for text in ["", DIFF_TOKEN, "\n" + DIFF_TOKEN + "\n" + DIFF_TOKEN]:
        decoded = decode_lintseq_completion(text)
        assert decoded.program == "" and decoded.num_diffs == 0 and not decoded.malformed


def test_extract_python_blocks():
    markdown = (
        "Here is the code:\n\n```python\ndef f():\n    return 1\n```\n\nAnd a shell command:\n"
        "```bash\nls -l\n```\nplus a test:\n~~~py\nassert f() == 1\n~~~\n"
        "````Python3\nx = '```'\n````\n```\nuntagged\n```\n")
    assert extract_python_blocks(markdown) == (
        "def f():\n    return 1\n\nassert f() == 1\n\nx = '```'\n")
    assert extract_python_blocks("no code at all") == ""
    assert extract_python_blocks("```python\nx = 1\r\n```\r\n") == "x = 1\n"
    assert extract_python_blocks("text\n```python\nunclosed = True\n") == "unclosed = True\n"
    assert extract_python_blocks("```python\n```") == ""


def test_module_names_are_the_contract():
    assert edit_format.DIFF_TOKEN == "<|diff|>"
    assert edit_format.SEPARATOR == "\n<|diff|>"
