"""Per-op device time from JAX profiler traces: a real CPU trace, a device-shaped one, bad input."""
import gzip
import json

import jax
import jax.numpy as jnp
import pytest

from editseq.perf import profile_summary


def _write_trace(path, events):
  with gzip.open(path, "wt") as f:
    json.dump({"displayTimeUnit": "ns", "traceEvents": events}, f)


def _meta(kind, pid, name, tid=0):
  return {"ph": "M", "name": kind, "pid": pid, "tid": tid, "args": {"name": name}}


def test_reads_the_device_xla_ops_line_and_groups_by_op(tmp_path):
  # Two GPUs; device 0's "XLA Ops" line is read, not its stream (kernels) or module lines.
  events = [_meta("process_name", 1, "/host:CPU"), _meta("thread_name", 1, "python", 7),
            _meta("process_name", 2, "/device:GPU:0"), _meta("process_name", 3, "/device:GPU:1")]
  events += [_meta("thread_name", pid, name, tid) for pid in (2, 3)
             for tid, name in ((1, "XLA Modules"), (2, "XLA Ops"), (3, "Stream #20(Compute)"))]
  ops = [("fusion.1", 0, 100), ("fusion.2", 100, 50), ("cublas-gemm.3", 150, 300),
         ("loop_add_fusion.2.1", 500, 25), ("fusion.1", 1000, 100)]  # a 475 us gap before the last
  events += [{"ph": "X", "pid": pid, "tid": 2, "name": n, "ts": ts, "dur": d}
             for pid in (2, 3) for n, ts, d in ops]
  events += [{"ph": "X", "pid": 2, "tid": 1, "name": "jit_train_step", "ts": 0, "dur": 1100},
             {"ph": "X", "pid": 2, "tid": 3, "name": "nvjet_kernel", "ts": 150, "dur": 300},
             {"ph": "X", "pid": 1, "tid": 7, "name": "PjitFunction", "ts": 0, "dur": 5000}]
  _write_trace(tmp_path / "host.trace.json.gz", events)
  times = profile_summary.op_times(profile_summary.find_trace(tmp_path))
  assert times.source == "/device:GPU:0: XLA Ops"
  assert times.per_op == pytest.approx({"fusion": 250e-6, "cublas-gemm": 300e-6,
                                        "loop_add_fusion": 25e-6})
  assert times.counts == {"fusion": 3, "cublas-gemm": 1, "loop_add_fusion": 1}
  assert times.busy_s == pytest.approx(575e-6) and times.span_s == pytest.approx(1100e-6)
  text = profile_summary.format_summary(times, top=2)
  assert "busy 0.6 ms of a 1.1 ms span (52.3%)" in text
  assert text.splitlines()[3].split() == ["0.30", "52.2%", "1", "cublas-gemm"]
  assert text.splitlines()[-1].split()[-3:] == ["(1", "other", "ops)"]


def test_a_device_without_an_xla_ops_line_is_read_from_its_streams(tmp_path):
  events = [_meta("process_name", 2, "/device:GPU:0"), _meta("thread_name", 2, "XLA Modules", 1),
            _meta("thread_name", 2, "Stream #20(Compute)", 3)]
  events += [{"ph": "X", "pid": 2, "tid": 1, "name": "jit_step", "ts": 0, "dur": 500},
             {"ph": "X", "pid": 2, "tid": 3, "name": "nvjet_gemm", "ts": 10, "dur": 300},
             {"ph": "X", "pid": 2, "tid": 3, "name": "loop_fusion", "ts": 320, "dur": 100},
             # Library kernels are C++ functions: counted (cuDNN's backward helpers are a fifth
             # of its attention time on an H100), named without `void ` and their parameters.
             {"ph": "X", "pid": 2, "tid": 3, "ts": 430, "dur": 40,
              "name": "void cudnn::fusion::compute_dot_do_o<true, 64>(void const*, void*, "
                      "unsigned int)"},
             {"ph": "X", "pid": 2, "tid": 3, "name": "cudnn::fusion::qkv_tma_setup(void*)",
              "ts": 470, "dur": 5},
             {"ph": "X", "pid": 2, "tid": 3, "name": "k(f(x))", "ts": 480, "dur": 5}]
  _write_trace(tmp_path / "t.trace.json.gz", events)
  times = profile_summary.op_times(tmp_path / "t.trace.json.gz")
  assert times.source == "/device:GPU:0: Stream #20(Compute)"
  assert times.per_op == pytest.approx({
      "nvjet_gemm": 300e-6, "loop_fusion": 100e-6,
      "cudnn::fusion::compute_dot_do_o<true, 64>": 40e-6, "cudnn::fusion::qkv_tma_setup": 5e-6,
      "k": 5e-6})
  assert times.busy_s == pytest.approx(450e-6)


def test_reads_a_real_cpu_trace(tmp_path):
  f = jax.jit(lambda a, b: jnp.tanh(a @ b).sum())
  a = jnp.ones((256, 256))
  f(a, a).block_until_ready()
  with jax.profiler.trace(str(tmp_path)):
    for _ in range(3):
      f(a, a).block_until_ready()
  trace = profile_summary.find_trace(tmp_path)
  assert trace.name.endswith(".trace.json.gz")
  times = profile_summary.op_times(trace)
  assert "XLA CPU threads" in times.source
  assert 0 < times.busy_s <= times.span_s and times.total_s >= times.busy_s * 0.999
  assert not any("::" in op or op.startswith("end: ") for op in times.per_op)


def test_bad_paths_and_files_are_one_line_errors(tmp_path, capsys):
  assert profile_summary.main([str(tmp_path / "missing")]) == 2
  assert "no such file or folder" in capsys.readouterr().err
  assert profile_summary.main([str(tmp_path)]) == 2
  assert "no *.trace.json.gz below" in capsys.readouterr().err
  (tmp_path / "bad.trace.json.gz").write_text("not gzip")
  assert profile_summary.main([str(tmp_path)]) == 2
  assert "not a gzipped JSON trace" in capsys.readouterr().err
  _write_trace(tmp_path / "bad.trace.json.gz", [_meta("process_name", 1, "/host:CPU")])
  assert profile_summary.main([str(tmp_path / "bad.trace.json.gz")]) == 2
  assert "no op events" in capsys.readouterr().err
