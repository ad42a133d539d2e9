"""FLOPs per sample, counted once per workload with ``torch.utils.flop_counter`` (2 x multiply-accumulates).

Counted on the cpu on a tiny batch, running exactly what a step runs: for the frozen-backbone ResNet18 that is
the full forward and the backward of ``fc`` only (autograd never enters the frozen layers), so the count is what
the device really does, not the 3x-forward rule of thumb.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@dataclass(frozen=True)
class FlopCounts:
    train_per_sample: float  # forward + backward of one training sample
    eval_per_sample: float  # forward of one validation sample

    def per_round(self, train_samples: int, valid_samples: int) -> float:
        return self.train_per_sample * train_samples + self.eval_per_sample * valid_samples


def count_flops(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> FlopCounts:
    batch = len(inputs)
    model.train()
    with FlopCounterMode(display=False) as counter:
        loss_fn(model(inputs), targets).backward()
    train = counter.get_total_flops() / batch
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(inputs)
    return FlopCounts(train_per_sample=train, eval_per_sample=counter.get_total_flops() / batch)
