"""train.class_weight: balanced cross-entropy for imbalanced configurations (deepcovid/model/training.py).

Checked against hand computation: the weights are n / (2 n_c), the training loss of the head
is the weighted mean scikit-learn's and PyTorch's definitions agree on, the validation loss is
the weighted mean used for the best epoch, and ``none`` changes nothing.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.utils.class_weight import compute_class_weight
from torch import nn

from deepcovid.model.training import _mean_loss, class_weights, evaluate, train_head

CPU = torch.device("cpu")


def test_balanced_weights_equal_scikit_learn():
    labels = np.array([1] * 7 + [0] * 21)
    got = class_weights(labels, "balanced")
    want = compute_class_weight("balanced", classes=np.array([0, 1]), y=labels)
    assert got.dtype == torch.float32 and torch.allclose(got, torch.tensor(want, dtype=torch.float32))
    assert got.tolist() == pytest.approx([28 / 42, 28 / 14])
    assert class_weights(labels, "none") is None
    with pytest.raises(ValueError, match="both classes"):
        class_weights(np.zeros(5, dtype=int), "balanced")
    with pytest.raises(ValueError, match="unknown value 'inverse'"):
        class_weights(labels, "inverse")


def test_weighted_validation_loss_is_the_weighted_mean():
    torch.manual_seed(0)
    head = nn.Linear(3, 2)
    x, y = torch.randn(10, 3), torch.tensor([1, 0, 0, 0, 0, 0, 0, 1, 0, 0])
    w = class_weights(y.numpy(), "balanced")
    per_item = F.cross_entropy(head(x), y, reduction="none").detach()
    want = float((w[y] * per_item).sum() / w[y].sum())
    assert _mean_loss(head, x, y, 4, None, w) == pytest.approx(want, rel=1e-6)
    assert _mean_loss(head, x, y, 4, None) == pytest.approx(float(per_item.mean()), rel=1e-6)
    assert abs(want - float(per_item.mean())) > 1e-3
    batches = [(x[:4], y[:4]), (x[4:], y[4:])]
    assert evaluate(head, batches, CPU, channels_last=False, amp=False, class_weight=w) == pytest.approx(want, rel=1e-6)


def _fit(class_weight):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(60, 4, generator=gen)
    y = (torch.arange(60) < 10).long()  # 10 positives, 50 negatives
    x[:, 0] += 0.8 * y  # a weak signal
    head = nn.Linear(4, 2)
    torch.manual_seed(0)
    head.reset_parameters()
    head, history, best = train_head(
        head, x, y, x[:20], y[:20], epochs=30, batch_size=8, lr=0.05, seed=1, class_weight=class_weight
    )
    with torch.no_grad():
        return torch.softmax(head(x), 1)[:, 1], history


def test_balanced_weights_raise_the_minority_scores_and_none_is_the_plain_loss():
    plain, history = _fit(None)
    again, history_again = _fit(class_weights(np.r_[np.ones(10), np.zeros(50)].astype(int), "none"))
    assert torch.equal(plain, again)
    assert [(h.train_loss, h.val_loss) for h in history] == [(h.train_loss, h.val_loss) for h in history_again]
    balanced, _ = _fit(class_weights(np.r_[np.ones(10), np.zeros(50)].astype(int), "balanced"))
    # the weighted loss pulls the decision towards the minority class: higher scores for all
    assert float(balanced.mean()) > float(plain.mean()) + 0.1
    assert float((balanced >= 0.5).sum()) > float((plain >= 0.5).sum())
