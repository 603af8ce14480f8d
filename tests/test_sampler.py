"""DistributedBlobSampler without processes: exactly once, equal shares, resumable, windows.

Properties are checked with hypothesis over many lengths, replica counts,
batch sizes and drop_last. The sampler needs only ``len()`` (and a
``block_size`` for windows), so most tests use a stand-in for a reader. The
multi-rank tests (real torch.distributed) are in tests/test_ddp.py.
"""

from __future__ import annotations

import pickle
import re
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DistributedSampler

from tensorblob import BlobTypeError, InvalidArgumentError
from tensorblob._sampler import epoch_order
from tensorblob.data import DistributedBlobSampler

B = 4


# -- the sampler: exactly once, equal shares, resumable ------------------------------------


class Rows:
    """The least a reader needs for the sampler: len(), and a block size for windows."""

    def __init__(self, n: int, block_size: int = B) -> None:
        self.n = n
        self.block_size = block_size

    def __len__(self) -> int:
        return self.n


def samples(items: list) -> list[int]:
    """The indices of a rank's items (indices, or batches of them)."""
    return [i for item in items for i in (item if isinstance(item, list) else [item])]


def ranks(data, replicas: int, **kw) -> list[DistributedBlobSampler]:
    return [
        DistributedBlobSampler(data, num_replicas=replicas, rank=r, **kw) for r in range(replicas)
    ]


configs = st.fixed_dictionaries(
    {
        "n": st.integers(0, 300),
        "replicas": st.integers(1, 8),
        "batch_size": st.none() | st.integers(1, 20),
        "drop_last": st.booleans(),
        "shuffle": st.booleans(),
        "window_blocks": st.none() | st.integers(1, 5),
        "block_size": st.integers(1, 16),
        "seed": st.integers(0, 2**63 - 1),
        "epoch": st.integers(0, 1000),
    }
)


def build(c: dict) -> list[DistributedBlobSampler]:
    samplers = ranks(
        Rows(c["n"], c["block_size"]),
        c["replicas"],
        batch_size=c["batch_size"],
        drop_last=c["drop_last"],
        shuffle=c["shuffle"] or c["window_blocks"] is not None,
        window_blocks=c["window_blocks"],
        seed=c["seed"],
    )
    for s in samplers:
        s.set_epoch(c["epoch"])
    return samplers


def check_epoch(n: int, c: dict, per_rank: list[list[int]]) -> None:
    """Every index of range(n) exactly once across ranks, but for the documented padding or cut."""
    replicas, b = c["replicas"], c["batch_size"]
    counts = Counter(i for share in per_rank for i in share)
    assert len({len(share) for share in per_rank}) <= 1, "unequal shares"
    share = len(per_rank[0])
    if c["drop_last"]:
        full = n // replicas
        assert share == (full if b is None else full - full % b)
        assert max(counts.values(), default=1) == 1
        assert set(counts) <= set(range(n))
    else:
        assert share == -(-n // replicas)
        assert set(counts) == set(range(n))
        assert sum(counts.values()) - n == share * replicas - n < replicas  # the padding


@given(configs)
@settings(max_examples=300, deadline=None)
def test_every_index_once_per_epoch_across_ranks_in_equal_shares(c):
    samplers = build(c)
    items = [list(s) for s in samplers]
    assert [len(s) for s in samplers] == [len(i) for i in items]
    if c["batch_size"] is not None:
        for its in items:
            assert all(len(batch) == c["batch_size"] for batch in its[:-1])
            assert all(len(batch) == c["batch_size"] for batch in its) or not c["drop_last"]
    check_epoch(c["n"], c, [samples(i) for i in items])


@given(configs)
@settings(max_examples=200, deadline=None)
def test_the_order_depends_on_seed_and_epoch_only(c):
    first = [list(s) for s in build(c)]
    again = [list(s) for s in build(c)]
    assert first == again
    samplers = build(c)
    for s in samplers:
        list(s)  # a second pass of the same epoch: the same order
    assert [list(s) for s in samplers] == first


def test_another_epoch_or_seed_gives_another_order():
    data = Rows(1000)
    s = DistributedBlobSampler(data, seed=3)
    e0 = list(s)
    s.set_epoch(1)
    assert list(s) != e0
    assert list(DistributedBlobSampler(data, seed=4)) != e0
    assert sorted(s) == list(range(1000))


@pytest.mark.parametrize("n", [0, 1, 7, 64, 101])
@pytest.mark.parametrize("replicas", [1, 2, 3, 8])
@pytest.mark.parametrize("drop_last", [False, True])
def test_without_a_window_the_indices_are_distributed_samplers(n, replicas, drop_last):
    data = Rows(n)
    for rank in range(replicas):
        ours = DistributedBlobSampler(
            data, num_replicas=replicas, rank=rank, seed=9, drop_last=drop_last
        )
        theirs = DistributedSampler(
            data, num_replicas=replicas, rank=rank, seed=9, drop_last=drop_last
        )
        for epoch in (0, 5):
            ours.set_epoch(epoch)
            theirs.set_epoch(epoch)
            assert list(ours) == list(theirs)
            assert len(ours) == len(theirs)


def stop_at(samplers: list[DistributedBlobSampler], k: int) -> tuple[dict, list[list[int]]]:
    """Run every rank in lockstep for ``k`` items; return rank 0's state and what each consumed."""
    iters = [iter(s) for s in samplers]
    taken: list[list[int]] = [[] for _ in samplers]
    for _ in range(k):
        for r, it in enumerate(iters):
            taken[r].extend(samples([next(it)]))
    states = [s.state_dict() for s in samplers]
    assert all(st == states[0] for st in states), "ranks disagree on the state"
    return states[0], taken


@given(configs, st.data())
@settings(max_examples=200, deadline=None)
def test_a_state_taken_at_any_item_resumes_with_exactly_the_rest_of_the_epoch(c, data):
    full = len(build(c)[0])
    k = data.draw(st.integers(0, full), label="items consumed")
    state, taken = stop_at(build(c), k)
    # Resume, possibly with another world size and batch size: the order is the same.
    c2 = dict(c)
    c2["replicas"] = data.draw(st.integers(1, 8), label="replicas on resume")
    c2["batch_size"] = data.draw(st.none() | st.integers(1, 20), label="batch_size on resume")
    resumed = build(c2)
    for s in resumed:
        s.load_state_dict(state)
        s.set_epoch(state["epoch"])  # the loop sets the epoch it resumes: nothing is lost
    rest = [samples(list(s)) for s in resumed]
    order = epoch_order(
        c["n"],
        c["seed"],
        c["epoch"],
        shuffle=c["shuffle"] or c["window_blocks"] is not None,
        block=c["block_size"] if c["window_blocks"] else None,
        window=c["window_blocks"],
    ).tolist()
    position = state["position"]
    consumed = {i for share in taken for i in share}
    assert consumed == set(order[:position])
    again = Counter(i for share in rest for i in share)
    assert set(again) <= set(order[position:])
    if not c["drop_last"]:
        assert set(again) == set(order[position:])
    assert max(again.values(), default=1) == 1 or not c["drop_last"]
    assert len({len(share) for share in rest}) <= 1
    end = min(position + len(rest[0]) * c2["replicas"], c["n"])
    for s in resumed:  # the state at the end of the resumed pass
        assert s.state_dict()["position"] == end


@given(configs, st.data())
@settings(max_examples=100, deadline=None)
def test_state_dict_round_trips_through_load_state_dict(c, data):
    samplers = build(c)
    k = data.draw(st.integers(0, len(samplers[0])))
    state, _ = stop_at(samplers, k)
    other = build(c)[0]
    other.load_state_dict(state)
    assert other.state_dict() == state
    assert pickle.loads(pickle.dumps(state)) == state


def test_a_resumed_epoch_keeps_the_length_it_was_drawn_from_after_the_blob_grew():
    data = Rows(50)
    s = DistributedBlobSampler(data, num_replicas=2, rank=0, seed=1)
    s.set_epoch(3)
    full = list(s)
    it = iter(s)
    head = [next(it) for _ in range(10)]
    state = s.state_dict()
    assert state["length"] == 50
    assert state["position"] == 20
    data.n = 80  # the collector appended meanwhile
    resumed = DistributedBlobSampler(data, num_replicas=2, rank=0, seed=1)
    resumed.load_state_dict(state)
    resumed.set_epoch(3)
    assert head + list(resumed) == full
    resumed.set_epoch(4)  # the next epoch takes the new length
    assert len(list(resumed)) == 40


def test_the_length_is_pinned_for_every_pass_of_an_epoch_until_set_epoch():
    data = Rows(10)
    s = DistributedBlobSampler(data, shuffle=False)
    assert list(s) == list(range(10))
    data.n = 12
    assert list(s) == list(range(10))
    s.set_epoch(1)
    assert len(s) == 12
    assert list(s) == list(range(12))


def test_a_finished_epoch_resumes_to_nothing_and_the_next_epoch_is_whole():
    data = Rows(9)
    s = DistributedBlobSampler(data, num_replicas=2, rank=1, batch_size=2)
    list(s)
    state = s.state_dict()
    assert state["position"] == 9
    again = DistributedBlobSampler(data, num_replicas=2, rank=1, batch_size=2)
    again.load_state_dict(state)
    assert list(again) == []
    assert len(list(again)) == 3  # a later pass of the same epoch is whole again
    again.set_epoch(1)
    assert len(list(again)) == 3


# -- the block-window shuffle --------------------------------------------------------------


def windows(order: list[int], n: int, block: int, window: int) -> list[int]:
    """The window of each position of ``order``: cut it where ``window`` whole blocks are done.

    Fails if a window would need more than ``window`` blocks, or a block's
    rows were not all in one window.
    """
    rows_of = {b: min(block, n - b * block) for b in range(-(-n // block))}
    ids, current, seen, w = [], set(), 0, 0
    for i in order:
        blk = i // block
        if blk not in current:
            if len(current) == window and seen == sum(rows_of[x] for x in current):
                current, seen, w = set(), 0, w + 1
            current.add(blk)
            assert len(current) <= window, f"window {w} needs more than {window} blocks"
        seen += 1
        ids.append(w)
    assert seen == sum(rows_of[x] for x in current), "a block split across windows"
    return ids


@given(
    st.tuples(
        st.integers(0, 400),  # rows
        st.integers(1, 16),  # block size
        st.integers(1, 5),  # window, in blocks
        st.integers(1, 4),  # replicas
        st.booleans(),  # drop_last
        st.integers(0, 1000),  # seed
    )
)
@settings(max_examples=200, deadline=None)
def test_the_window_shuffle_reads_a_few_whole_blocks_at_a_time(case):
    n, block, window, replicas, drop_last, seed = case
    order = epoch_order(n, seed, 0, shuffle=True, block=block, window=window).tolist()
    assert sorted(order) == list(range(n))
    window_of = dict(zip(order, windows(order, n, block, window), strict=True))
    data = Rows(n, block)
    shares = [
        list(s) for s in ranks(data, replicas, window_blocks=window, seed=seed, drop_last=drop_last)
    ]
    check_epoch(n, {"replicas": replicas, "batch_size": None, "drop_last": drop_last}, shares)
    padded = not drop_last and n % replicas
    for share in shares:  # every rank moves through the windows in order, never back
        ids = [window_of[i] for i in share[: len(share) - 1 if padded else None]]
        assert ids == sorted(ids)


def test_the_window_shuffle_still_shuffles_blocks_and_rows():
    data = Rows(4096, block_size=64)
    order = list(DistributedBlobSampler(data, window_blocks=4, seed=2))
    assert order != sorted(order)
    first_blocks = [i // 64 for i in order[:256]]
    assert len(set(first_blocks)) == 4
    assert set(first_blocks) != {0, 1, 2, 3}
    assert first_blocks != sorted(first_blocks)


# -- bad input ---------------------------------------------------------------------------


class NoLen:
    block_size = 4


SAMPLER_ARGS = [
    # (keyword arguments, error class, fragment of the message)
    ({"data": NoLen()}, BlobTypeError, "data must be a reader with len()"),
    ({"num_replicas": "2"}, BlobTypeError, "num_replicas must be an int, got str"),
    ({"num_replicas": True}, BlobTypeError, "num_replicas must be an int, got bool"),
    ({"num_replicas": 0}, InvalidArgumentError, "num_replicas=0"),
    ({"rank": 1.0}, BlobTypeError, "rank must be an int, got float"),
    ({"rank": 2, "num_replicas": 2}, InvalidArgumentError, "rank=2: must be in [0, 2)"),
    ({"rank": -1}, InvalidArgumentError, "rank=-1"),
    ({"shuffle": 1}, BlobTypeError, "shuffle must be True or False, got int"),
    ({"shuffle": None}, BlobTypeError, "shuffle must be True or False"),
    ({"seed": "0"}, BlobTypeError, "seed must be an int, got str"),
    ({"seed": -1}, InvalidArgumentError, "seed=-1"),
    ({"seed": 2**63}, InvalidArgumentError, "seed=9223372036854775808"),
    ({"drop_last": "no"}, BlobTypeError, "drop_last must be True or False"),
    ({"batch_size": 0}, InvalidArgumentError, "batch_size=0"),
    ({"batch_size": 2.0}, BlobTypeError, "batch_size must be an int, got float"),
    ({"window_blocks": 0}, InvalidArgumentError, "window_blocks=0"),
    ({"window_blocks": "4"}, BlobTypeError, "window_blocks must be an int"),
    ({"window_blocks": 2, "shuffle": False}, InvalidArgumentError, "needs shuffle=True"),
    ({"window_blocks": 2, "data": [1, 2, 3]}, InvalidArgumentError, "data has no block_size"),
]


@pytest.mark.parametrize(("kwargs", "cls", "fragment"), SAMPLER_ARGS)
def test_bad_sampler_arguments_raise_errors_naming_them(kwargs, cls, fragment):
    kwargs = dict(kwargs)
    data = kwargs.pop("data", Rows(10))
    with pytest.raises(cls) as info:
        DistributedBlobSampler(data, **kwargs)
    assert fragment in str(info.value)
    assert isinstance(info.value, TypeError if cls is BlobTypeError else ValueError)


@pytest.mark.parametrize(
    ("epoch", "cls", "fragment"),
    [
        ("1", BlobTypeError, "epoch must be an int, got str"),
        (1.0, BlobTypeError, "epoch must be an int, got float"),
        (False, BlobTypeError, "epoch must be an int, got bool"),
        (-1, InvalidArgumentError, "epoch=-1"),
    ],
)
def test_bad_epochs_are_refused(epoch, cls, fragment):
    s = DistributedBlobSampler(Rows(10))
    with pytest.raises(cls, match=re.escape(fragment)):
        s.set_epoch(epoch)
    assert s.epoch == 0


def good_state() -> dict:
    s = DistributedBlobSampler(Rows(10), num_replicas=2, rank=0)
    next(iter(s))
    return s.state_dict()


@pytest.mark.parametrize(
    ("change", "cls", "fragment"),
    [
        ({"epoch": "1"}, BlobTypeError, "state['epoch'] must be an int, got str"),
        ({"epoch": -2}, InvalidArgumentError, "state['epoch']=-2"),
        ({"length": "10"}, BlobTypeError, "state['length'] must be an int, got str"),
        ({"length": 11}, InvalidArgumentError, "drawn from 11 rows but data has 10"),
        ({"position": 11}, InvalidArgumentError, "state['position']=11: must be in [0, 11)"),
        ({"position": -1}, InvalidArgumentError, "state['position']=-1"),
        ({"position": 1, "length": None}, InvalidArgumentError, "state['position']=1"),
        ({"version": 2}, InvalidArgumentError, "state: version 2"),
        ({"seed": 1}, InvalidArgumentError, "state: seed=1 but this sampler has seed=0"),
        ({"shuffle": False}, InvalidArgumentError, "state: shuffle=False"),
        ({"window_blocks": 2}, InvalidArgumentError, "state: window_blocks=2"),
        ({"drop_last": True}, InvalidArgumentError, "state: drop_last=True"),
        ({"position": None}, BlobTypeError, "state['position'] must be an int, got NoneType"),
        ({"version": True}, BlobTypeError, "state['version'] must be an int, got bool"),
        ({"seed": "0"}, BlobTypeError, "state: seed='0' is of type str"),
        ({"shuffle": 1}, BlobTypeError, "state: shuffle=1 is of type int"),
        ({"drop_last": 0}, BlobTypeError, "state: drop_last=0 is of type int"),
        ({"window_blocks": 0.0}, BlobTypeError, "state: window_blocks=0.0 is of type float"),
        ({"spare": 1}, InvalidArgumentError, "state: unknown keys [\"'spare'\"]"),
    ],
)
def test_bad_states_are_refused_and_change_nothing(change, cls, fragment):
    state = {**good_state(), **change}
    s = DistributedBlobSampler(Rows(10), num_replicas=2, rank=0)
    before = s.state_dict()
    with pytest.raises(cls, match=re.escape(fragment)):
        s.load_state_dict(state)
    assert s.state_dict() == before


def test_a_state_missing_keys_or_not_a_mapping_is_refused():
    s = DistributedBlobSampler(Rows(10))
    with pytest.raises(BlobTypeError, match="state must be a mapping, got list"):
        s.load_state_dict([])
    state = good_state()
    del state["position"], state["seed"]
    with pytest.raises(InvalidArgumentError, match=re.escape("missing keys ['position', 'seed']")):
        s.load_state_dict(state)


def test_data_shorter_than_the_pinned_length_is_refused_when_iterated():
    data = Rows(10)
    s = DistributedBlobSampler(data)
    list(s)
    data.n = 9
    with pytest.raises(InvalidArgumentError, match="drawn from 10 rows but data now has 9"):
        list(s)
    with pytest.raises(InvalidArgumentError, match="drawn from 10 rows"):
        len(s)
