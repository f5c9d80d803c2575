"""The Beam pipeline end to end on real standard-library code (DirectRunner's FnApiRunner).

One module-scoped run feeds most checks: TFDS round trip, record contents, shard order, stats
accounting and bad-input counts. Determinism is checked against a second run with other worker
settings, byte for byte.
"""
import collections
import json
import os
import shutil
import subprocess
import sys
import sysconfig

import pytest

from data_gen import dataset, edit_format, lintseq, pipeline, programs, sources
from tests.conftest import REPO_ROOT

STDLIB = sysconfig.get_paths()["stdlib"]
NUM_SAMPLES = 2
SETTINGS = dict(num_samples=NUM_SAMPLES, seed=3, validation_fraction=0.3, examples_per_shard=40,
                max_program_lines=400)


def _make_inputs(root):
  """Real stdlib modules (instruction pairs and whole files) plus one file of each kind of bad input."""
  lib = root / "lib"
  lib.mkdir()
  for name in ("bisect.py", "textwrap.py", "heapq.py", "shlex.py", "colorsys.py"):
    shutil.copy(os.path.join(STDLIB, name), lib / name)
  shutil.copytree(os.path.join(STDLIB, "json"), lib / "json",
                  ignore=shutil.ignore_patterns("__pycache__"))

  tree = root / "tree"
  tree.mkdir()
  for name in ("bisect.py", "colorsys.py", "keyword.py"):
    shutil.copy(os.path.join(STDLIB, name), tree / name)
  shutil.copy(os.path.join(STDLIB, "argparse.py"), tree / "huge.py")  # > max_program_lines.
  (tree / "latin1.py").write_bytes("s = 'caf\xe9'\n".encode("latin-1"))
  (tree / "image.py").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
  (tree / "empty.py").write_bytes(b"")
  (tree / "broken.py").write_text("def f(:\n    return 1\n")
  (tree / "token.py").write_text("SEP = '<|diff|>'\n")

  twin = root / "twin" / "tree"  # same source name "tree": ids collide with the tree above.
  twin.mkdir(parents=True)
  (twin / "keyword.py").write_text("x = 1\n")

  jsonl = root / "data.jsonl"
  rows = [json.dumps({"q": "Add two numbers.", "a": "Sure:\n```python\ndef add(a, b):\n"
                                                     "    return a + b\n```\n"}),
          json.dumps({"q": "Say hi.", "a": "```bash\necho hi\n```"}),
          # Valid JSON whose strings cannot be UTF-8 (lone surrogates): skipped, not a crash.
          json.dumps({"q": "Bad program.", "a": "x = '\udcff'\n"}),
          json.dumps({"q": "Bad \udcff instruction.", "a": "x = 1\n"}),
          "{oops"]
  jsonl.write_text("\n".join(rows) + "\n")
  return lambda: [sources.StdlibInstructionSource(str(lib)), sources.PyTreeSource(str(tree)),
                  sources.PyTreeSource(str(twin)), sources.JsonlSource([str(jsonl)], "q", "a")]


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
  root = tmp_path_factory.mktemp("pipeline")
  make_sources = _make_inputs(root)
  out = root / "out"
  reports = pipeline.run(sources=make_sources(), output_dir=str(out), **SETTINGS)
  return make_sources, out, reports


def _expected_programs(make_sources):
  """The programs the pipeline should keep, computed without Beam: id -> (instruction, program)."""
  found = collections.defaultdict(list)
  for source in make_sources():
    for shard in source.shards():
      for item in source.read(shard):
        if isinstance(item, sources.Record):
          try:
            programs.check_instruction(item.instruction)
            text, _ = programs.check(item.program, max_bytes=100_000,
                                     max_lines=SETTINGS["max_program_lines"])
          except programs.BadProgram:
            continue
          found[item.source_id].append((item.instruction, text))
  return {k: min(v) for k, v in found.items()}


def _shard_files(out, variant):
  folder = dataset.dataset_dir(str(out), variant)
  return sorted(n for n in os.listdir(folder) if dataset.is_shard_filename(n))


def test_outputs_load_with_tfds_and_match_the_inputs(generated):
  make_sources, out, reports = generated
  expected = _expected_programs(make_sources)
  for variant in dataset.VARIANTS:
    builder = dataset.builder(str(out), variant)
    assert set(builder.info.splits) == {"train", "validation"}
    rows = {split: list(dataset.read_examples(str(out), variant, split))
            for split in builder.info.splits}
    for split, split_rows in rows.items():
      assert builder.info.splits[split].num_examples == len(split_rows)
      assert reports[variant]["splits"][split]["examples"] == len(split_rows)
      for row in split_rows:
        assert pipeline.split_of(row["source_id"], SETTINGS["validation_fraction"]) == split
    all_rows = rows["train"] + rows["validation"]
    keys = [(r["source_id"], r["sample_index"]) for r in all_rows]
    assert len(set(keys)) == len(keys) == reports[variant]["sequences_out"]
    by_id = collections.defaultdict(list)
    for row in all_rows:
      by_id[row["source_id"]].append(row)
      assert (row["instruction"], row["program"]) == expected[row["source_id"]]
      assert row["variant"] == variant
      if variant == "baseline":
        assert row["prompt"] == edit_format.baseline_prompt(row["instruction"])
        assert row["completion"] == row["program"] and row["num_edits"] == 1
      else:
        diffs = edit_format.split_diffs(row["completion"])
        assert (row["prompt"], row["completion"]) == edit_format.lintseq_example(
            row["instruction"], diffs)
        assert len(diffs) == row["num_edits"] >= 1
        assert lintseq.apply_diffs(diffs) == row["program"]
    if variant == "baseline":  # nothing lost, nothing duplicated.
      assert set(by_id) == set(expected)
    else:
      assert set(by_id) <= set(expected)
      assert all(sorted(r["sample_index"] for r in v) == list(range(NUM_SAMPLES))
                 for v in by_id.values())


def test_plain_tfds_loads_every_variant_by_name(generated):
  """`tfds.load(<variant>, data_dir=OUT)` with no registered builder, and the version folder
  with `builder_from_directory`, give the same records."""
  import tensorflow_datasets as tfds
  _, out, reports = generated
  for variant in dataset.VARIANTS:
    by_name = tfds.load(variant, data_dir=str(out), split="validation", shuffle_files=False)
    by_dir = tfds.builder_from_directory(str(out / variant / "1.0.0")).as_dataset(
        split="validation", shuffle_files=False)
    rows = [(r["source_id"], r["sample_index"], r["completion"]) for r in tfds.as_numpy(by_name)]
    assert rows == [(r["source_id"], r["sample_index"], r["completion"])
                    for r in tfds.as_numpy(by_dir)]
    assert len(rows) == reports[variant]["splits"]["validation"]["examples"] > 0


def test_sequences_match_lintseq_called_directly(generated):
  _, out, _ = generated
  rows = list(dataset.read_examples(str(out), "lintseq", "train"))[:6]
  for row in rows:
    direct = lintseq.lintseq_sample(row["program"], seed=SETTINGS["seed"],
                                    sample_index=row["sample_index"])
    assert edit_format.split_diffs(row["completion"]) == direct


def test_keep_original_errors_reaches_lintseq(tmp_path):
  """A program with an undefined name: its line goes with the first deletion by default (the
  last diff), anywhere with `--keep_original_errors`; the setting is recorded in the stats."""
  data = tmp_path / "undefined.jsonl"
  program = "a = 1\nb = missing\nc = 2\nd = a + c\ne = 3\n"
  data.write_text(json.dumps({"instruction": "Use missing.", "response": program}) + "\n")
  out = tmp_path / "out"
  code = pipeline.main(["--output_dir", str(out), "--source", "jsonl", "--input", str(data),
                        "--no_progress", "--variants", "lintseq", "--num_samples", "12",
                        "--validation_fraction", "0", "--keep_original_errors"])
  assert code == 0
  rows = list(dataset.read_examples(str(out), "lintseq", "train"))
  assert len(rows) == 12
  for row in rows:
    assert edit_format.split_diffs(row["completion"]) == lintseq.lintseq_sample(
        program, seed=0, sample_index=row["sample_index"], keep_original_errors=True)
  assert any("+b = missing" not in edit_format.split_diffs(row["completion"])[-1].split("\n")
             for row in rows)
  stats = json.loads((out / "lintseq" / "stats.json").read_text())
  assert '"keep_original_errors": true' in json.dumps(stats)


def test_shards_are_sorted_and_named_like_tfds(generated):
  import tensorflow as tf
  _, out, reports = generated
  names = _shard_files(out, "lintseq")
  train = [n for n in names if n.startswith("lintseq-train.")]
  assert len(train) == reports["lintseq"]["splits"]["train"]["shards"] > 1
  assert train == [dataset.shard_filename("lintseq", "train", i, len(train))
                   for i in range(len(train))]
  for name in names:
    keys = []
    path = os.path.join(dataset.dataset_dir(str(out), "lintseq"), name)
    for raw in tf.data.TFRecordDataset(path).as_numpy_iterator():
      example = tf.train.Example.FromString(raw)
      f = example.features.feature
      keys.append((f["source_id"].bytes_list.value[0], f["sample_index"].int64_list.value[0]))
    assert keys == sorted(keys)


def test_stats_account_for_every_program(generated):
  _, out, reports = generated
  for variant, report in reports.items():
    assert report == {**json.loads((out / variant / "stats.json").read_text())}
    assert report["programs_in"] == report["programs_out"] + sum(report["skipped"].values())
    assert "programs out" in (out / variant / "stats.txt").read_text()
  assert len({r["programs_in"] for r in reports.values()}) == 1
  shared = {"not_utf8": 3, "binary": 1, "empty": 1, "syntax_error": 1, "too_many_lines": 1,
            "contains_diff_token": 1, "duplicate_source_id": 1, "bad_json": 1,
            "no_python_block": 1}
  assert reports["baseline"]["skipped"] == shared
  for variant in ("lintseq", "lintseq_nolint"):
    assert {k: v for k, v in reports[variant]["skipped"].items() if k in shared} == shared
    edits = reports[variant]["edits_per_sequence"]
    assert edits["count"] == reports[variant]["sequences_out"]
    assert 1 <= edits["p50"] <= edits["p90"] <= edits["max"]


# What Flink, Spark and Dataflow runners are handed: the pipeline as a portable proto, submitted
# through Beam's Job API (here its embedded job service) and run by SDK workers over gRPC.
PORTABLE_RUNNER = ("--runner=PortableRunner", "--job_endpoint=embed", "--environment_type=LOOPBACK")


@pytest.mark.parametrize("pipeline_args", [
    ("--direct_num_workers=2", "--direct_running_mode=multi_processing"), PORTABLE_RUNNER,
], ids=["two_worker_processes", "portable_job_api"])
def test_other_workers_and_runners_give_identical_bytes(generated, tmp_path, pipeline_args):
  make_sources, out, _ = generated
  other = tmp_path / "out"
  pipeline.run(sources=make_sources(), output_dir=str(other), variants=("lintseq", "baseline"),
               pipeline_args=pipeline_args, **SETTINGS)
  for variant in ("lintseq", "baseline"):
    names = _shard_files(out, variant)
    assert names == _shard_files(other, variant)
    for name in names:
      a, b = (os.path.join(dataset.dataset_dir(str(d), variant), name) for d in (out, other))
      with open(a, "rb") as fa, open(b, "rb") as fb:
        assert fa.read() == fb.read(), name


def test_rerun_in_place_replaces_old_shards(generated, tmp_path):
  make_sources, _, _ = generated
  out = tmp_path / "out"
  settings = {**SETTINGS, "examples_per_shard": 1000}
  pipeline.run(sources=make_sources(), output_dir=str(out), variants=("baseline",),
               **{**SETTINGS, "examples_per_shard": 5})
  assert len(_shard_files(out, "baseline")) > 2
  # Files of the layout without a version folder, from an older data_gen, are removed too.
  legacy = ["editseq-train.tfrecord-00000-of-00001", *dataset.METADATA_FILES]
  for name in legacy:
    (out / "baseline" / name).write_text("stale")
  report = pipeline.run(sources=make_sources(), output_dir=str(out), variants=("baseline",),
                        **settings)["baseline"]
  assert _shard_files(out, "baseline") == [dataset.shard_filename("baseline", "train", 0, 1),
                                           dataset.shard_filename("baseline", "validation", 0, 1)]
  assert not any((out / "baseline" / name).exists() for name in legacy)
  assert sum(1 for _ in dataset.read_examples(str(out), "baseline")) == (
      report["splits"]["train"]["examples"])


def test_max_programs_takes_a_stable_sample(generated, tmp_path):
  make_sources, _, full = generated
  reports = pipeline.run(sources=make_sources(), output_dir=str(tmp_path), variants=("baseline",),
                         max_programs=10, **SETTINGS)
  report = reports["baseline"]
  # The sample is drawn among programs whose text passed the checks; the parse comes after.
  assert report["programs_out"] + report["skipped"].get("syntax_error", 0) == 10
  assert report["programs_in"] == full["baseline"]["programs_in"]
  assert report["skipped"]["over_max_programs"] == (
      full["baseline"]["programs_out"] + full["baseline"]["skipped"]["syntax_error"] - 10)


def test_each_program_is_parsed_once_for_all_variants(tmp_path):
  """The check reads the text; the parse (and compile) happens once per program in the
  worker, shared by the three variants and by LintSeq (in-process runner)."""
  data = tmp_path / "three.jsonl"
  rows = [{"instruction": f"Return {i}.", "response": f"def f():\n    return {i}\n"}
          for i in range(3)]
  data.write_text("".join(json.dumps(row) + "\n" for row in rows))
  programs.parse.cache_clear()
  pipeline.run(sources=[sources.JsonlSource([str(data)])], output_dir=str(tmp_path / "out"),
               **SETTINGS)
  assert programs.parse.cache_info().misses == 3


def test_time_cap_skips_slow_programs_for_lintseq_only(tmp_path):
  data = tmp_path / "mbpp.jsonl"
  with open(os.path.join(STDLIB, "textwrap.py")) as f:
    program = f.read()
  data.write_text(json.dumps({"instruction": "Wrap text.", "response": program}) + "\n")
  code = pipeline.main(["--output_dir", str(tmp_path / "out"), "--source", "jsonl",
                        "--input", str(data), "--time_limit_s", "1e-9", "--no_progress",
                        "--variants", "lintseq,baseline"])
  assert code == 0
  lint = json.loads((tmp_path / "out" / "lintseq" / "stats.json").read_text())
  base = json.loads((tmp_path / "out" / "baseline" / "stats.json").read_text())
  assert lint["skipped"] == {"timeout": 1} and lint["programs_out"] == 0
  assert not os.path.exists(os.path.join(dataset.dataset_dir(str(tmp_path / "out"), "lintseq"),
                                         "dataset_info.json"))
  assert base["programs_out"] == 1


@pytest.mark.parametrize("argv, message", [
    (["--output_dir", "OUT", "--num_sample", "3"], "unknown flag(s) --num_sample"),
    (["--output_dir", "OUT", "--source", "pytree"], "needs --input"),
    (["--output_dir", "OUT", "--variants", "lintseq,bogus"], "variants must be"),
    (["--output_dir", "OUT", "--variants", "lintseq,lintseq"], "without repeats"),
    (["--output_dir", "OUT", "--num_samples", "0"], "num_samples must be"),
    (["--output_dir", "OUT", "--direct_running_mode=multi_threading"], "multi_processing"),
    (["--output_dir", "OUT", "--source", "jsonl", "--input", "/no/such.jsonl"], "does not exist"),
])
def test_user_mistakes_are_one_line_errors(argv, message, capsys):
  assert pipeline.main(argv) == 2
  err = capsys.readouterr().err
  assert message in err and err.count("\n") == 1 and err.startswith("error: ")


DATAFLOW = ["--runner=DataflowRunner", "--project", "p", "--region", "us-central1",
            "--temp_location", "gs://b/t"]


@pytest.mark.parametrize("has_gcp_extras, message", [
    (False, "--runner=DataflowRunner needs Beam's Google Cloud extras on this machine: pip "
            "install 'apache-beam[gcp]=="),
    # With them, Beam's own checks of the options, in one line.
    (True, "Invalid GCS bucket (gs://b/t), given for the option: temp_location."),
])
def test_remote_runner_mistakes_are_one_line_errors_before_any_work(
    has_gcp_extras, message, capsys, monkeypatch, tmp_path):
  monkeypatch.setattr(pipeline, "_has_module", lambda name: has_gcp_extras)
  assert pipeline.main(["--output_dir", str(tmp_path / "out"), *DATAFLOW]) == 2
  err = capsys.readouterr().err
  assert message in err and err.count("\n") == 1 and err.startswith("error: "), err
  assert not (tmp_path / "out").exists()


def test_cli_help_and_exit_code():
  env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
  done = subprocess.run([sys.executable, "-m", "data_gen.pipeline", "--help"], env=env,
                        capture_output=True, text=True, check=True)
  assert "--instruction_key" in done.stdout and "Beam" in done.stdout
  done = subprocess.run([sys.executable, "-m", "data_gen.pipeline", "--output_dir", "x",
                         "--max_program_lines", "0"], env=env, capture_output=True, text=True)
  assert done.returncode == 2
  assert done.stderr.strip().splitlines()[-1].startswith("error: max_program_lines")
  assert "Traceback" not in done.stderr


def test_stats_distribution_matches_numpy_nearest_rank():
  import numpy as np
  from data_gen import stats
  rng = np.random.default_rng(0)
  for size in (1, 2, 7, 100, 1001):
    values = rng.integers(1, 60, size=size)
    histogram = collections.Counter(int(v) for v in values)
    got = stats.distribution(histogram)
    assert got["count"] == size and got["min"] == values.min() and got["max"] == values.max()
    assert got["mean"] == pytest.approx(values.mean(), abs=1e-3)
    for q in (50, 90, 99):
      assert got[f"p{q}"] == np.percentile(values, q, method="inverted_cdf")
  assert stats.distribution({}) == {"count": 0}


def test_cli_tfds_source_end_to_end(tmp_path):
  from tests.test_sources import _store_tfds_dataset
  rows = [{"question": f"Return {i} plus x.", "answer": f"```python\ndef f(x):\n    y = x + {i}\n"
                                                          f"    return y\n```"} for i in range(4)]
  _store_tfds_dataset(str(tmp_path / "tfds"), "tiny_instructions", rows)
  out = tmp_path / "out"
  assert pipeline.main(["--output_dir", str(out), "--source", "tfds", "--tfds_name",
                        "tiny_instructions", "--tfds_data_dir", str(tmp_path / "tfds"),
                        "--instruction_key", "question", "--response_key", "answer",
                        "--validation_fraction", "0", "--num_samples", "3", "--no_progress"]) == 0
  got = sorted(dataset.read_examples(str(out), "lintseq"),
               key=lambda r: (r["source_id"], r["sample_index"]))
  assert [(r["source_id"], r["sample_index"]) for r in got] == [
      (f"tfds:tiny_instructions:train:{i}", s) for i in range(4) for s in range(3)]
  assert all(lintseq.apply_diffs(edit_format.split_diffs(r["completion"])) == r["program"]
             for r in got)
  assert got[0]["instruction"] == "Return 0 plus x."


def test_text_variant_keeps_documents_as_they_are(tmp_path):
  """`--variants text` (pretraining documents): web text and code go through as read, markdown
  fences and all, never parsed; the text checks still skip what cannot be a record."""
  web = tmp_path / "web.jsonl"
  documents = ["A page about soup.\n\nStir well, then:\n```python\nprint('not extracted')\n```\n",
               "def broken(:\n  not python at all",
               "plain text, no newline at the end"]
  rows = [json.dumps({"text": d}) for d in documents]
  rows += [json.dumps({"text": "uses <|diff|> inside"}), json.dumps({"other": 1}), "{oops"]
  web.write_text("\n".join(rows) + "\n")
  tree = tmp_path / "code"
  tree.mkdir()
  shutil.copy(os.path.join(STDLIB, "colorsys.py"), tree / "colorsys.py")
  out = tmp_path / "out"
  reports = pipeline.run(
      sources=[sources.JsonlSource([str(web)], "", "text", raw=True), sources.PyTreeSource(
          str(tree))], output_dir=str(out), variants=("text", "baseline"),
      validation_fraction=0.0, examples_per_shard=10)
  records = list(dataset.read_examples(str(out), "text", "train"))
  with open(os.path.join(STDLIB, "colorsys.py")) as f:
    colorsys_text = f.read()
  assert sorted(r["program"] for r in records) == sorted(documents + [colorsys_text])
  assert all(r["completion"] == r["program"] and r["prompt"] == "" and r["num_edits"] == 1
             and r["variant"] == "text" for r in records)
  assert reports["text"]["skipped"] == {"contains_diff_token": 1, "missing_key": 1,
                                        "bad_json": 1}
  # The same documents as programs: only the Python file parses (the first page would have
  # been cut to its code block without raw=True).
  assert reports["baseline"]["skipped"]["syntax_error"] == 3
  assert [r["source_id"] for r in dataset.read_examples(str(out), "baseline")] == [
      "code:colorsys.py"]


def test_cli_raw_responses_and_text_variant(tmp_path):
  data = tmp_path / "docs.jsonl"
  data.write_text(json.dumps({"text": "Some ```python\nx = 1\n``` text.\n"}) + "\n")
  result = subprocess.run(
      [sys.executable, "-m", "data_gen.pipeline", "--output_dir", str(tmp_path / "out"),
       "--source", "jsonl", "--input", str(data), "--instruction_key", "", "--response_key",
       "text", "--raw_responses", "--variants", "text", "--validation_fraction", "0",
       "--no_progress"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  [record] = dataset.read_examples(str(tmp_path / "out"), "text")
  assert record["program"] == "Some ```python\nx = 1\n``` text.\n"
