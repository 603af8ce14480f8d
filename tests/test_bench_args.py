"""The argument parsing of scripts/bench.py --peers (no benchmark is run)."""

import importlib.util
import os
import sys

import pytest

SCRIPTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts")


def load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(SCRIPTS, f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def peers():
    return load("bench_peers")


def test_peer_list(peers):
    assert peers.parse_peer_list(None) == list(peers.PEER_KEYS)
    assert peers.parse_peer_list("all") == list(peers.PEER_KEYS)
    # tensorblob is always there, first; the rest keep the table's order
    assert peers.parse_peer_list("sqlite, lmdb") == ["tensorblob", "lmdb", "sqlite"]
    assert peers.parse_peer_list("tensorblob") == ["tensorblob"]
    with pytest.raises(SystemExit, match="unknown peer"):
        peers.parse_peer_list("lmdb,leveldb")


def test_workloads(peers):
    assert peers.parse_workloads(None) == list(peers.WORKLOAD_KEYS)
    assert peers.parse_workloads("scan,power") == ["power", "scan"]
    with pytest.raises(SystemExit, match="unknown workload"):
        peers.parse_workloads("reads")


def test_params(peers):
    full = peers.peer_params(False, None, None)
    assert (full.rows, full.reps) == (200_000, 3)
    quick = peers.peer_params(True, None, 2)
    assert quick.rows < full.rows
    assert quick.reps == 2
    with pytest.raises(SystemExit):
        peers.peer_params(False, 100, None)


def test_run_order_varies_each_peers_predecessor(peers):
    keys = list(peers.PEER_KEYS)
    for shift in range(len(peers.WORKLOAD_KEYS)):
        orders = [peers.run_order(keys, rep, shift) for rep in range(3)]
        for order in orders:
            assert sorted(order) == sorted(keys)
        seq = [x for order in orders for x in order]  # the runs, one after another
        for key in keys:
            before = [seq[i - 1] for i in range(1, len(seq)) if seq[i] == key]
            assert len(set(before)) == len(before), (shift, key, before)
        slots = [order.index("tensorblob") for order in orders]
        assert len(set(slots)) == len(slots), (shift, slots)
    # two peers alternate; one peer is just itself
    assert [peers.run_order(["a", "b"], rep) for rep in range(2)] == [["a", "b"], ["b", "a"]]
    assert peers.run_order(["a", "b", "c"], 0, 1) == ["c", "a", "b"]  # "a" in slot 1
    assert peers.run_order(["a"], 5, 3) == ["a"]


def test_every_peer_states_its_durability(peers):
    writes = [w.key for w in peers.WORKLOADS if w.key not in peers.READ_ONLY]
    for cls in peers.PEER_CLASSES:
        assert sorted(cls.dur) == sorted(writes), cls.key
        for ok, tag, text in cls.dur.values():
            assert isinstance(ok, bool)
            assert tag
            assert text


def test_flagged_cell_says_so(peers):
    c = peers.Cell("power", "h5py", [1.0, 2.0, 3.0], [], False, "not atomic", "...", 2.0, 0.5)
    assert peers.cell_text(c).startswith("✗ 2.00")
    assert "0.50x" in peers.cell_text(c)


def test_bench_parser():
    bench = load("bench")
    ap = bench.build_parser()
    assert ap.parse_args([]).peers is None
    assert ap.parse_args(["--peers"]).peers == "all"
    args = ap.parse_args(["--peers", "lmdb,sqlite", "--quick", "--no-install"])
    assert (args.peers, args.quick, args.no_install) == ("lmdb,sqlite", True, True)
