"""resnet18_cifar: seed 004's frozen-backbone ResNet18 fine-tune on CIFAR-10 at 96 px, as the post writes it.

``timm.create_model('resnet18', pretrained=..., num_classes=10)``, every parameter frozen except ``fc`` (the model
still runs in ``train()`` mode, so BatchNorm statistics update), ``CrossEntropyLoss``, batch 1024,
``Ranger21(lr=0.1, weight_decay=0, num_epochs, num_batches_per_epoch, use_warmup=False, use_madgrad=False)``,
``CyclicLR(base_lr=1e-5, max_lr=0.1)`` stepped once per epoch, accuracy per batch via ``.item()``, a validation
pass per epoch. The post's ``train()`` also offers sgd, adam and adamW (``--optimizer``).

Left out of the timed loop, on purpose: the post's ``torch.save`` of the best model after validation (file I/O,
not training) and its ``tqdm`` bar.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from devicebench import weights
from devicebench.data.cifar10 import CifarImages, load_cifar, synthetic_cifar
from devicebench.flops import FlopCounts, count_flops
from devicebench.parity import ParityCase
from devicebench.tensor_ranger21 import TensorRanger21
from devicebench.tuning import WorkloadTraits, backward_and_step
from devicebench.workloads.base import RunConfig, Stopwatch, WorkloadRun
# OPTIMIZERS and make_optimizer are imported from this module too (--optimizer's choices, tests).
from devicebench.workloads.resnet18_cifar_optimizers import (OPTIMIZERS, make_optimizer, make_scheduler,
                                                              make_tensor_ranger21)
from devicebench.workloads.tuned import TunedSetup

NAME = "resnet18_cifar"
VERSION = 1
IMAGE_SIZE = 96
HAS_CONVOLUTIONS = True
REQUIRES = ("timm", "torchvision")  # a torch without a matching torchvision skips these rows, saying so


def make_model(seed: int, weights_path=None) -> nn.Module:
    """timm's resnet18 with a 10-class head, backbone frozen, ``fc`` trainable (the post's ``get_net``)."""
    import timm  # imported here, with torchvision, so that mnist_mlp runs on a torch without them

    torch.manual_seed(seed)  # the new head's initial weights, equal on every device
    net = timm.create_model("resnet18", pretrained=False, num_classes=10)
    if weights_path is not None:
        weights.load_backbone(net, weights_path)
    for param in net.parameters():
        param.requires_grad = False
    net.fc.weight.requires_grad = True
    net.fc.bias.requires_grad = True
    return net


def flop_counts(scale=None) -> FlopCounts:  # the same at every scale
    """Per image at 96 px: the full forward, and a backward that only reaches ``fc`` (the rest is frozen)."""
    return count_flops(make_model(0), torch.rand(2, 3, IMAGE_SIZE, IMAGE_SIZE), torch.randint(0, 10, (2,)),
                       F.cross_entropy)


def parity_case(steps: int = 4, seed: int = 0, batch_size: int = 32) -> ParityCase:
    """A few training steps of the post's setup (Ranger21, BatchNorm in train mode) on fixed 96 px batches."""
    data = synthetic_cifar(train_size=steps * batch_size, test_size=1, seed=seed)
    images = to_model_input(torch.from_numpy(data.train_images).permute(0, 3, 1, 2))
    labels = torch.from_numpy(data.train_labels)
    batches = list(zip(images.split(batch_size), labels.split(batch_size)))
    return ParityCase(make_model(seed), lambda net: make_optimizer("ranger21", net, 1, steps), batches,
                      F.cross_entropy)


def batches_per_epoch(samples: int, batch_size: int) -> int:
    return -(-samples // batch_size)  # the post keeps the last, partial batch


class _CifarRun(WorkloadRun):
    def __init__(self, config: RunConfig):
        super().__init__(config)
        scale = config.scale
        data, self.data_source = load_cifar(config.data_mode, config.data_dir)
        self.train_images = data.train_images[: scale.train_samples]
        self.train_labels = data.train_labels[: scale.train_samples]
        self.valid_images = data.test_images[: scale.valid_samples]
        self.valid_labels = data.test_labels[: scale.valid_samples]
        weights_path, self.pretrained = weights.locate(config.pretrained, config.weights_file)
        self.net = make_model(config.seed, weights_path).to(self.device)
        self.loss = nn.CrossEntropyLoss()
        total_epochs = scale.warmup_rounds + scale.rounds
        self.optimizer = self.make_optimizer(total_epochs, batches_per_epoch(scale.train_samples, scale.batch_size))
        self.scheduler = make_scheduler(self.optimizer)

    def make_optimizer(self, num_epochs: int, num_batches_per_epoch: int):
        return make_optimizer(self.config.optimizer, self.net, num_epochs, num_batches_per_epoch)

    @property
    def samples_per_round(self) -> int:
        return len(self.train_images)

    def describe(self) -> dict:
        return {**super().describe(), "pretrained": self.pretrained, "optimizer": self.config.optimizer,
                "image_size": IMAGE_SIZE}

    def resident_images(self, images: np.ndarray) -> torch.Tensor:
        """uint8 NCHW images on the device: a quarter of the bytes of float32, converted per batch."""
        # Dense before its one copy to the device: non-dense views copied to mps gave wrong values (docs/mps.md).
        return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(self.device)

    @torch.no_grad()
    def final_evaluation(self) -> tuple[float, float]:
        self.net.eval()
        images = self.resident_images(self.valid_images)
        labels = torch.from_numpy(self.valid_labels).to(self.device)
        loss_sum, correct = torch.zeros((), device=self.device), torch.zeros((), device=self.device)
        for start in range(0, len(images), self.config.scale.valid_batch_size):
            x = to_model_input(images[start:start + self.config.scale.valid_batch_size])
            y = labels[start:start + self.config.scale.valid_batch_size]
            output = self.net(x)
            loss_sum += F.cross_entropy(output, y, reduction="sum")
            correct += (output.argmax(1) == y).sum()
        return (loss_sum / len(images)).item(), (correct / len(images)).item()


def to_model_input(uint8_images: torch.Tensor) -> torch.Tensor:
    """On-device twin of the post's ``Resize(96)`` + ``ToTensor()``: scale to [0, 1], bilinear-resize 32 -> 96."""
    x = uint8_images.float().div_(255)
    return F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)


class SeedRun(_CifarRun):
    """The post's loop: PIL transforms in a CPU DataLoader (``--workers``), each batch moved to the device."""

    def __init__(self, config: RunConfig):
        super().__init__(config)
        from torchvision import transforms

        transform = transforms.Compose([transforms.Resize(IMAGE_SIZE), transforms.ToTensor()])
        generator = torch.Generator().manual_seed(config.seed)
        self.train_dataloader = DataLoader(CifarImages(self.train_images, self.train_labels, transform),
                                           batch_size=config.scale.batch_size, shuffle=True,
                                           num_workers=config.workers, generator=generator)
        self.valid_dataloader = DataLoader(CifarImages(self.valid_images, self.valid_labels, transform),
                                           batch_size=config.scale.valid_batch_size, shuffle=True,
                                           num_workers=config.workers, generator=generator)
        self.train_net = self.distributed(self.net)

    def describe(self) -> dict:
        return {**super().describe(), "workers": self.config.workers}

    def train_epoch(self, waits: Stopwatch) -> float:
        net, device, batch_size = self.train_net, self.device, self.config.scale.batch_size
        net.train()
        train_acc = 0.0
        for imgs, targets in waits.iterate(self.train_dataloader):
            imgs = imgs.to(device)
            targets = targets.to(device)
            output = net(imgs)
            Loss = self.loss(output, targets)  # noqa: N806 - the post's names
            self.optimizer.zero_grad()
            Loss.backward()
            self.optimizer.step()
            _, pred = output.max(1)
            num_correct = (pred == targets).sum().item()
            train_acc += num_correct / batch_size
        self.scheduler.step()
        return Loss.item()  # the post reports the last batch's loss

    def validate(self, waits: Stopwatch) -> float:
        net, device = self.net, self.device
        net.eval()
        eval_loss, eval_acc = 0, 0.0
        with torch.no_grad():
            for imgs, targets in waits.iterate(self.valid_dataloader):
                imgs = imgs.to(device)
                targets = targets.to(device)
                output = net(imgs)
                Loss = self.loss(output, targets)  # noqa: N806
                _, pred = output.max(1)
                num_correct = (pred == targets).sum().item()
                eval_loss += Loss
                eval_acc += num_correct / imgs.shape[0]
        return float(eval_loss / len(self.valid_dataloader))


class ResidentRun(_CifarRun):
    """The same math with uint8 images on the device, resized and scaled there, no per-batch host sync."""

    def __init__(self, config: RunConfig):
        super().__init__(config)
        self.train_x = self.resident_images(self.train_images)
        self.train_y = torch.from_numpy(self.train_labels).to(self.device)
        self.valid_x = self.resident_images(self.valid_images)
        self.valid_y = torch.from_numpy(self.valid_labels).to(self.device)
        self.forward = self.trained_forward()

    def trained_forward(self) -> nn.Module:
        """The module the training step calls, wrapped for a data-parallel run."""
        return self.distributed(self.net)

    def model_input(self, uint8_images: torch.Tensor) -> torch.Tensor:
        return to_model_input(uint8_images)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        output = self.forward(x)
        loss = self.loss(output, y)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return loss.detach(), (output.argmax(1) == y).sum()

    def valid_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss(self.forward(x), y)

    def train_epoch(self, waits: Stopwatch) -> torch.Tensor:
        self.net.train()
        batch_size = self.config.scale.batch_size
        order = self.shuffled_order(len(self.train_x))
        # The post's per-batch accuracy, kept on the device so the work is the same without a host read.
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        for start in waits.iterate(range(0, len(order), batch_size)):
            index = order[start:start + batch_size]
            loss, batch_correct = self.step(self.model_input(self.train_x[index]), self.train_y[index])
            correct += batch_correct
        self.scheduler.step()
        return loss  # the last batch's loss, as the post reports

    @torch.no_grad()
    def validate(self, waits: Stopwatch) -> torch.Tensor:
        self.net.eval()
        batch_size = self.config.scale.valid_batch_size
        loss_sum = torch.zeros((), device=self.device)
        batches = 0
        for start in waits.iterate(range(0, len(self.valid_x), batch_size)):
            x = self.model_input(self.valid_x[start:start + batch_size])
            loss_sum += self.valid_loss(x, self.valid_y[start:start + batch_size])
            batches += 1
        return loss_sum / batches


class FrozenBackbone(nn.Module):
    """The frozen part of the network with the input conversion in front: uint8 NCHW images in, pooled features
    out (everything but ``fc``)."""

    def __init__(self, net: nn.Module, channels_last: bool):
        super().__init__()
        self.net, self.channels_last = net, channels_last

    def forward(self, uint8_images: torch.Tensor) -> torch.Tensor:
        x = to_model_input(uint8_images)
        x = x.contiguous(memory_format=torch.channels_last) if self.channels_last else x
        return self.net.forward_head(self.net.forward_features(x), pre_logits=True)


GRAPH_WARMUP_STEPS = 3  # eager steps on a side stream before capture, as torch.cuda.graphs' docs require


class TunedRun(TunedSetup, ResidentRun):
    """``resident`` made fast: autocast (bf16 / fp16 + GradScaler), channels_last, torch.compile, Ranger21 as
    device tensor operations, and on cuda the whole training step as one CUDA graph.

    The math is the post's: every image goes through the whole network in train mode (BatchNorm statistics update
    in the same order), ``fc`` is trained by the chosen optimizer on each batch in turn. What changes is how:

    - Nothing before ``fc`` trains and the input needs no gradient, so the backbone runs without autograd (the
      same values; no graph is recorded) and is compiled as an inference graph, input conversion included.
    - Ranger21 is ``tensor_ranger21.TensorRanger21``: the same update (checked against ``ranger21.Ranger21`` in
      tests/test_tensor_ranger21.py), with its schedule on the device, so a step never reads back to the host.
    - On cuda, one step (backbone, head forward and backward, Ranger21's update) is captured as a CUDA graph and
      replayed per batch, the batch gathered into the graph's input buffer first: the step's hundreds of kernels
      become one launch, and the host queues batch after batch without waiting.
    - Elsewhere (cpu, mps, or an optimizer whose schedule lives in host numbers), the next batch's backbone is
      queued before this batch's optimizer step.

    Compilation and capture happen before any round (tuned.TunedSetup.prepare, ``compile_s``), which leaves every
    weight, BatchNorm statistic and optimizer state as it was. Its speed against timm's own compiled benchmark, and
    the designs tried and not kept: docs/profiling.md.
    """

    def __init__(self, config: RunConfig):
        super().__init__(config)
        tensor_optimizer = isinstance(self.optimizer, TensorRanger21)
        self.plan_tuned(WorkloadTraits(has_convolutions=HAS_CONVOLUTIONS, launch_bound=False,
                                       graph_safe_optimizer=tensor_optimizer, small_kernel_optimizer=True))
        if self.plan.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.backbone = self.compiled(FrozenBackbone(self.net, self.plan.channels_last))
        self.add_tuning_note("backbone: the frozen layers run without autograd, compiled as an inference graph")
        if tensor_optimizer:
            self.add_tuning_note("optimizer: Ranger21's update as device tensor operations (TensorRanger21): its "
                                 "schedule on the device, no host read per step")
        if self.plan.cuda_graphs:
            self.add_tuning_note("cuda_graphs: the whole training step (backbone, head forward and backward, "
                                 "optimizer) replayed as one CUDA graph per batch")
        else:
            self.add_tuning_note("backbone: the next batch's is queued before this batch's optimizer step")
        self.graph = None
        self.fc = self.distributed(self.net.fc)  # the one part that trains: a data-parallel run averages its gradients
        self.prepare(self.net, self.optimizer, self._capture_or_compile_training, self._compile_validation)

    def trained_forward(self) -> nn.Module:
        return self.net  # the training step calls the backbone without autograd and ``fc`` (self.fc)

    def make_optimizer(self, num_epochs: int, num_batches_per_epoch: int):
        if self.config.optimizer != "ranger21":
            return super().make_optimizer(num_epochs, num_batches_per_epoch)
        return make_tensor_ranger21(self.net, num_epochs, num_batches_per_epoch)

    def features(self, uint8_images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), self.autocast():
            return self.backbone(uint8_images)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return self.fc(features)

    def step(self, features: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        output = self.head(features)
        with self.autocast():
            loss = self.loss(output, y)
        self.optimizer.zero_grad()
        backward_and_step(loss, self.optimizer, self.scaler)
        return loss.detach(), (output.argmax(1) == y).sum()

    def valid_loss(self, uint8_images: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return self.loss(self.head(self.features(uint8_images)), y)

    def model_input(self, uint8_images: torch.Tensor) -> torch.Tensor:
        return uint8_images  # converted inside the compiled backbone

    def train_epoch(self, waits: Stopwatch) -> torch.Tensor:
        self.net.train()
        if self.graph is not None:
            return self._replayed_epoch(waits)
        batch_size = self.config.scale.batch_size
        order = self.shuffled_order(len(self.train_x))
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        features_next = self.features(self.train_x[order[:batch_size]])
        for start in waits.iterate(range(0, len(order), batch_size)):
            features = features_next
            if start + batch_size < len(order):  # the next batch's backbone, queued before this optimizer step
                features_next = self.features(self.train_x[order[start + batch_size:start + 2 * batch_size]])
            loss, batch_correct = self.step(features, self.train_y[order[start:start + batch_size]])
            correct += batch_correct
        self.scheduler.step()
        return loss  # the last batch's loss, as the post reports

    def _replayed_epoch(self, waits: Stopwatch) -> torch.Tensor:
        """Each full batch gathered into the graph's input buffers, then one replay; a last, smaller batch (the
        full scale's 848 images) does not fit the captured shapes and runs eagerly."""
        batch_size = self.config.scale.batch_size
        order = self.shuffled_order(len(self.train_x))
        self.optimizer.load_schedule()  # this epoch's lr and beta1, as CyclicLR left them
        self.static_correct.zero_()
        loss = self.static_loss
        for start in waits.iterate(range(0, len(order), batch_size)):
            index = order[start:start + batch_size]
            if len(index) < batch_size:
                loss, batch_correct = self.step(self.features(self.train_x[index]), self.train_y[index])
                self.static_correct += batch_correct
                continue
            torch.index_select(self.train_x, 0, index, out=self.static_x)
            torch.index_select(self.train_y, 0, index, out=self.static_y)
            self.graph.replay()
        self.scheduler.step()
        return loss.clone()  # the last batch's loss, as the post reports

    def _graph_step(self) -> None:
        """One training step on the graph's input buffers, graph-safe: no host read, nothing kept between calls
        but the parameters, the optimizer's tensors, the loss and the correct count."""
        output = self.head(self.features(self.static_x))
        with self.autocast():
            loss = self.loss(output, self.static_y)
        loss.backward()
        self.optimizer.update()
        # Set to None, as torch.cuda.graphs' whole-network example does: the next captured backward writes fresh
        # gradients (in the graph's memory pool) instead of adding into zeroed ones.
        self.optimizer.zero_grad(set_to_none=True)
        self.static_loss.copy_(loss.detach())
        self.static_correct += (output.argmax(1) == self.static_y).sum()

    def _capture_or_compile_training(self) -> None:
        """Capture the training step (which compiles the backbone on the way), or compile it on real shapes."""
        batch = self.config.scale.batch_size
        self.net.train()
        if not self.plan.cuda_graphs:
            with self.autocast():
                loss = self.loss(self.head(self.features(self.train_x[:batch])), self.train_y[:batch])
            loss.backward()
            return
        self.static_x = self.train_x[:batch].clone()
        self.static_y = self.train_y[:batch].clone()
        self.static_loss = torch.zeros((), device=self.device)
        self.static_correct = torch.zeros((), device=self.device, dtype=torch.long)
        self.optimizer.load_schedule()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(GRAPH_WARMUP_STEPS):
                self._graph_step()
        torch.cuda.current_stream().wait_stream(side)
        self.optimizer.zero_grad(set_to_none=True)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._graph_step()
        # Weights, BatchNorm statistics and the optimizer's state are restored by prepare().

    def _compile_validation(self) -> None:
        valid_batch = self.config.scale.valid_batch_size
        self.net.eval()
        with torch.no_grad():
            self.valid_loss(self.valid_x[:valid_batch], self.valid_y[:valid_batch])


# The pipelines this workload offers (base.WorkloadModule).
RUNS = {"seed": SeedRun, "resident": ResidentRun, "tuned": TunedRun}
