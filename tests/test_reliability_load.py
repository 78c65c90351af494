"""A bounded run of benchmarks/load.py (8 clients, 5 s, SQLite, one worker): zero errors,
zero lost versions, version numbers exactly 1..n per adapter under racing publishes."""

from __future__ import annotations

from benchmarks import load


def test_bounded_load_loses_nothing():
    rep = load.run(clients=8, duration=5.0, db="sqlite", workers=1, seed=1)
    print("\n" + load.table(rep))
    assert rep["errors"] == {} and rep["problems"] == []
    assert all(rep["ops"][op]["ok"] > 0 for op in load.OPS)
    # every acknowledged publish is one version; nothing else was published
    assert rep["versions"] == rep["acked_publishes"]
    assert rep["ops"]["publish"]["ok"] >= 4  # publishes raced on 4 shared names
