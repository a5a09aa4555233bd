"""Scored positions and mask files: where a task is measured, and what the loss counts."""

from __future__ import annotations

import numpy as np
import pytest

from charlm.errors import DataError
from charlm.tasks.masks import groups, loss_mask, mask_bytes, read_mask, score_mask, write_mask
from charlm.tasks.synth import make_task


def test_score_mask_marks_the_key_after_each_cue_and_nothing_else():
    text = "Aab=A\nBba=B\nC"
    mask = score_mask(text, {"task": "lag"})
    assert [i for i in np.flatnonzero(mask)] == [4, 10]
    assert "".join(text[i] for i in np.flatnonzero(mask)) == "AB"


def test_score_mask_on_a_real_lag_task_finds_every_recall_and_only_recalls():
    _, valid, truth = make_task("lag", lag=7, length=100, valid_length=2000)
    mask = score_mask(valid, truth)
    assert mask.dtype == bool and len(mask) == len(valid)
    recalled = [valid[i] for i in np.flatnonzero(mask)]
    assert len(recalled) == valid[:-1].count("=")  # a cue on the last character has no target
    for i in np.flatnonzero(mask):
        assert valid[i - 1] == "=" and valid[i].isupper()
        if i >= 9:  # a whole line before it: the recalled key is the line's first character
            assert valid[i] == valid[i - 9]


@pytest.mark.parametrize("task", ["markov", "brackets"])
def test_tasks_without_a_scored_position_score_every_character(task):
    _, valid, truth = make_task(task, length=100, valid_length=300)
    assert score_mask(valid, truth).all()


def test_mask_bytes_keep_the_loss_bit_and_the_group_apart(tmp_path):
    scored = np.array([0, 1, 0, 1], dtype=bool)
    mask = mask_bytes(scored, loss=scored, group=5)
    assert loss_mask(mask).tolist() == [False, True, False, True]
    assert groups(mask).tolist() == [0, 5, 0, 5]
    everything = mask_bytes(scored, loss=np.ones(4, dtype=bool), group=3)
    assert loss_mask(everything).all() and groups(everything).tolist() == [0, 3, 0, 3]
    write_mask(tmp_path / "t.mask", mask)
    assert read_mask(tmp_path / "t.mask", 4).tolist() == mask.tolist()
    with pytest.raises(DataError, match="t.mask: 4 bytes but its text has 5 characters"):
        read_mask(tmp_path / "t.mask", 5)
