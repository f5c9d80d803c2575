"""LintSeq throughput and memory benchmark.

    python -m data_gen.perf.bench --make_stdlib_input /tmp/stdlib200.jsonl
    python -m data_gen.perf.bench --input /tmp/stdlib200.jsonl --key program --num_samples 5 --workers 2

Runs `data_gen.lintseq.lintseq` over every program of a JSONL file in a pool of worker processes
(multiprocessing with the `spawn` start method, so each worker is a fresh interpreter whose
memory is LintSeq's alone) fed in chunks, and prints, as its last line, one JSON object:
`programs`, `sequences`, `skipped` (by reason), `sequences_per_s` (work phase, after the
workers started), `sequences_per_cpu_s` (per second of worker CPU time: what one core does,
whatever else the machine is running), `wall_s`, `load_average` (1-minute, at the end: a busy
machine lowers `sequences_per_s`), `peak_rss_mb` (largest peak resident set of a single worker),
`main_rss_mb`, `worker_rss_first_mb`/`worker_rss_last_mb` (largest current RSS of a worker after
its first and last chunk: flat means no growth), `mean_diffs_per_sequence`,
`distinct_sequence_share` (distinct sequences among one program's samples, averaged), and the
shape of the edits, the figures README.md compares with the reference implementation:
`edits_per_sequence` (non-empty diffs), `lines_per_diff` (added lines per non-empty diff),
`multi_hunk_share` (diffs with more than one hunk), `split_statement_share` (steps that insert
some but not all lines of a multi-line simple statement of the final program),
`docstring_splits_per_sequence` (such steps inside a bare string, e.g. a docstring) and
`parsing_state_share` (intermediate programs, after each diff but the last, that `ast.parse`
accepts). The shape is computed outside the timed LintSeq calls. `--keep_original_errors` runs
LintSeq with the programs' own checker errors tolerated (`data_gen.lintseq.lintseq`).

`--make_stdlib_input FILE` writes the standard input: 200 functions and methods of the running
Python's standard library, 10-44 lines each, dedented, chosen deterministically (sorted by a
hash of their id), so the figure can be reproduced on any machine with the same Python.
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import json
import multiprocessing
import os
import re
import resource
import sys
import time

_STDLIB_COUNT = 200
_STDLIB_MIN_LINES = 10
_STDLIB_MAX_LINES = 44


def module_functions(path: str, rel_path: str):
    """(id, source) of every function and method of a module file whose lines dedent cleanly
    (nothing on a line left of the `def`), in source order; nothing for unreadable files."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        tree = ast.parse(text)
    except (OSError, UnicodeDecodeError, SyntaxError, ValueError):
        return
    lines = text.split("\n")

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    first = min([child.lineno, *(d.lineno for d in child.decorator_list)])
                    body = lines[first - 1:child.end_lineno]
                    indent = len(body[0]) - len(body[0].lstrip())
                    if all(not line[:indent].strip() for line in body):
                        yield f"stdlib:{rel_path}:{name}", "\n".join(l[indent:] for l in body) + "\n"
                yield from visit(child, name + ".")

    yield from visit(tree, "")


def make_stdlib_input(path: str) -> int:
    """Writes the standard benchmark input (see module docstring); returns the program count."""
    from data_gen import stdlib_instructions

    root = stdlib_instructions.stdlib_root()
    candidates = {}
    for rel_path in stdlib_instructions.module_files(root):
        for source_id, program in module_functions(os.path.join(root, rel_path), rel_path):
            if _STDLIB_MIN_LINES <= program.count("\n") <= _STDLIB_MAX_LINES:
                candidates.setdefault(program, source_id)
    ranked = sorted(candidates.items(),
                    key=lambda item: hashlib.blake2b(item[1].encode(), digest_size=8).digest())
    chosen = sorted(ranked[:_STDLIB_COUNT], key=lambda item: item[1])
    with open(path, "w", encoding="utf-8") as f:
        for program, source_id in chosen:
            f.write(json.dumps({"id": source_id, "program": program}) + "\n")
    return len(chosen)


SHAPE_COUNTS = ("edits", "added_lines", "multi_hunk_diffs", "steps", "split_steps",
                "docstring_split_steps", "states", "parsing_states")
_HUNK_HEADER = re.compile(r"@@ -\d+,0 \+(\d+)(?:,(\d+))? @@")


def _multiline_statements(program: str) -> list[tuple[int, int, bool]]:
    """(first, last) 0-based line of every multi-line simple statement of `program`, and
    whether it is a bare string (a docstring)."""
    spans = []
    for node in ast.walk(ast.parse(program)):
        if (isinstance(node, ast.stmt) and node.end_lineno > node.lineno
                and not hasattr(node, "body")):
            bare = isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
            spans.append((node.lineno - 1, node.end_lineno - 1, bare))
    return spans


def sequence_shape(program: str, diffs: list[str]) -> dict[str, int]:
    """The counts behind the edit-shape figures (module docstring) of one edit sequence."""
    from data_gen import edit_format

    counts = dict.fromkeys(SHAPE_COUNTS, 0)
    inserted_by: list[int] = []   # per line of the growing program, the step that inserted it
    lines: list[str] = []
    for step, diff in enumerate(diffs):
        counts["steps"] += 1
        if not diff:
            continue
        counts["edits"] += 1
        headers = [_HUNK_HEADER.fullmatch(l) for l in diff.split("\n") if l.startswith("@@")]
        counts["added_lines"] += diff.count("\n") + 1 - len(headers)
        counts["multi_hunk_diffs"] += len(headers) > 1
        for header in headers:
            start, count = int(header[1]), int(header[2] or 1)
            inserted_by[start - 1:start - 1] = [step] * count
        edit_format.apply_diff(lines, diff)
        if step < len(diffs) - 1:
            counts["states"] += 1
            try:
                ast.parse("\n".join(lines))
                counts["parsing_states"] += 1
            except (SyntaxError, ValueError):
                pass
    split, in_strings = set(), set()
    for first, last, bare in _multiline_statements(program):
        steps = set(inserted_by[first:last + 1])
        if len(steps) > 1:
            split |= steps
            if bare:
                in_strings |= steps
    counts["split_steps"] = len(split)
    counts["docstring_split_steps"] = len(in_strings)
    return counts


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _run_chunk(task):
    """Worker: LintSeq over a chunk; returns counts only (sequences stay in the worker)."""
    from data_gen import lintseq

    programs, num_samples, seed, use_linter, keep_original_errors = task
    result = {"programs": 0, "sequences": 0, "diffs": 0, "distinct": 0.0, "skipped": {},
              "cpu_s": 0.0, **dict.fromkeys(SHAPE_COUNTS, 0)}
    for program in programs:
        cpu_start = time.process_time()
        try:
            sequences = lintseq.lintseq(program, num_samples=num_samples, seed=seed,
                                        use_linter=use_linter,
                                        keep_original_errors=keep_original_errors)
        except lintseq.LintSeqError as error:
            result["skipped"][error.reason] = result["skipped"].get(error.reason, 0) + 1
            continue
        finally:
            result["cpu_s"] += time.process_time() - cpu_start
        result["programs"] += 1
        result["sequences"] += len(sequences)
        result["diffs"] += sum(len(s) for s in sequences)
        if sequences:
            result["distinct"] += len({tuple(s) for s in sequences}) / len(sequences)
        for diffs in sequences:
            for name, count in sequence_shape(program, diffs).items():
                result[name] += count
    result["pid"] = os.getpid()
    result["rss_mb"] = _current_rss_mb()
    result["peak_rss_mb"] = _peak_rss_mb()
    return result


def _warm_up(_):
    from data_gen import lintseq
    lintseq.lintseq("def f(x):\n    return x\n", num_samples=1)
    return os.getpid()


def _read_programs(path: str, key: str) -> list[str]:
    programs = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not JSON ({error.msg})") from None
            if not isinstance(row, dict) or key not in row:
                raise ValueError(f"{path}:{number}: no key {key!r} (use --key)")
            programs.append(row[key])
    if not programs:
        raise ValueError(f"{path}: no programs")
    return programs


def run(programs: list[str], *, num_samples: int, workers: int, use_linter: bool, repeat: int,
        chunk_size: int, progress: bool = True, keep_original_errors: bool = False) -> dict:
    """Runs the benchmark and returns the summary dict (see module docstring)."""
    import tqdm

    tasks = [(programs[i:i + chunk_size], num_samples, seed, use_linter, keep_original_errors)
             for seed in range(repeat) for i in range(0, len(programs), chunk_size)]
    start = time.perf_counter()
    pool = None
    if workers > 0:
        pool = multiprocessing.get_context("spawn").Pool(workers)
        pool.map(_warm_up, range(workers), chunksize=1)
        results_iter = pool.imap_unordered(_run_chunk, tasks)
    else:
        _warm_up(None)
        results_iter = map(_run_chunk, tasks)
    work_start = time.perf_counter()
    totals = {"programs": 0, "sequences": 0, "diffs": 0, "distinct": 0.0, "cpu_s": 0.0,
              **dict.fromkeys(SHAPE_COUNTS, 0)}
    skipped: dict[str, int] = {}
    first_rss: dict[int, float] = {}
    last_rss: dict[int, float] = {}
    peak = 0.0
    try:
        for result in tqdm.tqdm(results_iter, total=len(tasks), unit=" chunks", disable=not progress,
                                file=sys.stderr):
            for name in totals:
                totals[name] += result[name]
            for reason, count in result["skipped"].items():
                skipped[reason] = skipped.get(reason, 0) + count
            first_rss.setdefault(result["pid"], result["rss_mb"])
            last_rss[result["pid"]] = result["rss_mb"]
            peak = max(peak, result["peak_rss_mb"])
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    end = time.perf_counter()
    sequences = totals["sequences"]
    return {
        "programs": totals["programs"],
        "sequences": sequences,
        "skipped": skipped,
        "num_samples": num_samples,
        "use_linter": use_linter,
        "keep_original_errors": keep_original_errors,
        "workers": workers,
        "repeat": repeat,
        "sequences_per_s": round(sequences / (end - work_start), 1),
        "sequences_per_cpu_s": round(sequences / max(totals["cpu_s"], 1e-9), 1),
        "wall_s": round(end - start, 3),
        "load_average": round(os.getloadavg()[0], 2),
        "peak_rss_mb": round(peak, 1),
        "main_rss_mb": round(_peak_rss_mb(), 1),
        "worker_rss_first_mb": round(max(first_rss.values(), default=0.0), 1),
        "worker_rss_last_mb": round(max(last_rss.values(), default=0.0), 1),
        "mean_diffs_per_sequence": round(totals["diffs"] / max(sequences, 1), 3),
        "distinct_sequence_share": round(totals["distinct"] / max(totals["programs"], 1), 4),
        "edits_per_sequence": round(totals["edits"] / max(sequences, 1), 3),
        "lines_per_diff": round(totals["added_lines"] / max(totals["edits"], 1), 3),
        "multi_hunk_share": round(totals["multi_hunk_diffs"] / max(totals["edits"], 1), 4),
        "split_statement_share": round(totals["split_steps"] / max(totals["steps"], 1), 4),
        "docstring_splits_per_sequence": round(totals["docstring_split_steps"] / max(sequences, 1), 3),
        "parsing_state_share": round(totals["parsing_states"] / max(totals["states"], 1), 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_gen.perf.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", help="JSONL file with one program per line")
    parser.add_argument("--key", default="program", help="JSON key of the program text")
    parser.add_argument("--num_samples", type=int, default=5, help="edit sequences per program")
    parser.add_argument("--workers", type=int, default=2,
                        help="worker processes (0: run in this process)")
    parser.add_argument("--no_linter", action="store_true",
                        help="the linter-free ablation (uniformly random deletions)")
    parser.add_argument("--keep_original_errors", action="store_true",
                        help="tolerate the programs' own checker errors (default: their "
                             "lines go with the first deletion, as in the reference)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="passes over the input, with seeds 0..repeat-1 (long runs show RSS growth)")
    parser.add_argument("--chunk_size", type=int, default=8, help="programs per task")
    parser.add_argument("--make_stdlib_input", metavar="FILE",
                        help="write the standard input (200 stdlib functions, 10-44 lines) to FILE")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.make_stdlib_input:
        count = make_stdlib_input(args.make_stdlib_input)
        print(f"wrote {count} programs to {args.make_stdlib_input}", file=sys.stderr)
        if not args.input:
            return 0
    if not args.input:
        parser.error("--input is required (or --make_stdlib_input FILE)")
    for name in ("num_samples", "repeat", "chunk_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.workers < 0:
        parser.error("--workers must be >= 0")
    try:
        programs = _read_programs(args.input, args.key)
    except (OSError, ValueError) as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    summary = run(programs, num_samples=args.num_samples, workers=args.workers,
                  use_linter=not args.no_linter, repeat=args.repeat, chunk_size=args.chunk_size,
                  progress=not args.no_progress,
                  keep_original_errors=args.keep_original_errors)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
