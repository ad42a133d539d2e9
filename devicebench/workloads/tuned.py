"""The ``tuned`` pipeline's setup, written once for every workload.

A workload's ``TunedRun`` mixes ``TunedSetup`` in front of its ``ResidentRun`` and keeps only what is its own (which
functions to compile, how a step is captured). From here it gets:

- ``plan_tuned(traits)``: the ``TuningPlan`` for this device (tuning.py), its backend flags applied, the GradScaler
  the plan needs;
- ``compiled(fn)`` and ``autocast()``: torch.compile and mixed precision as the plan says;
- ``prepare(...)``: compilation and capture on real shapes before any round, timed as ``compile_s``, after which
  every weight, BatchNorm statistic and optimizer state is as it was, so the timed rounds start where ``resident``
  starts;
- ``precision`` and ``describe()``: what ran, reported in every row.
"""

from __future__ import annotations

import time
from typing import Callable

import torch
from torch import nn

from devicebench import devices
from devicebench.tuning import (TuningPlan, WorkloadTraits, apply_backend_flags, backend_facts, compile_static,
                                plan_tuning)


class TunedSetup:
    """Mixed in before a workload's ``ResidentRun`` (it relies on ``self.device``, ``self.config``)."""

    plan: TuningPlan
    device: torch.device
    compile_seconds: float = 0.0
    workload_notes: tuple[str, ...] = ()  # what the workload does beyond the plan (add_tuning_note)

    def plan_tuned(self, traits: WorkloadTraits) -> None:
        self.plan = plan_tuning(backend_facts(self.device), traits, self.config.tuning)
        apply_backend_flags(self.plan)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.plan.needs_grad_scaler else None

    def add_tuning_note(self, note: str) -> None:
        """Say in the row's ``tuning_notes`` what a change the workload makes beyond the plan does."""
        self.workload_notes = (*self.workload_notes, note)

    def compiled(self, fn: Callable) -> Callable:
        """``fn`` compiled as the plan allows."""
        if not self.plan.compiled:
            return fn
        return compile_static(fn, options=self.plan.compile_options())

    def autocast(self):
        # The autocast weight-cast cache must be off while capturing a CUDA graph: cached casts would be freed
        # memory on replay.
        return torch.autocast(self.device.type, dtype=self.plan.autocast_dtype,
                              enabled=self.plan.autocast_dtype is not None, cache_enabled=not self.plan.cuda_graphs)

    def prepare(self, module: nn.Module, optimizer: torch.optim.Optimizer, *steps: Callable[[], object]) -> None:
        """Run ``steps`` (compile, capture, warm-up calls on real shapes) before any round, timed as ``compile_s``.

        Afterwards the module's parameters and buffers (BatchNorm statistics) hold their values from before, in
        place (a captured graph holds these very tensors), gradients are zero, and optimizer state created by the
        steps is zeroed in place: a fresh Adam's moments and step count are zeros (an optimizer with a
        ``reset_state()`` method is reset by it).
        """
        start = time.perf_counter()
        before = {name: value.detach().clone() for name, value in module.state_dict(keep_vars=True).items()}
        fresh_optimizer = not optimizer.state
        for step in steps:
            step()
        with torch.no_grad():
            for name, value in module.state_dict(keep_vars=True).items():
                value.copy_(before[name])
            for param in module.parameters():
                if param.grad is not None:
                    param.grad.zero_()
            if hasattr(optimizer, "reset_state"):  # an optimizer that knows its fresh state (TensorRanger21)
                optimizer.reset_state()
            elif fresh_optimizer:
                for state in optimizer.state.values():
                    for tensor in state.values():
                        if torch.is_tensor(tensor):
                            tensor.zero_()
        devices.sync(self.device)
        self.compile_seconds = time.perf_counter() - start

    @property
    def precision(self) -> str:
        return self.plan.dtype

    def describe(self) -> dict:
        tuning = self.plan.as_extra_info()
        tuning["tuning_notes"] = [*tuning["tuning_notes"], *self.workload_notes]
        return {**super().describe(), **tuning, "compile_s": self.compile_seconds}
