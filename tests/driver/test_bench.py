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
