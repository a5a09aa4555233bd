"""Batching: every token exactly once per epoch, ranks disjoint, sentences padded and masked."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from charlm.data.batching import IGNORE_INDEX, Cursor, SentenceBatcher, StreamBatcher


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(2, 400),
    batch=st.integers(1, 6),
    seq_len=st.integers(1, 20),
    world=st.integers(1, 3),
)
def test_streams_yield_every_target_once(n: int, batch: int, seq_len: int, world: int) -> None:
    ids = np.arange(n, dtype=np.int64)  # the id is the position, so targets name positions
    if (n - 1) // (batch * world) < 1:
        return
    seen: list[int] = []
    for rank in range(world):
        batcher = StreamBatcher(ids, batch, seq_len, rank, world)
        cursor = Cursor()
        for _ in range(batcher.steps_per_epoch):
            x, y, cursor = batcher.batch(cursor)
            assert x.shape == y.shape and x.shape[1] == batch and x.shape[0] <= seq_len
            assert np.array_equal(y, x + 1)  # the target is the next token
            seen.extend(y.ravel().tolist())
        assert cursor == Cursor(1, 0)  # exactly one epoch
    usable = (n - 1) // (batch * world) * batch * world
    assert sorted(seen) == list(range(1, usable + 1))


def test_windows_continue_each_stream() -> None:
    ids = np.arange(101)
    batcher = StreamBatcher(ids, batch_size=2, seq_len=5)
    x1, _, cursor = batcher.batch(Cursor())
    x2, _, _ = batcher.batch(cursor)
    assert np.array_equal(x2[0], x1[-1] + 1)  # the state carried from x1 fits x2


def sentences_stream(lengths: list[int], start: int = 1, end: int = 2) -> np.ndarray:
    out, word = [], 3
    for length in lengths:
        out.append(start)
        for _ in range(length):
            out.append(word)
            word += 1
        out.append(end)
    return np.array(out)


def test_sentence_batches_pad_and_mask() -> None:
    ids = sentences_stream([3, 1, 5, 2])
    batcher = SentenceBatcher(ids, 1, 2, batch_size=2, seed=0)
    assert batcher.sentences == 4 and batcher.steps_per_epoch == 2
    seen = set()
    cursor = Cursor()
    for _ in range(batcher.steps_per_epoch):
        x, y, cursor = batcher.batch(cursor)
        for column in range(x.shape[1]):
            real = y[:, column] != IGNORE_INDEX
            assert x[0, column] == 1  # every sentence starts at SENTENCE_START
            assert y[real, column][-1] == 2  # and its last target is SENTENCE_END
            assert not np.any(y[~real, column] != IGNORE_INDEX)
            seen.add(int(y[0, column]))
    assert len(seen) == 4 and cursor.epoch == 1


def test_sentence_order_is_seeded_and_ranks_are_disjoint() -> None:
    ids = sentences_stream([2] * 12)
    firsts = []
    for rank in range(2):
        batcher = SentenceBatcher(ids, 1, 2, batch_size=3, seed=5, rank=rank, world_size=2)
        x, _, _ = batcher.batch(Cursor())
        firsts.append(set(x[1].tolist()))
    assert not firsts[0] & firsts[1]
    a = SentenceBatcher(ids, 1, 2, batch_size=3, seed=5).batch(Cursor(epoch=1))[0]
    b = SentenceBatcher(ids, 1, 2, batch_size=3, seed=5).batch(Cursor(epoch=1))[0]
    c = SentenceBatcher(ids, 1, 2, batch_size=3, seed=5).batch(Cursor(epoch=2))[0]
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_a_rank_with_no_sentences_left_gets_an_empty_batch() -> None:
    ids = sentences_stream(
        [2, 3, 1]
    )  # 3 sentences over 2 ranks of 1: the second batch is one short
    batcher = SentenceBatcher(ids, 1, 2, batch_size=1, rank=1, world_size=2, shuffle=False)
    assert batcher.steps_per_epoch == 2
    x, y, _ = batcher.batch(Cursor(0, 1))
    assert x.shape == y.shape == (0, 0)
