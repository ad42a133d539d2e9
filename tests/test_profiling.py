"""profiling.breakdown on hand-made traces: how the GPU timeline is cut into kinds (cuda cannot run in CI)."""

from __future__ import annotations

import pytest

from devicebench.profiling import KINDS, ROUND_RANGE, breakdown, classify


def host(name, ts, dur, cat="user_annotation"):
    return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "pid": 1, "tid": 1}


def kernel(name, ts, dur, correlation, cat="kernel"):
    return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "pid": 0, "tid": 7,
            "args": {"correlation": correlation}}


def launch(ts, correlation):
    return {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "ts": ts, "dur": 5, "pid": 1, "tid": 1,
            "args": {"correlation": correlation}}


def test_gpu_timeline_is_cut_into_kinds_that_add_up_to_the_round():
    events = [
        host(ROUND_RANGE, 0, 1000),
        host("Optimizer.step#Ranger21.step", 600, 300),
        host("_compile.compile_inner (dynamo_timed)", 900, 50, cat="cpu_op"),
        launch(10, 1), kernel("sm90_xmma_gemm_bf16bf16_bf16f32", 100, 200, 1),
        launch(20, 2), kernel("triton_poi_fused_relu_threshold_backward_0", 300, 100, 2),
        launch(30, 4), kernel("Memcpy HtoD (Pageable -> Device)", 400, 50, 4, cat="gpu_memcpy"),
        launch(650, 3), kernel("void at::native::vectorized_elementwise_kernel<4, add>", 700, 50, 3),  # in the step
    ]
    seconds_total, seconds, in_step = breakdown(events, device_timeline=True)
    assert seconds_total == pytest.approx(1000e-6)
    expected = {"matmul_conv": 200, "norm_elementwise": 100, "data_movement": 50, "optimizer": 50,
                "compilation": 50, "host_gaps": 550}
    assert set(seconds) == set(KINDS)
    assert seconds == pytest.approx({kind: us * 1e-6 for kind, us in expected.items()})
    assert in_step == pytest.approx(250e-6)  # the GPU idle while the host was in the optimizer step


def test_overlapping_kernels_are_counted_once():
    events = [host(ROUND_RANGE, 0, 100), launch(1, 1), kernel("ampere_sgemm_128x64", 0, 60, 1),
              launch(2, 2), kernel("triton_red_fused_native_batch_norm_0", 40, 40, 2)]
    _, seconds, _ = breakdown(events, device_timeline=True)
    assert sum(seconds.values()) == pytest.approx(100e-6)
    assert seconds["matmul_conv"] == pytest.approx(40e-6) and seconds["norm_elementwise"] == pytest.approx(40e-6)


@pytest.mark.parametrize("name, kind", [
    ("nvjet_tst_128x256_64x4_2x1_v_bz_coopA_TNN", "matmul_conv"),  # cuBLAS on H100
    ("void cudnn::bn_fw_tr_1C11_kernel_NCHW<float, float, int, 512, true, 1, true>", "norm_elementwise"),
    ("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc", "matmul_conv"),
    ("triton_tem_fused_convolution_0", "matmul_conv"),
    ("void at::native::(anonymous namespace)::indexSelectLargeIndex<float, long>", "data_movement"),
    ("void at::native::FusedAdamMathFunctor<float, 4>", "optimizer"),
    ("aten::addmm", "matmul_conv"), ("aten::add_", "norm_elementwise"), ("aten::index_select", "data_movement"),
    ("triton_per_fused__log_softmax_nll_loss_forward_0", "norm_elementwise"),
])
def test_kernel_names_map_to_kinds(name, kind):
    assert classify(name) == kind


def test_a_trace_without_the_round_is_refused():
    with pytest.raises(ValueError, match="not a devicebench profile"):
        breakdown([host("something", 0, 10)], device_timeline=True)


def test_compare_shows_the_breakdowns_side_by_side(tmp_path, capsys):
    import json
    from pathlib import Path

    from devicebench import cli

    runs = []
    for index, matmul_ms in enumerate((30.0, 10.0)):
        data = json.loads((Path(__file__).resolve().parent / "runs/aa_first.json").read_text())
        for bench in data["benchmarks"]:
            seconds = dict.fromkeys(KINDS, 0.0) | {"matmul_conv": matmul_ms / 1e3, "host_gaps": 0.01}
            bench["extra_info"]["profile"] = {"basis": "GPU timeline (kernels)", "round_seconds": 0.04,
                                              "traced_seconds": 0.04, "seconds": seconds,
                                              "host_gaps_in_optimizer_step": 0.0, "trace": "t.trace.json.gz"}
        runs.append(tmp_path / f"run{index}.json")
        runs[-1].write_text(json.dumps(data))
    # The breakdowns are part of the full tables (--details); the default view is one line per row and run.
    assert cli.main(["compare", *map(str, runs), "--details"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "matmul_conv" in line]
    assert lines and all("30.0 ms (75%)" in line and "10.0 ms (50%)" in line for line in lines)
