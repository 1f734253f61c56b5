"""L2-SP: the pull toward the pretrained weights covers exactly the backbone parameters that train."""

from __future__ import annotations

import torch
from torch import nn

from transferkit.engine.l2sp import L2SP


def test_loss_is_half_alpha_times_the_squared_distance_to_the_start_over_trainable_parameters():
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    reg = L2SP(backbone, alpha=0.3)
    assert reg.loss().item() == 0.0  # at the anchor
    with torch.no_grad():
        backbone[0].weight.add_(0.5)  # 12 entries moved by 0.5
        backbone[1].bias.add_(1.0)  # 2 entries moved by 1
    assert torch.isclose(reg.loss(), torch.tensor(0.5 * 0.3 * (12 * 0.25 + 2 * 1.0)))
    backbone[1].bias.requires_grad_(False)  # a frozen group is not pulled
    assert torch.isclose(reg.loss(), torch.tensor(0.5 * 0.3 * 12 * 0.25))
    reg.loss().backward()
    assert torch.allclose(backbone[0].weight.grad, torch.full((4, 3), 0.3 * 0.5))  # d/dw = alpha (w - w0)


def test_the_anchor_is_a_copy_and_off_means_no_regulariser():
    backbone = nn.Linear(2, 2)
    reg = L2SP(backbone, alpha=1.0)
    with torch.no_grad():
        backbone.weight.zero_()
    assert reg.loss().item() > 0
    assert L2SP.for_run(backbone, 0.0) is None
    for p in backbone.parameters():
        p.requires_grad_(False)
    assert reg.loss().item() == 0.0  # nothing trains: a zero that can still be added to a loss
