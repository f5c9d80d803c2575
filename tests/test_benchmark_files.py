"""The evalplus release files fetched on first use (eval/benchmark_files.py), against a local HTTP
server that serves copies of ../shared/data's files: verified download into the cache, reuse,
corrupted copies and an unreachable server."""
import functools
import http.server
import json
import shutil
import socket
import subprocess
import sys
import threading

import pytest

from eval import benchmark_files, benchmarks, execute

from .conftest import REPO_ROOT, SHARED_DATA

RELEASES = benchmark_files.RELEASE_FILES
pytestmark = pytest.mark.skipif(
    not all((SHARED_DATA / r.name).exists() for r in RELEASES.values()),
    reason="evalplus release files not in ../shared/data")


class _Mirror:
  """A folder served over HTTP on 127.0.0.1, counting the requests it answers."""

  def __init__(self, folder):
    self.folder, self.requests = folder, []
    mirror = self

    class Handler(http.server.SimpleHTTPRequestHandler):
      def log_message(self, *args):
        mirror.requests.append(self.path)

    self.server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
    self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
    self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
    self.thread.start()

  def close(self):
    self.server.shutdown()
    self.server.server_close()
    self.thread.join()


@pytest.fixture
def mirror(tmp_path, monkeypatch):
  folder = tmp_path / "mirror"
  folder.mkdir()
  for release in RELEASES.values():
    shutil.copy(SHARED_DATA / release.name, folder / release.name)
  server = _Mirror(folder)
  monkeypatch.setenv("EDITSEQ_CACHE", str(tmp_path / "cache"))
  monkeypatch.setenv(benchmark_files.MIRROR_ENV, server.url)
  yield server
  server.close()


def _cache_files(tmp_path):
  folder = tmp_path / "cache" / "evalplus"
  return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def _unreachable_url():
  with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
    s.bind(("127.0.0.1", 0))
    return f"http://127.0.0.1:{s.getsockname()[1]}/"


def test_pinned_sums_are_those_of_the_release_files():
  for release in RELEASES.values():
    assert benchmark_files.sha256_of(SHARED_DATA / release.name) == release.sha256
    assert release.url.startswith("https://github.com/evalplus/") and release.tag in release.url
    assert release.url.endswith("/" + release.name)


def test_source_url_follows_the_mirror(monkeypatch):
  release = RELEASES["mbpp_plus"]
  monkeypatch.delenv(benchmark_files.MIRROR_ENV, raising=False)
  assert benchmark_files.source_url(release) == release.url
  monkeypatch.setenv(benchmark_files.MIRROR_ENV, "http://mirror.example/evalplus/")
  assert benchmark_files.source_url(release) == "http://mirror.example/evalplus/MbppPlus.jsonl.gz"


def test_first_use_downloads_verified_then_reuses(mirror, tmp_path):
  he = benchmarks.load_benchmark("humaneval_plus", progress=False)
  mbpp = benchmarks.load_benchmark("mbpp_plus", progress=False)
  assert (len(he), len(mbpp)) == (164, 378)
  assert he == benchmarks.load_benchmark("humaneval_plus",
                                         str(SHARED_DATA / "HumanEvalPlus.jsonl.gz"))
  assert sorted(mirror.requests) == ["/HumanEvalPlus.jsonl.gz", "/MbppPlus.jsonl.gz"]
  assert _cache_files(tmp_path) == ["HumanEvalPlus-v0.1.10.jsonl.gz", "MbppPlus-v0.2.0.jsonl.gz"]
  for name, release in RELEASES.items():
    cached = tmp_path / "cache" / "evalplus" / release.cached_name
    assert benchmark_files.sha256_of(cached) == release.sha256
    assert benchmark_files.fetch(name, progress=False) == cached
  benchmarks.load_benchmark("mbpp_plus", progress=False)
  assert len(mirror.requests) == 2  # served from the cache since


def test_corrupted_download_is_one_error_and_leaves_nothing(mirror, tmp_path):
  served = mirror.folder / "MbppPlus.jsonl.gz"
  data = bytearray(served.read_bytes())
  data[len(data) // 2] ^= 0xFF
  served.write_bytes(bytes(data))
  with pytest.raises(benchmarks.BenchmarkError, match="sha256") as error:
    benchmarks.load_benchmark("mbpp_plus", progress=False)
  assert "--data_path" in str(error.value) and "\n" not in str(error.value)
  assert mirror.requests == ["/MbppPlus.jsonl.gz"]
  assert _cache_files(tmp_path) == []


def test_a_damaged_cached_file_is_fetched_again(mirror, tmp_path):
  path = benchmark_files.fetch("humaneval_plus", progress=False)
  path.write_bytes(path.read_bytes()[:1000])
  assert benchmark_files.fetch("humaneval_plus", progress=False) == path
  assert benchmark_files.sha256_of(path) == RELEASES["humaneval_plus"].sha256
  assert len(mirror.requests) == 2 and _cache_files(tmp_path) == [path.name]


def test_missing_file_on_the_mirror(mirror, tmp_path):
  (mirror.folder / "HumanEvalPlus.jsonl.gz").unlink()
  with pytest.raises(benchmarks.BenchmarkError, match="cannot download .*HTTP 404.*--data_path"):
    benchmarks.load_benchmark("humaneval_plus", progress=False)
  assert _cache_files(tmp_path) == []


def test_offline_data_path_needs_no_server(tmp_path, monkeypatch):
  monkeypatch.setenv("EDITSEQ_CACHE", str(tmp_path / "cache"))
  monkeypatch.setenv(benchmark_files.MIRROR_ENV, _unreachable_url())
  problems = benchmarks.load_benchmark("mbpp_plus", str(SHARED_DATA / "MbppPlus.jsonl.gz"))
  assert len(problems) == 378 and _cache_files(tmp_path) == []


def test_unreachable_server_is_one_line_naming_data_path(tmp_path):
  samples = tmp_path / "samples.jsonl"
  samples.write_text(json.dumps({"task_id": "HumanEval/0", "completion": ""}) + "\n")
  env = {"PATH": "/usr/bin:/bin", "EDITSEQ_CACHE": str(tmp_path / "cache"),
         benchmark_files.MIRROR_ENV: _unreachable_url()}
  result = subprocess.run(
      [sys.executable, "-m", "eval.execute", "--benchmark", "humaneval_plus", "--samples",
       str(samples), "--output", str(tmp_path / "out.jsonl")],
      cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2, result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: cannot download"), result.stderr
  assert "--data_path" in lines[0] and "127.0.0.1" in lines[0]
  assert not (tmp_path / "out.jsonl").exists() and _cache_files(tmp_path) == []


def test_execute_cli_downloads_on_first_use(mirror, tmp_path, capsys):
  samples = tmp_path / "samples.jsonl"
  samples.write_text(json.dumps({"task_id": "Mbpp/2", "completion": "x = 1\n"}) + "\n")
  code = execute.main(["--benchmark", "mbpp_plus", "--samples", str(samples),
                       "--output", str(tmp_path / "out.jsonl"), "--task_range", "0:1",
                       "--workers", "1", "--unsafe_no_sandbox"])
  assert code == 0, capsys.readouterr().err
  assert "downloading MbppPlus.jsonl.gz v0.2.0" in capsys.readouterr().err
  assert mirror.requests == ["/MbppPlus.jsonl.gz"]
