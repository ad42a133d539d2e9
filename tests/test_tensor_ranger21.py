"""TensorRanger21 (the tuned pipeline's Ranger21) against ranger21.Ranger21 itself, on the cpu."""

import contextlib
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import CyclicLR

from devicebench.tensor_ranger21 import TensorRanger21, schedule_dtype

EPOCHS, BATCHES = 5, 10  # 50 steps: lookahead merges, both momentum parities, and the warm-down from step 36


def model(seed: int = 0) -> nn.Module:
    """A convolution (4-d kernels) in front of a linear head (the post's trainable layer: weight and bias)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))


def train(make_optimizer, seed: int = 0) -> list[torch.Tensor]:
    """The post's loop: a step per batch, CyclicLR stepped per epoch. Returns the parameters after 50 steps."""
    net = model(seed)
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = make_optimizer(params)
    scheduler = CyclicLR(optimizer, base_lr=1e-5, max_lr=0.1, step_size_up=2)  # lr and beta1 move each epoch
    data = torch.Generator().manual_seed(seed + 1)
    for _ in range(EPOCHS):
        for _ in range(BATCHES):
            x = torch.randn(16, 3, 8, 8, generator=data)
            y = torch.randint(0, 10, (16,), generator=data)
            optimizer.zero_grad()
            F.cross_entropy(net(x), y).backward()
            optimizer.step()
        scheduler.step()
    return [p.detach().clone() for p in net.parameters()]


def reference(**options):
    from ranger21 import Ranger21

    def make(params):
        with contextlib.redirect_stdout(io.StringIO()):  # its banners
            optimizer = Ranger21(params, lr=0.1, num_epochs=EPOCHS, num_batches_per_epoch=BATCHES, **options)
        optimizer.warmdown_displayed = True
        return optimizer
    return make


def tensor_version(**options):
    return lambda params: TensorRanger21(params, lr=0.1, num_epochs=EPOCHS, num_batches_per_epoch=BATCHES,
                                         **options)


def relative_difference(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return float((ours - theirs).abs().max() / theirs.abs().max())


@pytest.mark.parametrize("options", [
    dict(weight_decay=0, use_warmup=False, use_madgrad=False),  # the post's configuration
    dict(use_warmup=False),  # ranger21's default weight decay: stable weight decay from the variance sum
], ids=["post", "weight-decay"])
def test_parameters_after_50_steps_agree_with_ranger21_within_1e_6(options):
    with contextlib.redirect_stdout(io.StringIO()):
        theirs = train(reference(**options))
    ours = train(tensor_version(**options))
    differences = [relative_difference(a, b) for a, b in zip(ours, theirs)]
    assert max(differences) <= 1e-6, differences
    untrained = [p.detach() for p in model().parameters()]
    assert all(relative_difference(a, b) > 1e-3 for a, b in zip(ours, untrained))  # the run did train


def test_the_update_traces_as_one_graph_with_no_host_read():
    """fullgraph=True fails on any graph break: a .item(), a Python branch on a tensor, math on a device value."""
    net = model()
    optimizer = tensor_version(weight_decay=1e-4)(list(net.parameters()))
    F.cross_entropy(net(torch.randn(4, 3, 8, 8)), torch.randint(0, 10, (4,))).backward()
    optimizer.load_schedule()
    torch._dynamo.reset()
    traced = torch.compile(optimizer.update, backend="eager", fullgraph=True)
    traced()
    assert float(optimizer.step_count) == 1


def test_reset_state_returns_to_a_fresh_optimizer_in_place():
    net = model()
    optimizer = tensor_version()(list(net.parameters()))
    held = {name: tensor.data_ptr() for name, tensor in optimizer.state[net[3].weight].items()}
    for _ in range(3):
        F.cross_entropy(net(torch.randn(4, 3, 8, 8)), torch.randint(0, 10, (4,))).backward()
        optimizer.step()
    optimizer.reset_state()
    state = optimizer.state[net[3].weight]
    assert float(optimizer.step_count) == 0
    assert torch.count_nonzero(state["grad_ma"]) == 0 and torch.count_nonzero(state["variance_ma"]) == 0
    assert torch.equal(state["lookahead_params"], net[3].weight)
    assert {name: tensor.data_ptr() for name, tensor in state.items()} == held


def test_options_it_does_not_implement_are_refused_by_name():
    params = list(model().parameters())
    with pytest.raises(ValueError, match="use_madgrad=False only"):
        TensorRanger21(params, lr=0.1, num_epochs=1, num_batches_per_epoch=1, use_madgrad=True)
    with pytest.raises(TypeError, match="no_such_option"):
        TensorRanger21(params, lr=0.1, num_epochs=1, num_batches_per_epoch=1, no_such_option=1)
    with pytest.raises(ValueError, match="one parameter group"):
        TensorRanger21([{"params": params[:2]}, {"params": params[2:]}], lr=0.1, num_epochs=1,
                       num_batches_per_epoch=1)


def test_the_schedule_is_float64_except_on_mps_which_has_none():
    assert schedule_dtype(torch.device("cpu")) == schedule_dtype(torch.device("cuda")) == torch.float64
    assert schedule_dtype(torch.device("mps")) == torch.float32
