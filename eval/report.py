"""The report of a LintSeq-vs-baseline experiment (`python -m editseq.experiment`): one Markdown
page with its figures, from the files the stages wrote.

    python -m eval.report --experiment WORKDIR          # -> WORKDIR/report/report.md + PNGs

It reads WORKDIR/experiment.json and stages.json (what ran, how long, where), data/<variant>/
stats.json and the training data, runs/<variant>/metrics.jsonl (loss curves) and eval/<variant>/
<benchmark>/{summary.json,results.jsonl,samples.jsonl}, and writes:
- report.md: data statistics, training, pass@k tables (base and plus tests), validity and
  diversity, an example edit sequence and sampled programs, each stage's command and time;
- loss.png: both variants' training (and held-out) loss against the optimizer step;
- coverage_<benchmark>.png: both variants' pass@k against k, with the standard error over
  problems as bars.
Links in report.md are relative, so the folder can be moved or committed as it is.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position

from data_gen import edit_format, paths, quiet_logs, usage  # pylint: disable=wrong-import-position
from editseq import metrics  # pylint: disable=wrong-import-position
from eval import passk, plots  # pylint: disable=wrong-import-position

VARIANTS = ("lintseq", "baseline")
LABELS = {"lintseq": "LintSeq", "baseline": "Baseline"}
# The paper's Table 1 for TinyCodeLM-150M on HumanEval (pass@1, pass@10), for orientation only:
# another model, other data and far more compute.
PAPER_HUMANEVAL_150M = {"lintseq": (12.8, 20.6), "baseline": (9.1, 13.5)}
MEASURE_NAMES = {"parse_rate": "parse", "lint_clean_rate": "lint-clean", "distinct": "distinct",
                 "similarity": "similarity"}  # eval.measures' names, as `mean_<name>` in summaries


class ReportError(ValueError):
  """The experiment folder lacks a file the report needs."""


def _read_json(path: pathlib.Path):
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError) as e:
    raise ReportError(f"cannot read {path}: {e}") from e


def _read_jsonl(path: pathlib.Path) -> list[dict]:
  try:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
  except (OSError, ValueError) as e:
    raise ReportError(f"cannot read {path}: {e}") from e


def _pct(value: float | None) -> str:
  return "n/a" if value is None else f"{100 * value:.1f}"


def _table(header: Sequence[str], rows: Sequence[Sequence]) -> list[str]:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def plot_losses(runs: dict[str, list[dict]], output: pathlib.Path) -> pathlib.Path:
  """Training loss (lines) and held-out loss (markers) per optimizer step, one colour per run."""
  fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=150)
  for (variant, records), colour in zip(runs.items(), ("C0", "C1")):
    steps = [r["step"] for r in records if r.get("loss") is not None]
    ax.plot(steps, [r["loss"] for r in records if r.get("loss") is not None], color=colour,
            linewidth=1.5, label=f"{LABELS.get(variant, variant)} train")
    held_out = [(r["step"], r["eval_loss"]) for r in records if r.get("eval_loss") is not None]
    if held_out:
      ax.plot(*zip(*held_out), color=colour, linestyle="--", marker="o", markersize=3,
              label=f"{LABELS.get(variant, variant)} held-out")
  ax.set_xlabel("optimizer step")
  ax.set_ylabel("loss per target token")
  ax.grid(True, alpha=0.3)
  ax.legend(frameon=False)
  fig.tight_layout()
  output.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(output)
  plt.close(fig)
  return output


class Report:
  """Everything report.md says, read from one experiment folder."""

  def __init__(self, workdir: pathlib.Path):
    self.workdir = workdir
    self.experiment = _read_json(workdir / "experiment.json")
    try:
      self.stages = json.loads((workdir / "stages.json").read_text())
    except (OSError, ValueError):
      self.stages = {}
    self.benchmarks = self.experiment["config"]["eval"]["benchmarks"].split(",")
    self.out = workdir / "report"

  def eval_dir(self, variant: str, benchmark: str) -> pathlib.Path:
    return self.workdir / "eval" / variant / benchmark

  def counts(self, variant: str, benchmark: str, suite: str) -> list[tuple[int, int]]:
    """(n, c) per problem for one test suite, from results.jsonl (as eval.run's summary)."""
    results = _read_jsonl(self.eval_dir(variant, benchmark) / "results.jsonl")
    suites = _read_json(self.eval_dir(variant, benchmark) / "summary.json")["suites"]
    key = "passed" if suite == "plus" or len(suites) == 1 else f"{suite}_passed"
    return list(passk.counts_by_problem([r["task_id"] for r in results],
                                        [r[key] for r in results]).values())

  def write(self) -> pathlib.Path:
    self.out.mkdir(parents=True, exist_ok=True)
    lines = self._header() + self._data() + self._training() + self._passk()
    lines += self._measures() + self._examples() + self._stages()
    path = self.out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path

  def _header(self) -> list[str]:
    e = self.experiment
    config = e["config"]
    model = config["pretrained"] or "a model trained from scratch (config.finetune.model)"
    m = e["machine"]
    return [
        f"# LintSeq vs baseline finetuning: experiment `{e['name']}`", "",
        f"Model: {model}. Both variants start from it and train {e['steps']} optimizer steps "
        f"of {e['global_batch_size']} examples with the same recipe (`{e['config_file']}`, "
        f"section `finetune`): LintSeq on edit sequences, the baseline on the same programs "
        "written in one pass.", "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, Python "
        f"{m['python']}. Code: commit `{e.get('git_commit')}`.", "",
        "Reproduce (from the repository root):", "", "```bash", e["command"], "```", ""]

  def _data(self) -> list[str]:
    rows = []
    for variant in VARIANTS:
      stats = _read_json(self.workdir / "data" / variant / "stats.json")
      info = self.experiment["variants"][variant]
      splits = {name: split["examples"] for name, split in stats["splits"].items()}
      rows.append([LABELS[variant], stats["programs_out"], splits["train"],
                   splits.get("validation", 0),
                   f"{stats['edits_per_sequence']['mean']:.2f}",
                   f"{stats['added_lines_per_diff']['mean']:.2f}", info["epochs"]])
    return ["## Data", "", "Standard-library instruction pairs unless the config says otherwise "
            "(`data` section); one LintSeq sample set per program, and the program itself for "
            "the baseline.", ""] + _table(
        ["variant", "programs", "train examples", "held-out", "edits / sequence",
         "added lines / diff", "epochs"], rows) + [""]

  def _training(self) -> list[str]:
    runs = {v: metrics.read_metrics(str(self.workdir / self.experiment["variants"][v]["run_dir"]))
            for v in VARIANTS}
    if not all(runs.values()):
      raise ReportError("a finetune has no metrics.jsonl records")
    plot_losses(runs, self.out / "loss.png")
    rows = []
    for variant, records in runs.items():
      held_out = [r["eval_loss"] for r in records if r.get("eval_loss") is not None]
      speeds = [r["tokens_per_s"] for r in records[1:] if r.get("tokens_per_s")]
      rows.append([LABELS[variant], records[-1]["step"], f"{records[0]['loss']:.3f}",
                   f"{records[-1]['loss']:.3f}", f"{held_out[-1]:.3f}" if held_out else "n/a",
                   f"{sorted(speeds)[len(speeds) // 2]:.0f}" if speeds else "n/a"])
    return ["## Training", "", "![training loss](loss.png)", ""] + _table(
        ["variant", "steps", "first loss", "last loss", "last held-out loss",
         "tokens/s (median, padded)"], rows) + [
        "", "The two losses are not comparable with each other: the targets differ (diffs "
        "with their headers vs plain programs).", ""]

  def _passk(self) -> list[str]:
    lines = ["## pass@k", ""]
    e = self.experiment["config"]["eval"]
    lines.append(f"Sampling: n = {e['num_samples']} per problem, temperature {e['temperature']}, "
                 f"top-p {e['top_p']}, at most {e['max_new_tokens']} new tokens. pass@k is the "
                 "unbiased estimator, in percent, ± the standard error over problems.")
    lines.append("")
    for benchmark in self.benchmarks:
      curves, errors, rows = [], [], []
      summaries = {v: _read_json(self.eval_dir(v, benchmark) / "summary.json") for v in VARIANTS}
      suites = list(summaries[VARIANTS[0]]["suites"])
      n = min(s["samples_per_problem"] for s in summaries.values())
      ks = sorted({k for k in (1, 5, 10, 50, 100, n) if k <= n})
      for variant in VARIANTS:
        for suite in suites:
          counts = self.counts(variant, benchmark, suite)
          curve = passk.coverage_curve(counts)
          err = passk.coverage_standard_errors(counts)
          rows.append([LABELS[variant], suite, len(counts)]
                      + [f"{100 * curve[k - 1]:.1f} ± {100 * err[k - 1]:.1f}" for k in ks])
          if suite == suites[-1]:
            curves.append((f"{LABELS[variant]}, {suite} tests", curve))
            errors.append(err)
      figure = f"coverage_{benchmark}.png"
      plots.plot_coverage(curves, self.out / figure, title=benchmark, errors=errors)
      subset = summaries[VARIANTS[0]].get("subset") or "all"
      lines += [f"### {benchmark} (problems {subset})", ""]
      lines += _table(["variant", "tests", "problems"] + [f"pass@{k}" for k in ks], rows)
      lines += ["", f"![coverage on {benchmark}]({figure})", ""]
    paper = PAPER_HUMANEVAL_150M
    lines += ["For orientation only, the paper's Table 1 (TinyCodeLM-150M pretrained on 72B "
              "tokens and finetuned on ~89k instruction pairs, HumanEval): pass@1 / pass@10 "
              f"{paper['lintseq'][0]} / {paper['lintseq'][1]} with LintSeq against "
              f"{paper['baseline'][0]} / {paper['baseline'][1]} for the baseline.", ""]
    return lines

  def _measures(self) -> list[str]:
    rows = []
    for benchmark in self.benchmarks:
      for variant in VARIANTS:
        summary = _read_json(self.eval_dir(variant, benchmark) / "summary.json")
        rows.append([benchmark, LABELS[variant]]
                    + [f"{summary.get('mean_' + name, float('nan')):.3f}" for name in MEASURE_NAMES]
                    + [summary.get("malformed", "n/a"), summary.get("new_tokens_per_s", "n/a")])
    return ["## Validity and diversity", "",
            "Per problem, then averaged: the share of samples that parse, that are lint-clean "
            "(pyflakes), the number of distinct programs among the n (after `ast` "
            "normalisation) and their mean pairwise similarity (difflib ratio).", ""] + _table(
        ["benchmark", "variant"] + list(MEASURE_NAMES.values())
        + ["malformed samples (diffs)", "new tokens/s"], rows) + [""]

  def _examples(self) -> list[str]:
    from data_gen import dataset  # pylint: disable=import-outside-toplevel
    lines = ["## Examples", ""]
    example = next(dataset.read_examples(str(self.workdir / "data"), "lintseq", "train"), None)
    if example is not None:
      lines += ["A LintSeq training example (instruction, then the completion the model learns):",
                "", "```", example["prompt"] + example["completion"], "```", ""]
    benchmark = self.benchmarks[0]
    for variant in VARIANTS:
      samples = _read_jsonl(self.eval_dir(variant, benchmark) / "samples.jsonl")
      results = _read_jsonl(self.eval_dir(variant, benchmark) / "results.jsonl")
      # The first passing sample, else the first one.
      i = next((i for i, r in enumerate(results) if r.get("passed")), 0)
      if i >= len(samples):
        continue
      sample = samples[i]
      lines += [f"{LABELS[variant]}, {benchmark} {sample['task_id']}, sample {i} "
                f"({'passed' if results[i].get('passed') else 'failed'}): the completion as "
                "sampled", "", "```", sample["completion"], "```", ""]
      if sample.get("format") == "diffs":
        decoded = edit_format.decode_lintseq_completion(sample["completion"])
        lines += ["and the program its diffs build:", "", "```python", decoded.program, "```",
                  ""]
    return lines

  def _stages(self) -> list[str]:
    rows = [[name, f"{r.get('seconds', 0):.0f}", f"`{r.get('command')}`"]
            for name, r in self.stages.items()]
    total = sum(r.get("seconds", 0) for r in self.stages.values())
    return ["## Stages", "", f"Wall time of the last run of each stage, {total / 60:.0f} min in "
            "all (a stage found done on a rerun keeps its time).", ""] + _table(
        ["stage", "seconds", "command"], rows)


def main(argv: Sequence[str] | None = None) -> int:
  parser = usage.ArgumentParser(prog="python -m eval.report", description=__doc__.split(
      "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog=__doc__.split("\n\n", 1)[1])
  parser.add_argument("--experiment", required=True, help="an editseq.experiment workdir")
  args = parser.parse_args(argv)
  workdir = pathlib.Path(paths.absolute(args.experiment))
  try:
    path = Report(workdir).write()
  except (ReportError, KeyError, plots.PlotError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(path)
  return 0


if __name__ == "__main__":
  quiet_logs.install()
  sys.exit(main())
