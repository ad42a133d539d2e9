"""Does a device compute the same training as the cpu? A fast device that is wrong must not pass silently.

mps has a history of wrong-result bugs (pytorch issues 109457, 118115, 153957, 188438). For each workload we run a
few training steps from identical initial weights on identical batches, on the cpu and on the device, and compare
the loss at every step and every parameter and buffer at the end.

Tolerances (float32, TF32 switched off for the comparison): a healthy device differs from the cpu only by the
order of floating-point reductions, ~1e-7 relative per operation, growing slowly over a few steps. Adam and
Ranger21 normalise each update, which can amplify a tiny gradient difference where a gradient is near zero, so
parameters are compared by the relative norm of the difference per tensor rather than element by element.

The thresholds, 1e-3 relative on each loss and on each tensor's norm, sit ~40x above the largest difference a
healthy GPU showed (2.3e-5, resnet18_cifar: its BatchNorm statistics and convolutions reduce in another order) and
~10x below what the known mps bugs produce (results wrong by 1e-2 and more). Measured: docs/reference-results.md.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn

from devicebench import devices

LOSS_RTOL = 1e-3
LOSS_ATOL = 1e-6
PARAM_RTOL = 1e-3  # ||device - cpu|| / ||cpu||, per tensor
PARAM_ATOL = 1e-6  # for tensors whose norm is ~0


@dataclass
class ParityCase:
    """What to train: built afresh for each device, on the cpu, so both start identical."""

    model: nn.Module
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer]
    batches: list[tuple[torch.Tensor, torch.Tensor]]  # cpu tensors, ready for the model
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Trace:
    losses: list[float]
    state: dict[str, torch.Tensor]  # final parameters and buffers, on the cpu


@dataclass
class ParityReport:
    max_loss_rel_diff: float
    max_param_rel_diff: float
    mismatches: list[str]

    @property
    def ok(self) -> bool:
        return not self.mismatches


@contextlib.contextmanager
def exact_float32() -> Iterator[None]:
    """Switch TF32 off for the comparison (it trades ~1e-3 relative precision for speed on Ampere+)."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def train_trace(case: ParityCase, device: torch.device,
                perturb: Callable[[int, nn.Module], None] | None = None) -> Trace:
    """Train ``case`` on ``device``; ``perturb(step, model)`` (tests only) tampers after a step."""
    model = copy.deepcopy(case.model).to(device)
    optimizer = case.make_optimizer(model)
    model.train()
    losses = []
    with exact_float32():
        for step, (x, y) in enumerate(case.batches):
            loss = case.loss_fn(model(x.to(device)), y.to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            if perturb is not None:
                perturb(step, model)
        devices.sync(device)
    state = {name: devices.to_host_float32(value) for name, value in model.state_dict().items()
             if value.is_floating_point()}
    return Trace(losses, state)


def compare(reference: Trace, candidate: Trace) -> ParityReport:
    mismatches = []
    max_loss, max_param = 0.0, 0.0
    for step, (ref, got) in enumerate(zip(reference.losses, candidate.losses), start=1):
        diff = abs(got - ref)
        max_loss = max(max_loss, diff / max(abs(ref), 1e-12))
        tolerance = LOSS_ATOL + LOSS_RTOL * abs(ref)
        if not diff <= tolerance:  # also catches NaN
            mismatches.append(f"step {step}: loss {got!r} on the device vs {ref!r} on the cpu "
                              f"(|diff| {diff:.3g} > tolerance {tolerance:.3g})")
    for name, ref in reference.state.items():
        got = candidate.state[name]
        diff = float((got - ref).norm())
        scale = float(ref.norm())
        max_param = max(max_param, diff / scale if scale > 0 else diff)
        tolerance = PARAM_ATOL + PARAM_RTOL * scale
        if not diff <= tolerance:
            mismatches.append(f"after {len(reference.losses)} steps: {name} differs by norm {diff:.3g} "
                              f"(cpu norm {scale:.3g}; tolerance {tolerance:.3g})")
    return ParityReport(max_loss, max_param, mismatches)


def check(make_case: Callable[[], ParityCase], device: torch.device,
          perturb: Callable[[int, nn.Module], None] | None = None) -> ParityReport:
    """Train the same case on the cpu and on ``device`` and compare."""
    reference = train_trace(make_case(), torch.device("cpu"))
    candidate = train_trace(make_case(), device, perturb)
    return compare(reference, candidate)
