"""A third workload in one module, for the contract test: a linear model on random data, three pipelines.

Registered only by the test that names it in DEVICEBENCH_WORKLOADS; nothing else in the repository mentions it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from devicebench.flops import FlopCounts, count_flops
from devicebench.parity import ParityCase
from devicebench.tuning import WorkloadTraits, backward_and_step
from devicebench.workloads.base import RunConfig, Stopwatch, WorkloadRun
from devicebench.workloads.tuned import TunedSetup

NAME = "tiny_linear"
VERSION = 1
HAS_CONVOLUTIONS = False
SCALES = {scale: {"train_samples": 4096, "valid_samples": 512, "batch_size": 256, "warmup_rounds": 1,
                  "rounds": 5} for scale in ("quick", "standard", "full")}


def make_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Linear(32, 4)


def flop_counts(scale=None) -> FlopCounts:
    return count_flops(make_model(0), torch.rand(8, 32), torch.randint(0, 4, (8,)), F.cross_entropy)


def parity_case(steps: int = 3, seed: int = 0) -> ParityCase:
    x, y = torch.rand(steps * 16, 32), torch.randint(0, 4, (steps * 16,))
    return ParityCase(make_model(seed), lambda m: torch.optim.SGD(m.parameters(), lr=0.1),
                      list(zip(x.split(16), y.split(16))), F.cross_entropy)


class ResidentRun(WorkloadRun):
    def __init__(self, config: RunConfig):
        super().__init__(config)
        generator = torch.Generator().manual_seed(config.seed)
        self.x = torch.rand(config.scale.train_samples, 32, generator=generator).to(self.device)
        self.y = torch.randint(0, 4, (config.scale.train_samples,), generator=generator).to(self.device)
        self.data_source = "synthetic"
        self.model = self.distributed(make_model(config.seed).to(self.device))
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1)

    @property
    def samples_per_round(self) -> int:
        return len(self.x)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.model(x), y)

    def train_epoch(self, waits: Stopwatch) -> torch.Tensor:
        order = self.shuffled_order(len(self.x))
        for start in waits.iterate(range(0, len(order), self.config.scale.batch_size)):
            index = order[start:start + self.config.scale.batch_size]
            loss = self.loss(self.x[index], self.y[index])
            self.backward_and_step(loss)
            self.optimizer.zero_grad()
        return loss.detach()

    def backward_and_step(self, loss: torch.Tensor) -> None:
        loss.backward()
        self.optimizer.step()

    @torch.no_grad()
    def validate(self, waits: Stopwatch) -> torch.Tensor:
        return F.cross_entropy(self.model(self.x[: self.config.scale.valid_samples]),
                               self.y[: self.config.scale.valid_samples])

    def final_evaluation(self) -> tuple[float, float]:
        with torch.no_grad():
            logits = self.model(self.x)
            return F.cross_entropy(logits, self.y).item(), (logits.argmax(1) == self.y).float().mean().item()


class SeedRun(ResidentRun):
    """The same, with a per-batch host read, as the posts' loops do."""

    def train_epoch(self, waits: Stopwatch) -> float:
        return float(super().train_epoch(waits).item())


class TunedRun(TunedSetup, ResidentRun):
    """The shared tuned setup (tuned.TunedSetup); this module only says what to compile and warms it up."""

    def __init__(self, config: RunConfig):
        super().__init__(config)
        self.plan_tuned(WorkloadTraits(has_convolutions=False, launch_bound=False, graph_safe_optimizer=True))
        self.compiled_loss = self.compiled(lambda x, y: F.cross_entropy(self.model(x), y))
        self.prepare(self.model, self.optimizer, lambda: self.loss(self.x[:16], self.y[:16]).backward())

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return self.compiled_loss(x, y)

    def backward_and_step(self, loss: torch.Tensor) -> None:
        backward_and_step(loss, self.optimizer, self.scaler)  # through the GradScaler where float16 needs one


RUNS = {"seed": SeedRun, "resident": ResidentRun, "tuned": TunedRun}
