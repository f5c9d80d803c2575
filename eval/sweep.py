"""Evaluate a checkpoint at several sampling settings and plot pass@k against temperature.

    python -m eval.sweep --checkpoint RUN_DIR --benchmark humaneval \\
        --temperatures 0.2,0.8,1.0 --top_p 0.95 --num_samples 50 --output_dir OUT

Each (temperature, top_p) setting is one `python -m eval.run` evaluation with the same flags,
written to OUT/t<temperature>_p<top_p>/ (samples.jsonl, results.jsonl, summary.json, plots); a
setting already evaluated there from the same checkpoint, problems, flags and code is reused, so
a rerun or a longer list of temperatures evaluates only what is new. Then OUT/sweep.json tabulates
pass@k (per test suite) and the mean sample measures of every setting, and
OUT/passk_vs_temperature.png draws pass@k against temperature, one line per k (and per top_p).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
from collections.abc import Sequence

from data_gen import quiet_logs
from eval import plots, run
from eval.sampler import SamplingConfig

SWEEP_FILE = "sweep.json"
PLOT_FILE = "passk_vs_temperature.png"


def setting_name(temperature: float, top_p: float) -> str:
  """The folder of one setting under the sweep's output folder."""
  return f"t{temperature:g}_p{top_p:g}"


def setting_args(args: argparse.Namespace, temperature: float, top_p: float) -> argparse.Namespace:
  """eval.run's flags for one setting: the sweep's, with one temperature and top_p and the
  setting's folder (so that `python -m eval.run` with these flags reuses the folder)."""
  flags = {k: v for k, v in vars(args).items() if k != "temperatures"}
  return argparse.Namespace(**{
      **flags, "temperature": temperature, "top_p": top_p,
      "output_dir": str(pathlib.Path(args.output_dir) / setting_name(temperature, top_p))})


def table_row(name: str, summary: dict) -> dict:
  """One setting's line of sweep.json: its flags, pass@k per suite and the mean measures."""
  return {"setting": name, "temperature": summary["temperature"], "top_p": summary["top_p"],
          "summary": f"{name}/summary.json",
          "suites": {suite: {k: v for k, v in scores.items() if k.startswith("pass@")}
                     for suite, scores in summary["suites"].items()},
          **{k: v for k, v in summary.items() if k.startswith("mean_")}}


def main(argv: Sequence[str] | None = None) -> int:
  parser = run.build_parser(prog="python -m eval.sweep", description=__doc__.split("\n\n")[0],
                            sweep=True)
  args = parser.parse_args(argv)
  run.check_args(parser, args)
  settings = [(t, p) for p in args.top_p for t in args.temperatures]
  for temperature, top_p in settings:  # every setting's mistake before any evaluation
    try:
      SamplingConfig(temperature=temperature, top_p=top_p)
    except ValueError as e:
      parser.error(str(e))
  out = pathlib.Path(args.output_dir)
  rows = []
  for i, (temperature, top_p) in enumerate(settings, 1):
    name = setting_name(temperature, top_p)
    print(f"eval.sweep: setting {i}/{len(settings)}: temperature {temperature:g}, top_p "
          f"{top_p:g} -> {out / name}", file=sys.stderr)
    run.evaluate(parser, setting_args(args, temperature, top_p))
    rows.append(table_row(name, json.loads((out / name / "summary.json").read_text())))
  first = json.loads((out / rows[0]["summary"]).read_text())
  suite = "plus" if "plus" in rows[0]["suites"] else "base"
  sweep = {"benchmark": first["benchmark"], "checkpoint": first["checkpoint"],
           "format": first["format"], "subset": first["subset"],
           "samples_per_problem": args.num_samples, "plotted_suite": suite, "settings": rows}
  (out / SWEEP_FILE).write_text(json.dumps(sweep, indent=2) + "\n")
  plots.plot_passk_vs_temperature(
      [(r["temperature"], r["top_p"], r["suites"][suite]) for r in rows], out / PLOT_FILE,
      title=f"{first['benchmark']}: pass@k ({suite} tests) against temperature")
  for r in rows:
    print(json.dumps({"setting": r["setting"], **r["suites"][suite]}))
  return 0


if __name__ == "__main__":
  quiet_logs.install()
  sys.exit(main())
