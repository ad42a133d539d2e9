"""char_gpt: Tiny Shakespeare's download and verification, the model's sizes and FLOP formula, the schedule, and
its pipelines training the same math on the cpu."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from devicebench import rows
from devicebench.data import shakespeare
from devicebench.data.download import RemoteFile
from devicebench.errors import DataError
from devicebench.options import RowOptions
from devicebench.scales import scale_for
from devicebench.workloads import char_gpt, mnist_mlp
from devicebench.workloads.base import RunConfig, Stopwatch, build
from devicebench.workloads.gpt_model import GPTSizes, flops_per_token, non_embedding_parameters

# The copy the project keeps beside the repository (CI has it too): the real file, to check its facts.
SHARED_COPY = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare" / "input.txt"
TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 40


def remote_for(url: str, content: bytes) -> RemoteFile:
    return RemoteFile(url=url, filename="tinyshakespeare/input.txt", algorithm="sha256",
                      digest=hashlib.sha256(content).hexdigest(), offline_hint="run with --data synthetic")


def config(pipeline: str, scale: str = "quick", data_dir: Path = Path("."), data_mode: str = "synthetic"):
    return RunConfig(device=torch.device("cpu"), pipeline=pipeline, scale=scale_for("char_gpt", scale),
                     data_mode=data_mode, data_dir=data_dir)


# ------------------------------------------------------------------------------------------------- data
@pytest.mark.skipif(not SHARED_COPY.is_file(), reason=f"no shared copy of Tiny Shakespeare at {SHARED_COPY}")
def test_the_real_file_has_the_published_checksum_and_65_characters(tmp_path):
    content = SHARED_COPY.read_bytes()
    assert len(content) == shakespeare.TEXT_BYTES
    assert hashlib.sha256(content).hexdigest() == shakespeare.SHAKESPEARE_FILE.digest
    splits, source = shakespeare.load_shakespeare("real", SHARED_COPY.parents[1])
    assert source == "real" and splits.vocab_size == shakespeare.VOCAB_SIZE == 65
    assert len(splits.train) == 1_003_854 and len(splits.train) + len(splits.valid) == shakespeare.TEXT_BYTES


def test_download_is_verified_and_a_second_run_uses_the_cache(http_server, tmp_path):
    content = TEXT.encode()
    url = http_server.serve("/input.txt", content)
    splits, source = shakespeare.load_shakespeare("real", tmp_path, remote_for(url, content))
    assert source == "real" and splits.vocab_size == len(set(TEXT))
    assert (tmp_path / "tinyshakespeare" / "input.txt").read_bytes() == content
    shakespeare._load.cache_clear()
    shakespeare.load_shakespeare("real", tmp_path, remote_for(url, content))
    assert http_server.routes["/input.txt"].hits == 1


def test_a_corrupt_or_truncated_download_is_refused_and_nothing_is_left(http_server, tmp_path):
    content = TEXT.encode()
    tampered = http_server.serve("/tampered.txt", content.replace(b"speak", b"SPEAK"))
    with pytest.raises(DataError, match="sha256 is .* expected"):
        shakespeare.load_shakespeare("real", tmp_path / "a", remote_for(tampered, content))
    truncated = http_server.serve("/cut.txt", content, truncate_to=100)
    with pytest.raises(DataError, match="after 3 attempts"):
        shakespeare.load_shakespeare("real", tmp_path / "b", remote_for(truncated, content))
    for folder in (tmp_path / "a" / "tinyshakespeare", tmp_path / "b" / "tinyshakespeare"):
        assert list(folder.iterdir()) == []


def test_offline_auto_falls_back_to_synthetic_text_and_says_so(closed_port_url, tmp_path, capsys):
    remote = remote_for(closed_port_url + "/input.txt", TEXT.encode())
    splits, source = shakespeare.load_shakespeare("auto", tmp_path, remote)
    assert source == "synthetic" and splits.vocab_size == 65
    assert len(splits.train) + len(splits.valid) == shakespeare.TEXT_BYTES
    assert "real data unavailable, using synthetic data" in capsys.readouterr().err
    with pytest.raises(DataError, match="--data synthetic"):
        shakespeare.load_shakespeare("real", tmp_path, remote)


def test_synthetic_text_is_deterministic_and_uses_the_whole_vocabulary():
    one, two = shakespeare.synthetic_tokens(seed=3), shakespeare.synthetic_tokens(seed=3)
    assert torch.equal(one.train, two.train) and set(one.train.unique().tolist()) == set(range(65))


# ------------------------------------------------------------------------------------- model and formula
def test_standard_scale_is_shakespeare_chars_model_with_nanogpts_parameter_count():
    sizes = char_gpt.sizes_of(scale_for("char_gpt", "standard"), 65)
    assert sizes == GPTSizes(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=65, dropout=0.2)
    model = char_gpt.make_model(sizes, 0)
    total = sum(p.numel() for p in model.parameters())  # the tied embedding counted once
    assert non_embedding_parameters(sizes) == total - model.wpe.weight.numel() == 10_646_784  # "10.65M"


def test_the_flop_formula_matches_torchs_count_of_a_training_step():
    """6N + 12·L·H·Q·T per token against FlopCounterMode's count of a forward and backward (matrix products and
    attention; it leaves out the LayerNorm weights the formula's N includes, under 1% here)."""
    sizes = GPTSizes(n_layer=2, n_head=2, n_embd=64, block_size=64, vocab_size=65, dropout=0.0)
    model = char_gpt.make_model(sizes, 0)
    tokens = torch.randint(65, (2, 64))
    with FlopCounterMode(display=False) as counter:
        char_gpt.token_loss(model(tokens), tokens).backward()
    counted_per_token = counter.get_total_flops() / tokens.numel()
    assert counted_per_token == pytest.approx(flops_per_token(sizes), rel=0.01)
    assert char_gpt.flop_counts(scale_for("char_gpt", "quick")).train_per_sample == flops_per_token(sizes) * 64


def test_gpt2_scale_is_bench_py_sized_and_skips_on_the_cpu_saying_why():
    scale = scale_for("char_gpt", "gpt2")
    sizes = char_gpt.sizes_of(scale)
    assert (sizes.n_layer, sizes.n_embd, sizes.block_size, sizes.vocab_size, scale.batch_size) == \
        (12, 768, 1024, 50304, 12)
    reason = rows.skip_reason(char_gpt, "cpu", "gpt2")
    assert "sized for accelerators" in reason
    assert rows.skip_reason(char_gpt, "cuda", "gpt2") is None
    assert rows.skip_reason(mnist_mlp, "cuda", "gpt2") == "mnist_mlp has no gpt2 scale (it has quick, standard, full)"


def test_the_schedule_is_nanogpts():
    assert char_gpt.learning_rate(0) == pytest.approx(1e-3 / 101)
    assert char_gpt.learning_rate(99) == pytest.approx(1e-3 * 100 / 101)
    assert char_gpt.learning_rate(100) == pytest.approx(1e-3)
    assert char_gpt.learning_rate(2550) == pytest.approx(1e-4 + 0.5 * (1 + math.cos(math.pi * 0.5)) * 9e-4)
    assert char_gpt.learning_rate(5001) == 1e-4


def test_weight_decay_reaches_matrices_only():
    model = char_gpt.make_model(GPTSizes(2, 2, 64, 64, 65), 0)
    decayed, plain = char_gpt.make_optimizer(model).param_groups
    assert decayed["weight_decay"] == 0.1 and all(p.dim() == 2 for p in decayed["params"])
    assert plain["weight_decay"] == 0.0 and all(p.dim() == 1 for p in plain["params"])


# ---------------------------------------------------------------------------------------------- pipelines
def test_seed_and_resident_train_the_same_windows_to_the_same_loss():
    """Dropout off, so the two pipelines' only difference is where the windows are gathered."""
    scale = scale_for("char_gpt", "quick")
    losses = {}
    for pipeline in ("seed", "resident"):
        run = build(char_gpt, config(pipeline))
        for block in run.model.blocks:
            block.attn.dropout = 0.0
        run.model.apply(lambda module: setattr(module, "p", 0.0) if isinstance(module, torch.nn.Dropout) else None)
        losses[pipeline] = (float(run.train_epoch(Stopwatch())), float(run.validate(Stopwatch())))
        assert run.samples_per_round == scale.train_samples and run.iteration == 8
    assert losses["seed"] == pytest.approx(losses["resident"], rel=1e-5)


def test_a_round_lowers_the_validation_loss_on_real_text(tmp_path):
    if not SHARED_COPY.is_file():
        pytest.skip(f"no shared copy of Tiny Shakespeare at {SHARED_COPY}")
    run = build(char_gpt, config("resident", data_dir=SHARED_COPY.parents[1], data_mode="real"))
    before = float(run.validate(Stopwatch()))
    for _ in range(3):
        run.run_round()
    assert run.data_source == "real" and float(run.validate(Stopwatch())) < before - 0.3
    assert run.describe()["tokens_per_sample"] == 64 and run.describe()["iterations_per_round"] == 8


def test_parity_case_trains_without_dropout():
    case = char_gpt.parity_case()
    assert len(case.batches) == 3 and all(x.shape == (8, 32) for x, _ in case.batches)
    assert all(module.p == 0.0 for module in case.model.modules() if isinstance(module, torch.nn.Dropout))


def test_rows_of_the_built_in_workloads_run_in_pytests_file_order():
    from devicebench.workloads import BUILT_IN

    names = [spec.name for spec in rows.select(RowOptions(devices=("cpu",), pipelines=("seed",)))]
    assert {"test_char_gpt[cpu-seed]", "test_mnist_mlp[cpu-seed]", "test_resnet18_cifar[cpu-seed]"} <= set(names)
    assert names == sorted(f"test_{name}[cpu-seed]" for name in BUILT_IN)  # benchmarks/test_<name>.py's order


def test_the_tuned_step_in_float16_goes_through_the_grad_scaler_as_nanogpts_does():
    # float16 is what the tuned row picks on mps with torch 2.5 and on Volta/Turing GPUs; its small gradients need
    # the scaler (nanoGPT: GradScaler(enabled=dtype == 'float16')). Here on the cpu, compiled code left out.
    from dataclasses import replace

    from devicebench.tuning import TuningOptions

    tuning = TuningOptions(dtype="float16", compile=False, cuda_graphs=False)
    run = build(char_gpt, replace(config("tuned"), tuning=tuning))
    assert run.plan.dtype == "float16" and run.scaler is not None
    scaled = []
    original = run.scaler.scale
    run.scaler.scale = lambda loss: scaled.append(loss) or original(loss)
    loss = float(run.train_epoch(Stopwatch()))
    assert len(scaled) == run.iteration and math.isfinite(loss)  # every step of the round, scaled
