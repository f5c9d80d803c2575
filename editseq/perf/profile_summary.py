"""Where a jitted step's device time goes, read from a JAX profiler trace.

    python -m editseq.perf.profile_summary DIR_OR_TRACE [--top 20]
    python -m editseq.perf.bench_train --config=... --profile_dir=DIR    # traces the step, then this

`jax.profiler.trace(DIR)` writes `DIR/plugins/profile/<run>/<host>.trace.json.gz` (Chrome trace
events); this reads the newest one. On an accelerator it reads the device's "XLA Ops" line (one
event per HLO op as it ran on the device: fusions, custom calls such as cuBLAS GEMMs or cuDNN
attention, collectives), on the CPU the threads XLA's CPU client runs ops on. Ops are grouped by
name without their numeric suffix (`fusion.12` -> `fusion`, `loop_add_fusion.3` ->
`loop_add_fusion`). Printed: the busy time (union of op intervals) against the traced span (the
rest is the device waiting, e.g. for the host), and the ops that took the most time. Where op
events nest (the CPU shows a `while` around its body's ops), both count in the op time. A device
trace without an "XLA Ops" line is read from its "Stream" lines (kernel names).
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import gzip
import json
import pathlib
import re
import sys

_SUFFIX = re.compile(r"(\.\d+)+$")
# Threads of XLA's CPU client that run a program's ops (the Python thread only dispatches).
_CPU_OP_THREAD = re.compile(r"^tf_XLA(PjRtCpuClient|CpuClient|Eigen)")


class TraceError(ValueError):
  """No trace where the user pointed, or one without op events."""


@dataclasses.dataclass(frozen=True)
class OpTimes:
  """Per-op device time of a trace, in seconds."""
  source: str  # which events were read: "<process>: <thread>" names
  per_op: dict[str, float]  # op name (numeric suffix dropped) -> total seconds
  counts: dict[str, int]  # op name -> number of events
  busy_s: float  # union of the op intervals
  span_s: float  # first op start to last op end

  @property
  def total_s(self) -> float:
    return sum(self.per_op.values())


def find_trace(path: str | pathlib.Path) -> pathlib.Path:
  """`path` itself if it is a trace file, else the newest `*.trace.json.gz` below it."""
  path = pathlib.Path(path)
  if path.is_file():
    return path
  if not path.is_dir():
    raise TraceError(f"no such file or folder: {path}")
  traces = sorted(path.rglob("*.trace.json.gz"), key=lambda p: p.stat().st_mtime)
  if not traces:
    raise TraceError(f"no *.trace.json.gz below {path} (write one with jax.profiler.trace)")
  return traces[-1]


def _union_length(intervals: list[tuple[float, float]]) -> float:
  total, end = 0.0, float("-inf")
  for start, stop in sorted(intervals):
    if stop > end:
      total += stop - max(start, end)
      end = stop
  return total


def _kernel_name(name: str) -> str:
  """A C++ kernel's name without `void ` and its parameter list:
  `void cudnn::fusion::memset<float>(void*, float)` -> `cudnn::fusion::memset<float>`."""
  if name.startswith("void "):
    name = name[len("void "):]
  if name.endswith(")"):
    depth = 0
    for i in range(len(name) - 1, -1, -1):
      depth += {")": 1, "(": -1}.get(name[i], 0)
      if depth == 0:
        return name[:i] or name
  return name


def op_times(trace_path: str | pathlib.Path) -> OpTimes:
  """Reads a trace's op events: a device's "XLA Ops" line if any, else XLA's CPU op threads."""
  try:
    with gzip.open(trace_path, "rt") as f:
      trace = json.load(f)
  except (OSError, ValueError) as e:
    raise TraceError(f"{trace_path}: not a gzipped JSON trace ({e})") from e
  events = trace.get("traceEvents", []) if isinstance(trace, dict) else trace
  processes, threads = {}, {}
  for e in events:
    if e.get("ph") == "M" and e.get("name") == "process_name":
      processes[e["pid"]] = e["args"]["name"]
    elif e.get("ph") == "M" and e.get("name") == "thread_name":
      threads[(e["pid"], e["tid"])] = e["args"]["name"]
  device_pids = sorted(pid for pid, name in processes.items() if name.startswith("/device:"))
  if device_pids:  # one device: the first (the others run the same program)
    device_threads = {key: name for key, name in threads.items() if key[0] == device_pids[0]}
    selected = {key for key, name in device_threads.items() if name == "XLA Ops"}
    if not selected:  # no HLO-op line: the kernels on the device's streams
      selected = {key for key, name in device_threads.items() if name.startswith("Stream")}
  else:
    selected = {key for key, name in threads.items() if _CPU_OP_THREAD.match(name)}
  per_op, counts = collections.Counter(), collections.Counter()
  intervals = []
  for e in events:
    if e.get("ph") != "X" or (e.get("pid"), e.get("tid")) not in selected:
      continue
    name = e["name"]
    if device_pids:
      name = _kernel_name(name)
    elif name.startswith("end: ") or "::" in name:  # the CPU client's markers, not ops
      continue
    start, duration = float(e["ts"]) * 1e-6, float(e.get("dur", 0.0)) * 1e-6
    op = _SUFFIX.sub("", name)
    per_op[op] += duration
    counts[op] += 1
    intervals.append((start, start + duration))
  if not intervals:
    raise TraceError(f"{trace_path}: no op events (processes: {sorted(processes.values())})")
  names = sorted({threads[key] for key in selected})
  pid = next(iter(selected))[0]
  source = (f"{processes[pid]}: {', '.join(names)}" if device_pids else
            f"{processes.get(pid, pid)}: {len(selected)} XLA CPU threads")
  return OpTimes(source, dict(per_op), dict(counts), _union_length(intervals),
                 max(b for _, b in intervals) - min(a for a, _ in intervals))


def format_summary(times: OpTimes, top: int = 20) -> str:
  lines = [f"ops from {times.source}",
           f"busy {times.busy_s * 1e3:,.1f} ms of a {times.span_s * 1e3:,.1f} ms span "
           f"({100 * times.busy_s / max(times.span_s, 1e-12):.1f}%); op time "
           f"{times.total_s * 1e3:,.1f} ms",
           f"{'ms':>10}{'share':>8}{'count':>8}  op"]
  for op, seconds in sorted(times.per_op.items(), key=lambda kv: -kv[1])[:top]:
    lines.append(f"{seconds * 1e3:>10,.2f}{100 * seconds / times.total_s:>7.1f}%"
                 f"{times.counts[op]:>8}  {op}")
  if len(times.per_op) > top:
    rest = sorted(times.per_op.values(), reverse=True)[top:]
    lines.append(f"{sum(rest) * 1e3:>10,.2f}{100 * sum(rest) / times.total_s:>7.1f}%"
                 f"{'':>8}  ({len(rest)} other ops)")
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m editseq.perf.profile_summary", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("path", help="a *.trace.json.gz, or a folder jax.profiler.trace wrote")
  parser.add_argument("--top", type=int, default=20, help="ops to list (default 20)")
  args = parser.parse_args(argv)
  try:
    trace = find_trace(args.path)
    print(f"trace: {trace}")
    print(format_summary(op_times(trace), args.top))
  except TraceError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
