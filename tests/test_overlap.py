"""overlap.py: voxel counts and Dice of two masks, checked by hand counts."""

import numpy as np
import pytest

from glioseg import overlap as O
from glioseg.evaluate import metrics as M


def test_counts_and_dice_by_hand():
    pred = np.zeros((4, 4, 4), bool)
    ref = np.zeros((4, 4, 4), bool)
    pred[0, 0, :3] = True        # 3 voxels
    ref[0, 0, 1:] = True         # 3 voxels, 2 shared
    c = O.confusion_counts(pred, ref)
    assert c == O.ConfusionCounts(tp=2, fp=1, fn=1, tn=64 - 4)
    assert O.dice(pred, ref) == pytest.approx(2 * 2 / (3 + 3))


def test_empty_masks():
    empty = np.zeros((3, 3, 3), bool)
    one = empty.copy()
    one[1, 1, 1] = True
    assert O.dice(empty, empty) == 1.0
    assert O.dice(one, empty) == 0.0 and O.dice(empty, one) == 0.0


def test_shape_mismatch_is_an_evaluation_error():
    with pytest.raises(M.EvaluationError, match=r"\(2, 2, 2\) differs from reference"):
        O.dice(np.zeros((2, 2, 2), bool), np.zeros((2, 2, 3), bool))


def test_evaluation_uses_the_same_functions():
    assert M.dice is O.dice and M.confusion_counts is O.confusion_counts
