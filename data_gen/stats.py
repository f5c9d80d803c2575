"""Statistics of one generated variant: accumulated in the pipeline, reported as JSON and text.

Every program read ends up either in `programs_out` or in exactly one skip reason, so
`programs_in == programs_out + sum(skipped.values())` holds for every report (tests check it).
Distributions are kept as exact integer histograms, which merge associatively across workers,
so the figures do not depend on how the work was split.
"""
from __future__ import annotations

import collections
import json
import os

import apache_beam as beam


def program_summary(edits_per_sequence: list[int], lines_per_diff: list[int],
                    seconds: float) -> dict:
  """The statistics contribution of one program: its sequences' lengths and diff sizes."""
  return {"programs": 1, "sequences": len(edits_per_sequence),
          "edits": dict(collections.Counter(edits_per_sequence)),
          "diff_lines": dict(collections.Counter(lines_per_diff)), "seconds": seconds}


class MergeSummaries(beam.CombineFn):
  """Sums program summaries; histograms are merged key by key."""

  def create_accumulator(self):
    return {"programs": 0, "sequences": 0, "edits": collections.Counter(),
            "diff_lines": collections.Counter(), "seconds": 0.0}

  def add_input(self, acc, summary):
    acc["programs"] += summary["programs"]
    acc["sequences"] += summary["sequences"]
    acc["edits"].update(summary["edits"])
    acc["diff_lines"].update(summary["diff_lines"])
    acc["seconds"] += summary["seconds"]
    return acc

  def merge_accumulators(self, accumulators):
    merged = self.create_accumulator()
    for acc in accumulators:
      self.add_input(merged, acc)
    return merged

  def extract_output(self, acc):
    return acc


def distribution(histogram: dict) -> dict:
  """Mean and nearest-rank percentiles of an integer histogram {value: count}."""
  items = sorted((int(k), v) for k, v in histogram.items())
  total = sum(v for _, v in items)
  if not total:
    return {"count": 0}
  out = {"count": total, "mean": round(sum(k * v for k, v in items) / total, 3),
         "min": items[0][0], "max": items[-1][0]}
  for q in (50, 90, 99):
    rank, seen = -(-q * total // 100), 0
    for value, count in items:
      seen += count
      if seen >= rank:
        out[f"p{q}"] = value
        break
  return out


def make_report(variant: str, summary: dict, skipped: dict[str, int],
                split_lengths: dict[str, list[int]], settings: dict) -> dict:
  """The JSON report of one variant (see module docstring for the accounting identity)."""
  skipped = {k: skipped[k] for k in sorted(skipped)}
  return {
      "variant": variant,
      "programs_in": summary["programs"] + sum(skipped.values()),
      "programs_out": summary["programs"],
      "sequences_out": summary["sequences"],
      "splits": {split: {"examples": sum(lengths), "shards": len(lengths)}
                 for split, lengths in sorted(split_lengths.items())},
      "skipped": skipped,
      "edits_per_sequence": distribution(summary["edits"]),
      "added_lines_per_diff": distribution(summary["diff_lines"]),
      "generation_s": round(summary["seconds"], 3),
      "settings": settings,
  }


def format_text(report: dict) -> str:
  """A human-readable summary of a report."""
  lines = [f"variant {report['variant']}",
           f"  programs in      {report['programs_in']}",
           f"  programs out     {report['programs_out']}",
           f"  sequences out    {report['sequences_out']}"]
  for split, info in report["splits"].items():
    lines.append(f"  {split:<16} {info['examples']} examples in {info['shards']} shard(s)")
  lines.append(f"  skipped          {sum(report['skipped'].values())}")
  for reason, count in report["skipped"].items():
    lines.append(f"    {reason:<22} {count}")
  for key in ("edits_per_sequence", "added_lines_per_diff"):
    d = report[key]
    if d.get("count"):
      lines.append(f"  {key:<22} mean {d['mean']}  p50 {d['p50']}  p90 {d['p90']}  "
                   f"p99 {d['p99']}  max {d['max']}")
  lines.append(f"  generation time  {report['generation_s']} s (summed over programs)")
  if "elapsed_s" in report:
    lines.append(f"  wall time        {report['elapsed_s']} s")
  return "\n".join(lines) + "\n"


def write_report(variant_dir: str, report: dict) -> None:
  """Writes `stats.json` and `stats.txt` into the variant's folder (any Beam filesystem)."""
  from apache_beam.io.filesystems import FileSystems
  for name, text in (("stats.json", json.dumps(report, indent=2, sort_keys=True) + "\n"),
                     ("stats.txt", format_text(report))):
    with FileSystems.create(os.path.join(variant_dir, name)) as f:
      f.write(text.encode("utf-8"))


def read_report(variant_dir: str) -> dict:
  from apache_beam.io.filesystems import FileSystems
  with FileSystems.open(os.path.join(variant_dir, "stats.json")) as f:
    return json.loads(f.read().decode("utf-8"))
