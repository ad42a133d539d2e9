"""The tuned pipeline's capability table, with faked machines, and its options."""

import pytest

from devicebench.errors import UsageError
from devicebench import tuning
from devicebench.tuning import FIXED_CHOICE_OPTIONS, BackendFacts, TuningOptions, WorkloadTraits, plan_tuning

MLP = WorkloadTraits(has_convolutions=False, launch_bound=True, graph_safe_optimizer=True)
CNN_RANGER = WorkloadTraits(has_convolutions=True, launch_bound=False, graph_safe_optimizer=False)
CNN_TENSOR_RANGER = WorkloadTraits(has_convolutions=True, launch_bound=False, graph_safe_optimizer=True,
                                   small_kernel_optimizer=True)
H100 = BackendFacts("cuda", (2, 11), cuda_capability=(9, 0), has_triton=True, has_cxx_compiler=True)
V100 = BackendFacts("cuda", (2, 11), cuda_capability=(7, 0), has_triton=True, has_cxx_compiler=True)
GTX1060 = BackendFacts("cuda", (2, 11), cuda_capability=(6, 1), has_triton=True, has_cxx_compiler=True)
CPU = BackendFacts("cpu", (2, 14), has_cxx_compiler=True)


def mps(version):
    return BackendFacts("mps", version, has_cxx_compiler=True)


def test_h100_gets_everything_for_the_mlp():
    plan = plan_tuning(H100, MLP, TuningOptions())
    assert (plan.dtype, plan.compiled, plan.cuda_graphs, plan.channels_last) == ("bfloat16", True, True, False)
    assert plan.notes == ("channels_last: no convolutions in this model",
                          "cudnn_benchmark: no convolutions in this model")


def test_cudnn_autotuning_belongs_to_the_plan_and_can_be_switched_off():
    assert plan_tuning(H100, CNN_RANGER, TuningOptions()).cudnn_benchmark is True
    off = plan_tuning(H100, CNN_RANGER, TuningOptions(cudnn_benchmark=False))
    assert off.cudnn_benchmark is False and "cudnn_benchmark: switched off by --tuned-off cudnn-benchmark" in off.notes


def test_h100_cnn_with_ranger21_gets_no_graphs_and_says_why():
    plan = plan_tuning(H100, CNN_RANGER, TuningOptions())
    assert (plan.dtype, plan.compiled, plan.channels_last, plan.cuda_graphs) == ("bfloat16", True, True, False)
    assert any(note.startswith("cuda_graphs:") for note in plan.notes)


def test_volta_uses_float16_with_a_scaler_and_therefore_no_graphs():
    plan = plan_tuning(V100, MLP, TuningOptions())
    assert plan.dtype == "float16" and plan.needs_grad_scaler and not plan.cuda_graphs
    assert "GradScaler" in " ".join(plan.notes)


def test_pascal_stays_float32_and_cannot_compile():
    plan = plan_tuning(GTX1060, MLP, TuningOptions())
    assert plan.dtype == "float32" and not plan.compiled and plan.cuda_graphs
    assert any("compute capability >= 7.0" in note for note in plan.notes)


def test_cpu_keeps_float32_unless_asked_and_compiles_with_a_compiler():
    plan = plan_tuning(CPU, MLP, TuningOptions())
    assert plan.dtype == "float32" and plan.compiled and not plan.cuda_graphs
    assert plan_tuning(CPU, MLP, TuningOptions(dtype="bfloat16")).dtype == "bfloat16"
    no_compiler = BackendFacts("cpu", (2, 14), has_cxx_compiler=False)
    assert not plan_tuning(no_compiler, MLP, TuningOptions()).compiled


@pytest.mark.parametrize("version, dtype", [((2, 4), "float32"), ((2, 5), "float16"), ((2, 6), "bfloat16"),
                                            ((2, 11), "bfloat16")])
def test_mps_autocast_by_torch_version(version, dtype):
    plan = plan_tuning(mps(version), CNN_RANGER, TuningOptions())
    assert plan.dtype == dtype
    assert not plan.compiled and not plan.cuda_graphs and plan.channels_last


def test_mps_bfloat16_on_old_torch_is_refused_with_the_reason():
    with pytest.raises(UsageError, match="bfloat16 autocast on mps needs torch >= 2.6"):
        plan_tuning(mps((2, 5)), MLP, TuningOptions(dtype="bfloat16"))


def test_each_option_switches_its_feature_off():
    assert plan_tuning(H100, MLP, TuningOptions(dtype="float32")).dtype == "float32"
    assert not plan_tuning(H100, MLP, TuningOptions(compile=False)).compiled
    assert not plan_tuning(H100, MLP, TuningOptions(cuda_graphs=False)).cuda_graphs
    assert not plan_tuning(H100, CNN_RANGER, TuningOptions(channels_last=False)).channels_last
    notes = plan_tuning(H100, MLP, TuningOptions(compile=False, cuda_graphs=False)).notes
    assert "compile: switched off by --tuned-off compile" in notes and "cuda_graphs: switched off by --tuned-off cuda-graphs" in notes


def test_unknown_dtype_is_a_usage_error():
    with pytest.raises(UsageError, match="--tuned-dtype"):
        TuningOptions(dtype="int8")


def test_prepare_leaves_weights_batchnorm_statistics_and_optimizer_state_as_they_were():
    """tuned.TunedSetup.prepare: what the preparation steps change is undone in place; its time is recorded."""
    import torch
    from torch import nn

    from devicebench.workloads.tuned import TunedSetup

    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    weights = [tensor.clone() for tensor in model.state_dict().values()]
    held = [tensor.data_ptr() for tensor in model.state_dict().values()]  # what a captured graph would hold

    def train_a_step():
        model(torch.rand(8, 4)).sum().backward()
        optimizer.step()

    setup = TunedSetup()
    setup.device = torch.device("cpu")
    setup.prepare(model, optimizer, train_a_step, train_a_step)
    for before, after, address in zip(weights, model.state_dict().values(), held):
        assert torch.equal(before, after) and after.data_ptr() == address
    assert all(torch.count_nonzero(param.grad) == 0 for param in model.parameters())
    state = optimizer.state[model[0].weight]
    assert float(state["step"]) == 0 and torch.count_nonzero(state["exp_avg"]) == 0
    assert setup.compile_seconds > 0


def test_a_compute_bound_step_is_captured_when_its_optimizer_is_small_kernels_on_the_device():
    assert plan_tuning(H100, CNN_TENSOR_RANGER, TuningOptions()).cuda_graphs
    assert plan_tuning(H100, CNN_TENSOR_RANGER, TuningOptions(compile=False)).cuda_graphs  # eager kernels too
    fp16 = plan_tuning(H100, CNN_TENSOR_RANGER, TuningOptions(dtype="float16"))
    assert not fp16.cuda_graphs and "GradScaler" in " ".join(fp16.notes)
    assert not plan_tuning(H100, CNN_TENSOR_RANGER, TuningOptions(cuda_graphs=False)).cuda_graphs
    assert not plan_tuning(CPU, CNN_TENSOR_RANGER, TuningOptions()).cuda_graphs


def test_launch_bound_workloads_compile_with_no_kernel_picked_by_timing():
    mlp = plan_tuning(H100, MLP, TuningOptions())
    assert mlp.fixed_kernel_choices
    options = mlp.compile_options()
    assert options and options.items() <= FIXED_CHOICE_OPTIONS.items()
    assert mlp.as_extra_info()["compile_options"] == options
    cnn = plan_tuning(H100, CNN_RANGER, TuningOptions())
    assert not cnn.fixed_kernel_choices and cnn.compile_options() == {}
    assert any(note.startswith("compile: kernels picked by timing") for note in cnn.notes)
    not_compiled = plan_tuning(H100, MLP, TuningOptions(compile=False))
    assert not_compiled.compile_options() == {} and "compile_options" not in not_compiled.as_extra_info()


def test_fixed_choice_options_leave_out_what_this_torch_lacks(monkeypatch):
    monkeypatch.setattr(tuning, "FIXED_CHOICE_OPTIONS",
                        {"triton.autotune_pointwise": False, "no_such_option": True, "triton.no_such_one": 1})
    assert tuning.fixed_choice_options() == {"triton.autotune_pointwise": False}
