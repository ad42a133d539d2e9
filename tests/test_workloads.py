"""The workloads on the cpu at toy sizes: they train, freeze what the post freezes, and load real-format data; every
built-in one has what the suite needs of it (docs/internals.md, "Adding a workload")."""

from __future__ import annotations

import sys

import pytest
import torch

from devicebench import parity, weights
from devicebench.errors import DataError, DevicebenchError, UsageError
from devicebench.scales import Scale, scale_for
from devicebench.workloads import BUILT_IN, get_workload, mnist_mlp, resnet18_cifar
from devicebench.workloads.base import RunConfig, build
from tests.doubles.datafiles import populate_cifar, tiny_cifar_archive

CPU = torch.device("cpu")


class NotATensor:
    """A pickled object of an arbitrary class: what weights_only=True must refuse to rebuild."""


def toy_scale(batch_size: int = 8, train: int = 16, valid: int = 8) -> Scale:
    return Scale(name="toy", train_samples=train, valid_samples=valid, batch_size=batch_size,
                 valid_batch_size=batch_size, warmup_rounds=0, rounds=2)


@pytest.mark.parametrize("pipeline", ["seed", "resident"])
def test_one_mnist_epoch_lowers_the_validation_loss(pipeline):
    scale = Scale("toy", train_samples=2000, valid_samples=500, batch_size=100, valid_batch_size=500,
                  warmup_rounds=0, rounds=1)
    run = build(mnist_mlp, RunConfig(device=CPU, pipeline=pipeline, scale=scale, data_mode="synthetic"))
    before, _ = run.final_evaluation()
    stats = run.run_round()
    after, accuracy = run.final_evaluation()
    assert after < before * 0.8, (before, after)
    assert accuracy > 0.2 and stats.seconds > 0 and run.samples_per_round == 2000


def test_mnist_pipelines_do_the_same_math():
    """seed and resident start from equal weights; with the same batches they would agree (parity tests that);
    here: both report a validation loss of the same model the same way."""
    scale = toy_scale(batch_size=500, train=1000, valid=1000)
    seed = build(mnist_mlp, RunConfig(device=CPU, pipeline="seed", scale=scale, data_mode="synthetic"))
    resident = build(mnist_mlp, RunConfig(device=CPU, pipeline="resident", scale=scale, data_mode="synthetic"))
    assert seed.validate(_NoWait()) == pytest.approx(float(resident.validate(_NoWait())), rel=1e-5)


class _NoWait:
    def iterate(self, iterable):
        return iter(iterable)


def test_frozen_backbone_stays_unchanged_while_fc_trains():
    run = build(resnet18_cifar, RunConfig(device=CPU, pipeline="resident", scale=toy_scale(), data_mode="synthetic",
                                         pretrained="no", optimizer="sgd"))
    before = {name: p.detach().clone() for name, p in run.net.named_parameters()}
    run.run_round()
    changed = {name for name, p in run.net.named_parameters() if not torch.equal(p, before[name])}
    assert changed == {"fc.weight", "fc.bias"}
    assert run.net.training is False  # validation left it in eval(); training re-enters train() each epoch


def test_batchnorm_statistics_update_in_train_mode():
    run = build(resnet18_cifar, RunConfig(device=CPU, pipeline="resident", scale=toy_scale(), data_mode="synthetic",
                                         pretrained="no"))
    running_mean = run.net.bn1.running_mean.clone()
    run.run_round()
    assert not torch.equal(running_mean, run.net.bn1.running_mean)


@pytest.mark.parametrize("optimizer", resnet18_cifar.OPTIMIZERS)
def test_each_optimizer_constructs_and_steps(optimizer, capsys):
    run = build(resnet18_cifar, RunConfig(device=CPU, pipeline="resident", scale=toy_scale(), data_mode="synthetic",
                                         pretrained="no", optimizer=optimizer))
    fc_before = run.net.fc.weight.detach().clone()
    stats = run.run_round()
    assert not torch.equal(fc_before, run.net.fc.weight) and stats.train_loss > 0
    assert "Ranger21" not in capsys.readouterr().out  # its banners are kept out of the output


def test_unknown_optimizer_is_a_usage_error():
    with pytest.raises(UsageError, match="choose one of ranger21, sgd, adam, adamw"):
        resnet18_cifar.make_optimizer("lion", resnet18_cifar.make_model(0), 1, 1)


def test_a_python_without_ranger21_is_told_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ranger21", None)  # None in sys.modules: the import raises ImportError
    with pytest.raises(DevicebenchError, match=r"trains with Ranger21.*`pip install ranger21` into it"):
        resnet18_cifar.make_optimizer("ranger21", resnet18_cifar.make_model(0), 1, 1)


def test_both_cifar_pipelines_load_the_real_format(http_server, tmp_path):
    populate_cifar(http_server, tmp_path / "data", tiny_cifar_archive(tmp_path / "a.tar.gz", seed=1))
    for pipeline, workers in [("seed", 0), ("seed", 1), ("resident", 0)]:
        config = RunConfig(device=CPU, pipeline=pipeline, scale=toy_scale(), data_mode="real",
                           data_dir=tmp_path / "data", pretrained="no", workers=workers)
        run = build(resnet18_cifar, config)
        stats = run.run_round()
        assert run.data_source == "real" and stats.seconds > 0
        assert run.describe()["pretrained"] == "none"


def test_seed_pipeline_images_go_through_pil_resize_to_96():
    run = build(resnet18_cifar, RunConfig(device=CPU, pipeline="seed", scale=toy_scale(), data_mode="synthetic",
                                         pretrained="no"))
    images, labels = next(iter(run.train_dataloader))
    assert images.shape == (8, 3, 96, 96) and images.dtype == torch.float32 and 0 <= images.min() <= images.max() <= 1


def test_resident_resize_matches_the_pil_pipeline_closely():
    """The on-device resize stands in for PIL's: same size and range, nearly the same pixels."""
    run = build(resnet18_cifar, RunConfig(device=CPU, pipeline="seed", scale=toy_scale(), data_mode="synthetic",
                                         pretrained="no"))
    pil_image, _ = run.train_dataloader.dataset[0]
    uint8 = torch.from_numpy(run.train_images[:1]).permute(0, 3, 1, 2)
    device_image = resnet18_cifar.to_model_input(uint8)[0]
    assert device_image.shape == pil_image.shape
    assert (device_image - pil_image).abs().mean() < 0.02


# ------------------------------------------------------------------------------------------------ weights
def test_backbone_weights_load_from_safetensors_and_the_head_is_new(tmp_path):
    from safetensors.torch import save_file

    source = resnet18_cifar.make_model(seed=7)
    imagenet_like = {k: v.contiguous() for k, v in source.state_dict().items() if not k.startswith("fc.")}
    imagenet_like["fc.weight"] = torch.zeros(1000, 512)  # the 1000-class head a real file has: dropped
    imagenet_like["fc.bias"] = torch.zeros(1000)
    path = tmp_path / "resnet18.safetensors"
    save_file(imagenet_like, str(path))
    loaded = resnet18_cifar.make_model(seed=8, weights_path=path)
    assert torch.equal(loaded.conv1.weight, source.conv1.weight)
    assert loaded.fc.weight.shape == (10, 512)


def test_torch_checkpoint_loads_with_weights_only(tmp_path):
    source = resnet18_cifar.make_model(seed=7)
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    assert torch.equal(resnet18_cifar.make_model(seed=1, weights_path=path).bn1.weight, source.bn1.weight)

    torch.save({"conv1.weight": NotATensor()}, tmp_path / "evil.pth")
    with pytest.raises(DataError, match="not a readable weights file"):
        weights.read_state_dict(tmp_path / "evil.pth")


def test_weights_of_another_model_are_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"conv1.weight": torch.zeros(3, 3)}, str(path))
    with pytest.raises(DataError, match="does not fit timm's resnet18"):
        resnet18_cifar.make_model(0, weights_path=path)


def test_pretrained_modes_offline(monkeypatch, closed_port_url, capsys):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    monkeypatch.setattr(weights, "HUB_URL", closed_port_url)
    assert weights.locate("no", None) == (None, "none")
    assert weights.locate("auto", None, probe_timeout_s=2) == (None, "none")
    assert "using random initialisation" in capsys.readouterr().err
    with pytest.raises(DataError, match="--pretrained no"):
        weights.locate("yes", None, probe_timeout_s=2)
    with pytest.raises(UsageError):
        weights.locate("maybe", None)


def test_registry_and_scales():
    assert get_workload("mnist_mlp") is mnist_mlp
    with pytest.raises(UsageError):
        get_workload("gpt2")
    assert scale_for("resnet18_cifar", "full").train_samples == 50_000
    assert scale_for("mnist_mlp", "full").rounds == 20
    with pytest.raises(UsageError):
        scale_for("mnist_mlp", "huge")


# ------------------------------------------------------------------------------ the workload contract (12)
@pytest.mark.slow
def test_a_third_workload_is_one_module_run_through_the_plugin_results_and_compare(tmp_path):
    """tests/tiny_workload.py is registered by naming it; no other file knows it."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from devicebench import cli
    from pytest_runs import SHARED_COMPILE_CACHE

    repo = Path(__file__).resolve().parents[1]
    outputs = []
    for index in (1, 2):
        out = tmp_path / f"tiny{index}.json"
        result = subprocess.run(
            [sys.executable, "-m", "pytest", str(repo / "benchmarks"), "-k", "tiny_linear", "--device", "cpu",
             "--scale", "quick", f"--benchmark-json={out}", "-p", "no:cacheprovider", "-q",
             # the second run reuses the first's compiled code (the tuned row's C++ compile is most of a run)
             "--compile-cache", "shared"],
            cwd=repo, capture_output=True, text=True, timeout=300,
            env={**os.environ, **SHARED_COMPILE_CACHE, "DEVICEBENCH_WORKLOADS": "tests.tiny_workload"})
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        outputs.append(out)
    rows = {bench["name"]: bench["extra_info"] for bench in json.loads(outputs[0].read_text())["benchmarks"]}
    assert sorted(rows) == ["test_workload[tiny_linear-resident-cpu]", "test_workload[tiny_linear-seed-cpu]",
                            "test_workload[tiny_linear-tuned-cpu]"]
    for extra in rows.values():
        assert extra["workload"] == "tiny_linear" and extra["samples_per_round"] == 4096
        assert extra["samples_per_s"] > 0 and len(extra["processes"][0]["train_seconds"]) == 5 and extra["dtype"] == "float32"
        process = extra["processes"][0]  # what the host did to its timed rounds (host.py), on Linux all of it
        assert len(process["page_faults_per_round"]) == len(process["preemptions_per_round"]) == 5
        assert process["median_page_faults"] >= 0 and 0 <= process["cpu_steal_fraction"] < 1
    # The tuned pipeline's setup comes from tuned.TunedSetup: its plan, its compile timing, its row fields.
    tuned = rows["test_workload[tiny_linear-tuned-cpu]"]
    assert tuned["compiled"] is True and tuned["compile_s"] > 0 and tuned["cuda_graphs"] is False
    assert "cuda_graphs: CUDA graphs exist on cuda only" in tuned["tuning_notes"]
    # Counts noise cannot move (counts.py): the second process, compiled code and all, counts what the first did.
    second = {bench["name"]: bench["extra_info"] for bench in json.loads(outputs[1].read_text())["benchmarks"]}
    for name, extra in rows.items():
        assert all(extra[field] == second[name][field] for field in ("ops_per_step", "kernels_per_step")), name
    assert cli.main(["compare", str(outputs[0]), str(outputs[1])]) == 0


def test_a_module_lacking_part_of_the_contract_fails_naming_the_missing_parts(monkeypatch):
    import types

    from devicebench.workloads import registered_workloads
    from devicebench.workloads.base import check_workload

    broken = types.ModuleType("broken_workload")
    broken.NAME, broken.VERSION, broken.RUNS = "broken", "1", {"fast": object}
    with pytest.raises(UsageError, match="VERSION should be a int; HAS_CONVOLUTIONS is missing; flop_counts is "
                                         "missing; parity_case is missing") as error:
        check_workload(broken)
    assert "RUNS names pipelines ['fast']" in str(error.value) and "not a WorkloadRun subclass" in str(error.value)
    import tiny_workload

    broken.VERSION, broken.HAS_CONVOLUTIONS, broken.RUNS = 1, False, tiny_workload.RUNS
    broken.flop_counts, broken.parity_case = lambda: None, tiny_workload.parity_case
    with pytest.raises(UsageError, match=r"flop_counts must take the scale \(flop_counts\(scale\)"):
        check_workload(broken)
    monkeypatch.setenv("DEVICEBENCH_WORKLOADS", "tests.no_such_module")
    with pytest.raises(UsageError, match="DEVICEBENCH_WORKLOADS names 'tests.no_such_module', which does not import"):
        registered_workloads()


@pytest.mark.parametrize("name", list(BUILT_IN))
def test_every_built_in_workload_has_its_benchmark_file_scales_and_a_parity_case_that_trains(name):
    # What docs/internals.md asks of a workload that joins the suite: a new one is checked here, not by a list.
    import importlib

    module = BUILT_IN[name]
    benchmark = importlib.import_module(f"benchmarks.test_{name}")
    assert benchmark.WORKLOAD is module and callable(getattr(benchmark, f"test_{name}", None))
    for scale_name in ("quick", "standard", "full"):
        assert scale_for(name, scale_name, module).rounds > 0
    report = parity.check(lambda: module.parity_case(steps=2), torch.device("cpu"))
    assert report.ok and report.max_loss_rel_diff == 0 and report.max_param_rel_diff == 0, report.mismatches


def test_a_benchmark_module_without_its_workload_named_fails_saying_how_and_one_that_parametrizes_runs(tmp_path):
    # Without WORKLOAD, pytest used to say only "fixture 'pipeline' not found"; a module that parametrizes pipeline
    # itself (one pipeline only) is a benchmark module too.
    from pytest_runs import run_pytest

    folder = tmp_path / "benchmarks"
    folder.mkdir()
    (folder / "test_forgot.py").write_text("def test_forgot(device, pipeline):\n    pass\n")
    (folder / "test_own.py").write_text("import pytest\n\n\n@pytest.mark.parametrize('pipeline', ['seed'])\n"
                                        "def test_own(device, pipeline):\n    assert pipeline == 'seed'\n")
    result = run_pytest(str(folder), "-p", "fixtures.plugin", "--device", "cpu", "-q", cwd=tmp_path)
    assert "1 passed, 1 error" in result.stdout, result.stdout[-2000:] + result.stderr[-2000:]
    assert ("test_forgot: a benchmark module names its workload module as WORKLOAD = <module>, or parametrizes "
            "pipeline itself (docs/internals.md, 'Adding a workload')") in result.stdout


def test_weights_that_are_no_file_are_refused_by_what_they_are(tmp_path):
    from devicebench import weights

    with pytest.raises(UsageError, match="no such file"):
        weights.locate("auto", tmp_path / "missing.safetensors")
    with pytest.raises(UsageError, match="not a regular file .*give the model.safetensors file itself"):
        weights.locate("auto", tmp_path)  # "no such file" named a folder that exists
