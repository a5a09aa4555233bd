"""Token ids -> (inputs, targets) batches: streams for truncated BPTT, or padded sentences / lines."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from charlm.errors import DataError

IGNORE_INDEX = -100  # target value the loss skips (sentence padding, unscored targets)


def masked_targets(y: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """int64 targets with IGNORE_INDEX where bit 0 of the mask (charlm/tasks/masks.py) is clear."""
    y = y.astype(np.int64, copy=False)
    if mask is None:
        return y
    return np.where(np.asarray(mask) & 1, y, IGNORE_INDEX)


@dataclass(frozen=True)
class Cursor:
    """Where training stands in the data: the epoch, and the offset within it.

    For streams the offset counts tokens along each stream; for sentences it counts batches.
    Saved in every checkpoint so that a resumed run reads exactly the batches it would have.
    """

    epoch: int = 0
    position: int = 0


class StreamBatcher:
    """The corpus as `streams` contiguous columns, read window by window.

    With 26 tokens a..z, 4 streams (batch 2 per process, 2 processes) and windows of 3:

        stream:   0        1        2        3          each stream is a contiguous slice;
                  a        g        m        s          the targets are the same slices
                  b        h        n        t          shifted one token down.
                  c        i        o        u          (y is dropped: 25 predictable tokens
                  d        j        p        v           do not split evenly into 4 streams)
                  e        k        q        w
                  f        l        r        x
                  ^rank 0 reads 0-1 ^rank 1 reads 2-3

    Window k of rank r is rows [k*3, k*3+3) of that rank's columns, shaped (seq_len, batch):
    time-major, as the fused RNN kernels want. The hidden state of window k is the right
    starting state for window k+1, so it is carried (detached) between windows. Every
    predictable token is a target exactly once per epoch, apart from the < streams tail.
    """

    carries_state = True

    def __init__(
        self,
        ids: np.ndarray,
        batch_size: int,
        seq_len: int,
        rank: int = 0,
        world_size: int = 1,
        mask: np.ndarray | None = None,
    ) -> None:
        self.batch_size, self.seq_len = batch_size, seq_len
        self.streams = batch_size * world_size
        self.stream_len = (len(ids) - 1) // self.streams
        if self.stream_len < 1:
            raise DataError(
                f"the data has {len(ids)} tokens, too few for {self.streams} parallel streams; "
                "use a smaller train.batch_size or more text"
            )
        usable = self.streams * self.stream_len
        # Views on the (memory-mapped) ids: nothing is read until a window is sliced out.
        rows = slice(rank * batch_size, (rank + 1) * batch_size)
        self._inputs = ids[:usable].reshape(self.streams, self.stream_len)[rows]
        self._targets = ids[1 : usable + 1].reshape(self.streams, self.stream_len)[rows]
        self._mask = None  # bit 0 clear: the target is input only (charlm/tasks/masks.py)
        if mask is not None:
            self._mask = mask[1 : usable + 1].reshape(self.streams, self.stream_len)[rows]

    @property
    def steps_per_epoch(self) -> int:
        return -(-self.stream_len // self.seq_len)

    @property
    def tokens_per_epoch(self) -> int:
        return self.stream_len * self.batch_size

    def batch(
        self, cursor: Cursor, length: int | None = None
    ) -> tuple[np.ndarray, np.ndarray, Cursor]:
        """The window at `cursor` (length tokens, default seq_len) and the cursor after it."""
        start = cursor.position
        end = min(start + (length or self.seq_len), self.stream_len)
        x = np.ascontiguousarray(self._inputs[:, start:end].T)  # (seq_len, batch)
        y = np.ascontiguousarray(self._targets[:, start:end].T)
        if self._mask is not None:
            y = masked_targets(y, self._mask[:, start:end].T)
        after = Cursor(cursor.epoch + 1, 0) if end >= self.stream_len else Cursor(cursor.epoch, end)
        return x, y, after


class SpanBatcher:
    """Examples ids[start:stop], each from a zero state, padded into batches (time-major).

    Padded targets are IGNORE_INDEX so the loss never sees them, and so are the targets a mask
    leaves out. The order is a fresh seeded shuffle each epoch (`seed` an int or a tuple).
    """

    carries_state = False
    unit = "examples"

    def __init__(
        self,
        ids: np.ndarray,
        starts: np.ndarray,
        stops: np.ndarray,
        batch_size: int,
        seed: int | tuple[int, ...] = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        mask: np.ndarray | None = None,
    ) -> None:
        self._ids, self._starts, self._stops, self._mask = ids, starts, stops, mask
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.seed, self.shuffle = seed, shuffle
        self.global_batch = batch_size * world_size
        if shuffle and len(starts) < self.global_batch:
            raise DataError(
                f"the data has {len(starts)} {self.unit}, fewer than one batch of "
                f"{self.global_batch}; use a smaller train.batch_size or more text"
            )
        self._order: tuple[int, np.ndarray] | None = None

    @property
    def sentences(self) -> int:
        return len(self._starts)

    @property
    def steps_per_epoch(self) -> int:
        if self.shuffle:  # training: whole batches only, so every rank gets the same shape
            return self.sentences // self.global_batch
        return -(-self.sentences // self.global_batch)

    @property
    def tokens_per_epoch(self) -> int:
        return int((self._stops - self._starts - 1).sum())

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if self._order is None or self._order[0] != epoch:
            if self.shuffle:
                seed = [*np.atleast_1d(self.seed).tolist(), epoch]
                order = np.random.default_rng(seed).permutation(self.sentences)
            else:
                order = np.arange(self.sentences)
            self._order = (epoch, order)
        return self._order[1]

    def batch(
        self, cursor: Cursor, length: int | None = None
    ) -> tuple[np.ndarray, np.ndarray, Cursor]:
        order = self._epoch_order(cursor.epoch)
        first = cursor.position * self.global_batch + self.rank * self.batch_size
        chosen = order[first : first + self.batch_size]
        # With several processes the last unshuffled batch can leave a rank nothing: (0, 0).
        longest = int((self._stops[chosen] - self._starts[chosen]).max()) - 1 if len(chosen) else 0
        x = np.zeros((longest, len(chosen)), dtype=np.int64)
        y = np.full((longest, len(chosen)), IGNORE_INDEX, dtype=np.int64)
        for column, sentence in enumerate(chosen):
            span = slice(self._starts[sentence], self._stops[sentence])
            tokens = self._ids[span]
            x[: len(tokens) - 1, column] = tokens[:-1]
            mask = None if self._mask is None else self._mask[span][1:]
            y[: len(tokens) - 1, column] = masked_targets(tokens[1:], mask)
        following = cursor.position + 1
        if following >= self.steps_per_epoch:
            return x, y, Cursor(cursor.epoch + 1, 0)
        return x, y, Cursor(cursor.epoch, following)


class SentenceBatcher(SpanBatcher):
    """Whole sentences (SENTENCE_START ... SENTENCE_END), padded into batches.

    The WildML tutorial trains on one sentence at a time from a zero state; batch_size=1 is
    exactly that. Larger batches pad the shorter sentences.
    """

    unit = "sentences"

    def __init__(
        self,
        ids: np.ndarray,
        start_id: int,
        end_id: int,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
    ) -> None:
        ids = np.asarray(ids)
        starts = np.flatnonzero(ids == start_id)
        ends = np.flatnonzero(ids == end_id)
        # Pair each start with the first end after it; drop starts that never end.
        idx = np.searchsorted(ends, starts)
        keep = idx < len(ends)
        starts, stops = starts[keep], ends[idx[keep]] + 1
        # A start whose end lies beyond the next start is a broken sentence: skip it.
        if len(starts) > 1:
            ok = np.ones(len(starts), dtype=bool)
            ok[:-1] = stops[:-1] <= starts[1:]
            starts, stops = starts[ok], stops[ok]
        if len(starts) == 0:
            raise DataError("the data has no complete sentences (SENTENCE_START ... SENTENCE_END)")
        super().__init__(ids, starts, stops, batch_size, seed, rank, world_size, shuffle)


class LineBatcher(SpanBatcher):
    """One example per line (char level): each line with its newline, from a zero state.

    Line i is the characters after the previous newline up to and including its own; the
    newline is the last target, so the model learns where a line ends. A last line without a
    newline is kept; lines of a single character predict nothing and are dropped.
    """

    unit = "lines"

    def __init__(self, ids: np.ndarray, newline_id: int, batch_size: int, **options: Any) -> None:
        """`options`: SpanBatcher's seed, rank, world_size, shuffle and mask."""
        ids = np.asarray(ids)
        stops = np.flatnonzero(ids == newline_id) + 1
        if len(stops) == 0 or stops[-1] != len(ids):
            stops = np.append(stops, len(ids))
        starts = np.concatenate([[0], stops[:-1]])
        keep = stops - starts >= 2
        if not keep.any():
            raise DataError("the data has no line of two or more characters to learn from")
        starts, stops = starts[keep], stops[keep]
        super().__init__(ids, starts, stops, batch_size, **options)


def to_tensors(
    x: np.ndarray, y: np.ndarray, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """int64 tensors on `device`; pinned and non-blocking when copying to a GPU."""
    inputs = torch.from_numpy(x.astype(np.int64, copy=False))
    targets = torch.from_numpy(y.astype(np.int64, copy=False))
    if device.type == "cuda":
        inputs, targets = inputs.pin_memory(), targets.pin_memory()
        return inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
    return inputs.to(device), targets.to(device)


Batcher = StreamBatcher | SentenceBatcher | LineBatcher
BATCHINGS = ("stream", "sentence", "lines")  # data.batching's choices (config.py)


def make_batcher(
    batching: str,
    ids: np.ndarray,
    batch_size: int,
    seq_len: int,
    special_ids: dict[str, int | None],
    *,
    rank: int = 0,
    world_size: int = 1,
    mask: np.ndarray | None = None,
    seed: int | tuple[int, ...] | None = None,
) -> Batcher:
    """The one place `data.batching` becomes a batcher, for training and evaluation alike.

    `seed` None: the examples in order, unshuffled (evaluation); else shuffled by that seed
    (training). `special_ids`: "start" and "end" for sentences, "newline" for lines.
    """
    shuffle = seed is not None
    seed = 0 if seed is None else seed
    if batching == "lines":
        newline = special_ids["newline"]
        assert newline is not None
        return LineBatcher(
            ids, newline, batch_size, seed=seed, rank=rank, world_size=world_size,
            shuffle=shuffle, mask=mask,
        )  # fmt: skip
    if batching == "sentence":
        start, end = special_ids["start"], special_ids["end"]
        assert start is not None and end is not None
        return SentenceBatcher(
            ids, start, end, batch_size, seed=seed, rank=rank, world_size=world_size,
            shuffle=shuffle,
        )  # fmt: skip
    if batching != "stream":
        raise ValueError(f"data.batching: unknown batching '{batching}'")
    return StreamBatcher(ids, batch_size, seq_len, rank, world_size, mask=mask)
