"""data_gen.stages: a stage is reused only while its key and every output file are unchanged."""
import json

from data_gen import stages


def _make(folder, key, text="out"):
  stage = stages.Stage("demo", folder, key)
  stage.begin()
  (folder / "sub").mkdir(parents=True, exist_ok=True)
  (folder / "sub" / "a.txt").write_text(text)
  stage.record()
  return stage


def test_reused_with_the_same_key_and_outputs(tmp_path):
  _make(tmp_path, stages.digest({"steps": 3}, "input"))
  again = stages.Stage("demo", tmp_path, stages.digest({"steps": 3}, "input"))
  assert again.reusable()
  assert "demo: reusing" in again.reused_message()
  record = json.loads((tmp_path / stages.RECORD_FILE).read_text())
  assert record["files"] == {"sub/a.txt": stages.file_digest(tmp_path / "sub" / "a.txt")}


def test_a_changed_input_edited_or_deleted_output_or_unfinished_run_is_not_reused(tmp_path):
  key = stages.digest({"steps": 3}, "input")
  _make(tmp_path, key)
  assert not stages.Stage("demo", tmp_path, stages.digest({"steps": 4}, "input")).reusable()
  assert not stages.Stage("demo", tmp_path, stages.digest({"steps": 3}, "input2")).reusable()
  (tmp_path / "sub" / "a.txt").write_text("edited")
  assert not stages.Stage("demo", tmp_path, key).reusable()
  _make(tmp_path, key)
  (tmp_path / "sub" / "extra.txt").write_text("new file")
  assert not stages.Stage("demo", tmp_path, key).reusable()
  (tmp_path / "sub" / "extra.txt").unlink()
  assert stages.Stage("demo", tmp_path, key).reusable()
  stages.Stage("demo", tmp_path, key).begin()  # a rerun that stops half way
  assert not stages.Stage("demo", tmp_path, key).reusable()
  assert not stages.Stage("demo", tmp_path / "missing", key).reusable()


def test_digests_follow_content(tmp_path):
  assert stages.digest({"a": 1, "b": 2}) == stages.digest({"b": 2, "a": 1})
  assert stages.digest(1) != stages.digest("1")
  assert stages.code_digest("editseq") == stages.code_digest("editseq")
  assert stages.code_digest("editseq") != stages.code_digest("eval")
