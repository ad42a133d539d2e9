"""resnet18_cifar's optimizers (``--optimizer``) and learning-rate schedule, built as the post's ``train()`` builds
them; the tuned pipeline's Ranger21 is the same update as device tensor operations (tensor_ranger21.py)."""

from __future__ import annotations

import contextlib
import io
import sys

import torch
from torch import nn
from torch.optim.lr_scheduler import CyclicLR

from devicebench.errors import DevicebenchError, UsageError
from devicebench.tensor_ranger21 import TensorRanger21

OPTIMIZERS = ("ranger21", "sgd", "adam", "adamw")
LR, LR_MIN = 0.1, 1e-5


def trainable(net: nn.Module) -> list[nn.Parameter]:
    return [param for param in net.parameters() if param.requires_grad]


def make_optimizer(name: str, net: nn.Module, num_epochs: int, num_batches_per_epoch: int):
    """The post's optimizer choices, built as its ``train()`` builds them."""
    params = trainable(net)
    if name == "sgd":
        return torch.optim.SGD(params, lr=LR, weight_decay=0)
    if name == "adam":
        return torch.optim.Adam(params, lr=LR, weight_decay=0)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=LR, weight_decay=0)
    if name == "ranger21":
        try:
            from ranger21 import Ranger21  # imports matplotlib; only load it when asked for
        except ImportError as error:
            raise DevicebenchError(
                f"resnet18_cifar trains with Ranger21, the post's optimizer, and this Python ({sys.executable}) "
                f"cannot import it ({error}): `pip install ranger21` into it (devicebench declares it, but an "
                f"environment given to `devicebench run --env` is its own install)") from error

        with contextlib.redirect_stdout(io.StringIO()):  # it prints a settings banner on construction
            optimizer = Ranger21(params, lr=LR, weight_decay=0, num_epochs=num_epochs,
                                 num_batches_per_epoch=num_batches_per_epoch, use_warmup=False,
                                 use_madgrad=False)
        optimizer.warmdown_displayed = True  # and another when its warm-down starts
        return optimizer
    raise UsageError(f"--optimizer {name!r}: choose one of {', '.join(OPTIMIZERS)}")


def make_tensor_ranger21(net: nn.Module, num_epochs: int, num_batches_per_epoch: int) -> TensorRanger21:
    """The post's Ranger21, with its schedule on the device (the tuned pipeline)."""
    return TensorRanger21(trainable(net), lr=LR, weight_decay=0, num_epochs=num_epochs,
                          num_batches_per_epoch=num_batches_per_epoch, use_warmup=False, use_madgrad=False)


def make_scheduler(optimizer) -> CyclicLR:
    return CyclicLR(optimizer, base_lr=LR_MIN, max_lr=LR)
