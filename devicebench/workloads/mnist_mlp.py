"""mnist_mlp: seed 000's MLP on MNIST, exactly as the post writes it.

``Linear(784,128)-ReLU-Linear(128,256)-ReLU-Linear(256,10)``, ``F.cross_entropy``, ``Adam(lr=1e-3)``, batch 500
(validation 1000), ``DataLoader(shuffle=True)``, a validation pass after every epoch, ``loss.item()`` per batch.
The post never moves anything to a device; the ``seed`` pipeline adds ``.to(device)`` and nothing else.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from devicebench.data.mnist import load_mnist, synthetic_mnist
from devicebench.parity import ParityCase
from devicebench.flops import FlopCounts, count_flops
from devicebench.tuning import WorkloadTraits, backward_and_step
from devicebench.workloads.base import RunConfig, Stopwatch, WorkloadRun
from devicebench.workloads.tuned import TunedSetup

NAME = "mnist_mlp"
# Bump when the work a round does changes (model, data sizes, loop): results of different versions never compare.
VERSION = 1
LEARNING_RATE = 1e-3
HAS_CONVOLUTIONS = False


class Mnist_NN(nn.Module):  # noqa: N801 - the post's name
    def __init__(self):
        super().__init__()
        self.hidden1 = nn.Linear(784, 128)
        self.hidden2 = nn.Linear(128, 256)
        self.out = nn.Linear(256, 10)

    def forward(self, x):
        x = F.relu(self.hidden1(x))
        x = F.relu(self.hidden2(x))
        return self.out(x)


def make_model(seed: int) -> nn.Module:
    """The post's model with deterministic initial weights (created on the cpu, so every device starts equal)."""
    torch.manual_seed(seed)
    return Mnist_NN()


def make_optimizer(model: nn.Module, **kwargs) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=LEARNING_RATE, **kwargs)


def flop_counts(scale=None) -> FlopCounts:  # the same at every scale
    return count_flops(make_model(0), torch.rand(8, 784), torch.randint(0, 10, (8,)), F.cross_entropy)


def parity_case(steps: int = 5, seed: int = 0) -> ParityCase:
    """A few of the post's training steps on fixed batches, for the cpu-vs-device check (parity.py)."""
    data = synthetic_mnist(train_size=steps * 500, valid_size=1, seed=seed)
    batches = list(zip(data.x_train.split(500), data.y_train.split(500)))
    return ParityCase(make_model(seed), make_optimizer, batches, F.cross_entropy)


class _MnistRun(WorkloadRun):
    def __init__(self, config: RunConfig):
        super().__init__(config)
        scale = config.scale
        data, self.data_source = load_mnist(config.data_mode, config.data_dir)
        self.x_train, self.y_train = data.x_train[: scale.train_samples], data.y_train[: scale.train_samples]
        self.x_valid, self.y_valid = data.x_valid[: scale.valid_samples], data.y_valid[: scale.valid_samples]
        self.model = self.distributed(make_model(config.seed).to(self.device))
        self.optimizer = make_optimizer(self.model)

    @property
    def samples_per_round(self) -> int:
        return len(self.x_train)

    @torch.no_grad()
    def final_evaluation(self) -> tuple[float, float]:
        self.model.eval()
        x, y = self.x_valid.to(self.device), self.y_valid.to(self.device)
        logits = self.model(x)
        loss = F.cross_entropy(logits, y).item()
        accuracy = (logits.argmax(1) == y).float().mean().item()
        return loss, accuracy


class SeedRun(_MnistRun):
    """The post's loop: CPU DataLoaders over TensorDatasets, each batch moved to the device, loss.item() per batch."""

    def __init__(self, config: RunConfig):
        super().__init__(config)
        generator = torch.Generator().manual_seed(config.seed)  # a fixed shuffle order, so reruns do equal work
        self.train_dl = DataLoader(TensorDataset(self.x_train, self.y_train), batch_size=config.scale.batch_size,
                                   shuffle=True, generator=generator)
        self.valid_dl = DataLoader(TensorDataset(self.x_valid, self.y_valid),
                                   batch_size=config.scale.valid_batch_size)

    def loss_batch(self, xb, yb, opt=None):
        xb, yb = xb.to(self.device), yb.to(self.device)
        loss = F.cross_entropy(self.model(xb), yb)
        if opt is not None:
            loss.backward()
            opt.step()
            opt.zero_grad()
        return loss.item(), len(xb)

    def train_epoch(self, waits: Stopwatch) -> float:
        self.model.train()
        losses = [self.loss_batch(xb, yb, self.optimizer)[0] for xb, yb in waits.iterate(self.train_dl)]
        return sum(losses) / len(losses)

    def validate(self, waits: Stopwatch) -> float:
        self.model.eval()
        with torch.no_grad():
            losses, nums = zip(*[self.loss_batch(xb, yb) for xb, yb in waits.iterate(self.valid_dl)])
        return sum(loss * num for loss, num in zip(losses, nums)) / sum(nums)


class ResidentRun(_MnistRun):
    """The same math with the data on the device: gathered in shuffled order there, losses summed there."""

    def __init__(self, config: RunConfig):
        super().__init__(config)
        self.x_train_d, self.y_train_d = self.x_train.to(self.device), self.y_train.to(self.device)
        self.x_valid_d, self.y_valid_d = self.x_valid.to(self.device), self.y_valid.to(self.device)

    def batches(self, x, y, batch_size, waits: Stopwatch, order=None):
        for start in waits.iterate(range(0, len(x), batch_size)):
            index = slice(start, start + batch_size) if order is None else order[start:start + batch_size]
            yield x[index], y[index]

    def train_epoch(self, waits: Stopwatch) -> torch.Tensor:
        self.model.train()
        total = torch.zeros((), device=self.device)
        batches = 0
        for xb, yb in self.batches(self.x_train_d, self.y_train_d, self.config.scale.batch_size, waits,
                                   self.shuffled_order(len(self.x_train_d))):
            total += self.train_step(xb, yb)
            batches += 1
        return total / batches

    def train_step(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(self.model(xb), yb)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()
        return loss.detach()

    def valid_loss_sum(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.model(xb), yb, reduction="sum")

    @torch.no_grad()
    def validate(self, waits: Stopwatch) -> torch.Tensor:
        self.model.eval()
        total = torch.zeros((), device=self.device)
        for xb, yb in self.batches(self.x_valid_d, self.y_valid_d, self.config.scale.valid_batch_size, waits):
            total += self.valid_loss_sum(xb, yb)
        return total / len(self.x_valid_d)


TRAITS = WorkloadTraits(has_convolutions=HAS_CONVOLUTIONS, launch_bound=True, graph_safe_optimizer=True)
GRAPH_WARMUP_STEPS = 3  # eager steps on a side stream before capture, as torch.cuda.graphs' docs require


class TunedRun(TunedSetup, ResidentRun):
    """``resident`` made fast: autocast, torch.compile, a fused Adam update and, on cuda, a whole epoch as one CUDA
    graph.

    Compilation and capture happen before any round (tuned.TunedSetup.prepare, recorded as ``compile_s``).
    """

    def __init__(self, config: RunConfig):
        super().__init__(config)
        self.plan_tuned(TRAITS)
        compiled_step = self.plan.cuda_graphs and self.plan.compiled
        if compiled_step:
            # Adam's update for all six tensors compiled into one kernel, many times faster inside the graph than
            # the fused Adam kernel's three launches (measured: docs/profiling.md). A captured Adam must be
            # "capturable" (its step count lives on the device).
            self.optimizer = make_optimizer(self.model, capturable=True, foreach=True)
            self.add_tuning_note("optimizer: Adam's step compiled by torch.compile into one kernel")
        elif self.device.type == "cuda":
            # Adam's fused kernel: a few launches per step instead of a dozen, same update rule.
            self.optimizer = make_optimizer(self.model, fused=True, capturable=self.plan.cuda_graphs)
        self.fused_optimizer = self.device.type == "cuda"
        self.step_optimizer = self.compiled(self.optimizer.step) if compiled_step else self.optimizer.step
        # The loss is compiled with the model, so cross-entropy fuses with the last layer.
        self.mean_loss = self.compiled(lambda x, y: F.cross_entropy(self.model(x), y))
        self.sum_loss = self.compiled(lambda x, y: F.cross_entropy(self.model(x), y, reduction="sum"))
        self.graph = None
        self.prepare(self.model, self.optimizer, self._capture_or_compile_training, self._compile_validation)

    def describe(self) -> dict:
        return {**super().describe(), "fused_optimizer": self.fused_optimizer}

    def loss(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return self.mean_loss(xb, yb)

    def train_step(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        loss = self.loss(xb, yb)
        backward_and_step(loss, self.optimizer, self.scaler)
        self.optimizer.zero_grad()
        return loss.detach()

    def valid_loss_sum(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return self.sum_loss(xb, yb)

    def _capture_or_compile_training(self) -> None:
        """Capture the epoch (which compiles the step on the way), or compile the training step on real shapes."""
        if self.plan.cuda_graphs:
            self.graph = self._capture()
        elif self.plan.compiled:
            batch = self.config.scale.batch_size
            self.model.train()
            self.loss(self.x_train_d[:batch], self.y_train_d[:batch]).backward()

    def _compile_validation(self) -> None:
        if self.plan.compiled:
            valid_batch = self.config.scale.valid_batch_size
            self.model.eval()
            with torch.no_grad():
                self.valid_loss_sum(self.x_valid_d[:valid_batch], self.y_valid_d[:valid_batch])

    def _capture(self) -> torch.cuda.CUDAGraph:
        """Capture every full batch of a training epoch (gather, forward, backward, Adam step) as one CUDA graph.

        torch.cuda.graphs' whole-network recipe, taken to a whole epoch: the shuffled order is written into a
        static buffer before each replay, so one launch runs the epoch's ~100 steps; this MLP's kernels are so
        small that launching them is most of an eager step's time.
        """
        batch = self.config.scale.batch_size
        self.full_batches = len(self.x_train_d) // batch
        self.static_order = torch.arange(len(self.x_train_d), device=self.device)
        # The epoch's order is drawn into pinned host memory and copied without blocking: a copy from pageable
        # memory holds the host back before the graph can launch.
        self.pinned_order = torch.empty(len(self.x_train_d), dtype=torch.long).pin_memory()
        self.order_copied = None  # the event after the queued copy of the next epoch's order; None: none queued
        self.static_loss_sum = torch.zeros((), device=self.device)
        self.model.train()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for step in range(GRAPH_WARMUP_STEPS):
                self._indexed_step(step % self.full_batches)
        torch.cuda.current_stream().wait_stream(side)
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for step in range(self.full_batches):
                self._indexed_step(step)
        self.static_loss_sum.zero_()  # weights and Adam's state are restored by prepare()
        return graph

    def _indexed_step(self, step: int) -> None:
        """One training step on the ``step``-th batch of ``static_order`` (graph-safe: no host reads)."""
        batch = self.config.scale.batch_size
        index = self.static_order[step * batch:(step + 1) * batch]
        loss = self.loss(self.x_train_d.index_select(0, index), self.y_train_d.index_select(0, index))
        loss.backward()
        self.step_optimizer()
        # Set to None, as torch.cuda.graphs' whole-network example does: the next captured backward writes fresh
        # gradients (in the graph's memory pool) instead of adding into zeroed ones: 7 fewer kernels a step.
        self.optimizer.zero_grad(set_to_none=True)
        self.static_loss_sum += loss.detach()

    def queue_next_order(self) -> None:
        """Draw the next epoch's order on the host and queue its copy into the graph's order buffer.

        Called while the GPU runs an epoch, so the draw (a randperm of 50k, slower when the host is busy) no longer
        stands between two epochs with the GPU idle (docs/profiling.md). The copy is queued behind the running
        epoch, so the graph reads it only on its next replay; epoch k still trains on the k-th order the seeded
        generator gives, the same orders as ``resident``.
        """
        if self.order_copied is not None:
            self.order_copied.synchronize()  # the last copy out of the pinned buffer must be done before refilling
        torch.randperm(len(self.x_train_d), generator=self.order_generator, out=self.pinned_order)
        # cuda only (CUDA graphs): the source is pinned and is not refilled until the event below has passed, so
        # the copy never reads released or rewritten memory (the rule of docs/mps.md).
        self.static_order.copy_(self.pinned_order, non_blocking=True)
        self.order_copied = torch.cuda.Event()
        self.order_copied.record()

    def train_epoch(self, waits: Stopwatch) -> torch.Tensor:
        if self.graph is None:
            return super().train_epoch(waits)
        self.model.train()
        batch = self.config.scale.batch_size
        if self.order_copied is None:  # the first epoch: nothing was queued while an earlier one ran
            self.queue_next_order()
        self.static_loss_sum.zero_()
        self.graph.replay()
        remainder = self.static_order[self.full_batches * batch:]
        batches, eager_total = self.full_batches, torch.zeros((), device=self.device)
        if len(remainder):  # a last, smaller batch does not fit the captured shapes: run it eagerly
            eager_total = self.train_step(self.x_train_d[remainder], self.y_train_d[remainder])
            batches += 1
        mean_loss = (self.static_loss_sum + eager_total) / batches
        self.queue_next_order()
        return mean_loss


# The pipelines this workload offers (base.WorkloadModule).
RUNS = {"seed": SeedRun, "resident": ResidentRun, "tuned": TunedRun}
