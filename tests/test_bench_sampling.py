"""eval.perf.bench_sampling's choice of the generate() batches it times."""
import pytest

from eval.perf import bench_sampling


def test_every_batch_is_timed_unless_capped():
  assert bench_sampling.timed_batches(100, 16, 0) == list(range(0, 100, 16))
  assert bench_sampling.timed_batches(100, 16, 7) == list(range(0, 100, 16))  # 7 batches: all
  assert bench_sampling.timed_batches(100, 16, 50) == list(range(0, 100, 16))


@pytest.mark.parametrize("rows,batch,cap", [(480, 16, 6), (3280, 16, 10), (33, 4, 2), (9, 1, 3)])
def test_capped_batches_span_the_queue_evenly(rows, batch, cap):
  starts = bench_sampling.timed_batches(rows, batch, cap)
  every = list(range(0, rows, batch))
  assert len(starts) == cap and set(starts) <= set(every)
  assert starts[0] == 0 and starts[-1] == every[-1]  # first and last problems both sampled
  gaps = [(b - a) // batch for a, b in zip(starts, starts[1:])]
  assert min(gaps) >= 1 and max(gaps) - min(gaps) <= 1  # even spacing, rounding aside


def test_negative_cap_is_a_usage_error(capsys):
  with pytest.raises(SystemExit) as exit_info:
    bench_sampling._parse_args(["--hf_max_batches", "-1"])
  assert exit_info.value.code == 2
  assert "--hf_max_batches must be >= 0" in capsys.readouterr().err
