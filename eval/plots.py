"""Coverage curves (pass@k against k), one or several runs on one figure: the paper's main plot.

    python -m eval.plots --runs lintseq/summary.json baseline/summary.json \\
        --labels LintSeq Baseline --output coverage.png

Each run is a `summary.json` written by `python -m eval.run`; its `suites` hold a `coverage`
list [pass@1, ..., pass@n]. For HumanEval+/MBPP+ the `plus` suite (base and plus tests both pass)
is plotted unless `--suite base` is given.
"""
from __future__ import annotations

import json
import pathlib
import sys
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position
from matplotlib import ticker  # pylint: disable=wrong-import-position

from data_gen import paths, quiet_logs, usage  # pylint: disable=wrong-import-position


class PlotError(ValueError):
  """A summary file that cannot be plotted."""


def load_curve(summary_path: str | pathlib.Path, suite: str | None = None) -> tuple[dict, list]:
  """(summary, coverage curve) of one run; `suite` None picks "plus" when present, else "base"."""
  path = pathlib.Path(summary_path)
  try:
    summary = json.loads(path.read_text())
  except (OSError, json.JSONDecodeError) as e:
    raise PlotError(f"cannot read {path}: {e}") from e
  suites = summary.get("suites") if isinstance(summary, dict) else None
  if not suites:
    raise PlotError(f"{path} is not an eval.run summary (no 'suites')")
  suite = suite or ("plus" if "plus" in suites else "base")
  if suite not in suites:
    raise PlotError(f"{path} has no suite {suite!r} (it has {', '.join(suites)})")
  curve = suites[suite].get("coverage") or []
  if not curve:
    raise PlotError(f"{path}: suite {suite!r} has an empty coverage curve")
  return summary, curve


def _default_label(summary: dict, path: str) -> str:
  parts = [summary.get("format"), pathlib.Path(summary.get("checkpoint", "")).name]
  return " ".join(p for p in parts if p) or str(path)


def plot_coverage(curves: Sequence[tuple[str, Sequence[float]]], output: str | pathlib.Path, *,
                  title: str | None = None,
                  errors: Sequence[Sequence[float]] | None = None) -> pathlib.Path:
  """Draws pass@k (percent) against k for each (label, [pass@1..pass@n]) and writes a PNG;
  `errors`, one list per curve, draws each point's standard error as a bar."""
  if not curves:
    raise PlotError("nothing to plot")
  if errors is not None and [len(e) for e in errors] != [len(c) for _, c in curves]:
    raise PlotError("one error per point of every curve is needed")
  fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=150)
  max_k = max(len(c) for _, c in curves)
  for i, (label, curve) in enumerate(curves):
    ks = range(1, len(curve) + 1)
    ax.errorbar(ks, [100 * v for v in curve],
                yerr=None if errors is None else [100 * e for e in errors[i]], capsize=2,
                marker="o" if len(curve) <= 20 else None, markersize=3, linewidth=2,
                label=f"{label} (pass@{len(curve)} {100 * curve[-1]:.1f}%)")
  if max_k >= 10:  # the paper's coverage plots: k on a log axis
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(ticker.FixedLocator(
        [k for k in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000) if k <= max_k] + [max_k]))
    ax.xaxis.set_major_formatter(ticker.ScalarFormatter())
    ax.xaxis.set_minor_locator(ticker.NullLocator())
  else:
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
  ax.set_xlim(1, max_k if max_k > 1 else 2)
  highest = max(100 * max(c) for _, c in curves)
  ax.set_ylim(0, min(100, max(10, 1.15 * highest)))  # all-zero curves still get a readable axis
  ax.set_xlabel("k (samples per problem)")
  ax.set_ylabel("pass@k (%)")
  if title:
    ax.set_title(title)
  ax.grid(True, which="major", alpha=0.3)
  ax.legend(loc="lower right", frameon=False)
  return _save(fig, output)


def plot_measures(by_problem: dict[str, dict[str, float]], output: str | pathlib.Path, *,
                  title: str | None = None) -> pathlib.Path:
  """One histogram over problems per measure of `eval.measures` (parse and lint-clean rates,
  distinct programs, similarity): the companion of the coverage plot."""
  from eval import measures  # pylint: disable=import-outside-toplevel
  if not by_problem:
    raise PlotError("nothing to plot")
  fig, axes = plt.subplots(1, len(measures.MEASURES), figsize=(12.8, 3.4), dpi=150)
  for ax, name in zip(axes, measures.MEASURES):
    values = [m[name] for m in by_problem.values()]
    ax.hist(values, bins=20)
    ax.set_xlabel(name.replace("_", " "))
    ax.set_title(f"mean {sum(values) / len(values):.3g}", fontsize=9)
  axes[0].set_ylabel("problems")
  if title:
    fig.suptitle(title)
  return _save(fig, output)


def plot_passk_vs_temperature(points: Sequence[tuple[float, float, Mapping[str, float]]],
                              output: str | pathlib.Path, *, title: str | None = None
                              ) -> pathlib.Path:
  """Draws pass@k (percent) against temperature, one line per k and top_p, from
  (temperature, top_p, {"pass@k": value}) points (eval.sweep's settings), and writes a PNG."""
  if not points:
    raise PlotError("nothing to plot")
  top_ps = sorted({p for _, p, _ in points})
  ks = sorted({k for _, _, scores in points for k in scores}, key=lambda k: int(k.split("@")[1]))
  fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=150)
  highest = 0.0
  for k in ks:
    for top_p in top_ps:
      line = sorted((t, 100 * scores[k]) for t, p, scores in points if p == top_p and k in scores)
      highest = max([highest] + [v for _, v in line])
      label = k if len(top_ps) == 1 else f"{k}, top_p {top_p:g}"
      ax.plot([t for t, _ in line], [v for _, v in line], marker="o", markersize=4, linewidth=2,
              label=label)
  ax.set_ylim(0, min(100, max(10, 1.15 * highest)))
  ax.set_xlabel("temperature")
  ax.set_ylabel("pass@k (%)")
  if title:
    ax.set_title(title)
  ax.grid(True, alpha=0.3)
  ax.legend(frameon=False)
  return _save(fig, output)


def _save(fig, output: str | pathlib.Path) -> pathlib.Path:
  fig.tight_layout()
  output = pathlib.Path(output)
  output.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(output)
  plt.close(fig)
  return output


def main(argv: Sequence[str] | None = None) -> int:
  parser = usage.ArgumentParser(prog="python -m eval.plots",
                                   description="Overlay coverage curves (pass@k vs k) of runs.")
  parser.add_argument("--runs", nargs="+", required=True, help="summary.json files of eval.run")
  parser.add_argument("--labels", nargs="+", help="one legend label per run")
  parser.add_argument("--suite", choices=("base", "plus"),
                      help="test suite to plot (default: plus when present, else base)")
  parser.add_argument("--title", help="figure title (default: the benchmark name)")
  parser.add_argument("--output", required=True, help="PNG file to write")
  args = parser.parse_args(argv)
  args.output = paths.absolute(args.output)
  try:
    paths.check_writable_dir(str(pathlib.Path(args.output).parent), "the folder of --output")
  except paths.PathError as e:
    parser.error(str(e))
  if args.labels and len(args.labels) != len(args.runs):
    parser.error(f"{len(args.labels)} labels for {len(args.runs)} runs")
  try:
    loaded = [load_curve(path, args.suite) for path in args.runs]
  except PlotError as e:
    parser.error(str(e))
  labels = args.labels or [_default_label(s, p) for (s, _), p in zip(loaded, args.runs)]
  benchmarks = sorted({s.get("benchmark", "?") for s, _ in loaded})
  title = args.title or " / ".join(benchmarks)
  out = plot_coverage([(label, curve) for label, (_, curve) in zip(labels, loaded)], args.output,
                      title=title)
  print(out)
  return 0


if __name__ == "__main__":
  quiet_logs.install()
  sys.exit(main())
