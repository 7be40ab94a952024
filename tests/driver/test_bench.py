"""graphc.bench: interleaved sessions do not spin-wait (a spinning idle pool steals the cores
from the session that runs next)."""

from __future__ import annotations


import pytest

import graphc.bench as bench_module
from graphc.runtime import session_options
from tests import CNN



def test_session_options_spinning_switch():
    with pytest.raises(RuntimeError):  # not set: onnxruntime's default (spinning) holds
        session_options(2).get_session_config_entry("session.intra_op.allow_spinning")
    assert session_options(2, spinning=False).get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_bench_opens_non_spinning_sessions_from_the_files(monkeypatch):
    seen = []
    real = bench_module.open_session

    def recording(model, threads=None, what="the model", spinning=True):
        seen.append((model, spinning))
        return real(model, threads, what, spinning)

    monkeypatch.setattr(bench_module, "open_session", recording)
    results = bench_module.bench([CNN, CNN], threads=1, batch=2, warmup=1, runs=3)
    assert seen == [(CNN, False), (CNN, False)]
    assert [r.runs for r in results] == [3, 3]


def test_bench_inputs_take_rows_on_each_batch_axis(tmp_path):
    """--data in natural layout (state [2, N, 16], sr 0-d): the first --batch rows along each
    input's batch axis, repeated along it when the data has fewer; synthetic ones likewise."""
    import numpy as np

    from graphc.model_io import load_model
    from tests.corpus.stateful_rnn import build_gru

    model = load_model(build_gru(tmp_path))
    rng = np.random.default_rng(0)
    x, h0 = rng.standard_normal((3, 5, 8)).astype(np.float32), rng.standard_normal((1, 3, 16)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, h0=h0, sr=np.array(16000))
    feeds = bench_module._feeds_for([model], tmp_path / "d.npz", {}, batch=2)
    np.testing.assert_array_equal(feeds["h0"], h0[:, :2])
    feeds = bench_module._feeds_for([model], tmp_path / "d.npz", {}, batch=5)
    np.testing.assert_array_equal(feeds["h0"], h0[:, [0, 1, 2, 0, 1]])
    np.testing.assert_array_equal(feeds["x"], x[[0, 1, 2, 0, 1]])
    assert feeds["sr"].shape == ()
    feeds = bench_module._feeds_for([model], None, {"time": (5,)}, batch=4)
    assert (feeds["x"].shape, feeds["h0"].shape, feeds["sr"]) == ((4, 5, 8), (1, 4, 16), 16000)


def _result(times):
    import numpy as np

    return bench_module.BenchResult("m", 1, float(np.percentile(times, 50)), float(np.percentile(times, 90)),
                                    len(times), tuple(times))


def test_speedup_interval_is_a_paired_bootstrap_of_the_median_ratio():
    import numpy as np

    rng = np.random.default_rng(1)
    burst = rng.exponential(3.0, 400)  # machine noise that hit both runs of a round
    same = _result(1.0 + burst)
    assert bench_module.speedup_interval(same, _result(1.0 + burst)) == (1.0, 1.0)  # paired: the bursts cancel
    shuffled = _result(rng.permutation(1.0 + burst))  # the same times, no longer paired with their rounds
    low, high = bench_module.speedup_interval(same, shuffled)
    assert low < 1.0 < high and high - low > 0.05
    base, faster = _result(2.0 + rng.normal(0, 0.1, 400)), _result(1.0 + rng.normal(0, 0.05, 400))
    low, high = bench_module.speedup_interval(base, faster)
    assert 1.9 < low < 2.0 < high < 2.1
    assert bench_module.speedup_interval(base, faster) == (low, high)  # fixed seed: the same times, the same interval
    one = bench_module.BenchResult("m", 1, 2.0, 2.0, 1, (2.0,))
    assert bench_module.speedup_interval(one, bench_module.BenchResult("m", 1, 1.0, 1.0, 1, (1.0,))) == (2.0, 2.0)


def test_bench_runs_more_rounds_for_min_seconds_up_to_max_runs_and_reports_the_interval():
    results = bench_module.bench([CNN, CNN], threads=1, warmup=1, runs=3, min_seconds=600.0, max_runs=40)
    assert [r.runs for r in results] == [40, 40] and all(len(r.times_ms) == 40 for r in results)
    assert "times_ms" not in results[0].as_dict() and results[0].as_dict()["runs"] == 40
    table = bench_module.bench_table(results)
    low, high = bench_module.speedup_interval(*results)
    assert "95% interval" in table and f"{low:.2f}-{high:.2f}x" in table
