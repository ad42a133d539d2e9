"""devicebench scaling (scaling.py, distributed.py) without launching anything: the views' shares, the launch order,
what is refused, how a failed launch is named by rank, and the figures made from launches."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from devicebench import cli, distributed, results, scaling, scaling_report
from devicebench.errors import UsageError
from devicebench.options import RowOptions
from devicebench.scales import scale_for


@dataclass(frozen=True)
class FakeRow:
    name: str
    device: str = "cpu"


@dataclass(frozen=True)
class FakePlan:
    rows: tuple
    options: RowOptions = RowOptions()


def plan_of(*devices: str) -> FakePlan:
    return FakePlan(tuple(FakeRow(f"test_x[{device}-resident]", device) for device in devices))


def test_weak_view_keeps_the_scale_and_strong_view_shares_batch_and_epoch_out():
    scale = scale_for("mnist_mlp", "quick")
    assert distributed.rank_scale(scale, 4, "weak") == scale
    shared = distributed.rank_scale(scale, 4, "strong")
    assert (shared.batch_size, shared.train_samples, shared.valid_samples) == (125, 5000, 500)
    assert shared.train_samples / shared.batch_size == scale.train_samples / scale.batch_size  # same steps
    with pytest.raises(UsageError, match=r"batch_size 500.*do not divide by 3"):
        distributed.rank_scale(scale, 3, "strong")


def test_world_sizes_take_turns_and_each_gets_every_launch():
    run = scaling.Scaling(plan_of("cpu"), (1, 2, 4), ("weak",), 3, 300.0)
    order = [size for _, _, size in run.order()]
    assert order == [1, 2, 4, 2, 4, 1, 4, 1, 2]
    assert all(order.count(size) == 3 for size in (1, 2, 4))


@pytest.mark.parametrize("devices, sizes, gpus, message", [
    (("mps",), (1, 2), 0, "mps has no torch.distributed backend"),
    (("cpu", "cuda"), (1, 2), 1, "one device type at a time"),
    (("cpu",), (2, 4), 0, "must include 1"),
    (("cuda",), (1, 8), 1, "needs 8 GPUs on this host and it has 1"),
])
def test_what_cannot_run_is_refused_before_any_launch(devices, sizes, gpus, message):
    with pytest.raises(UsageError, match=message):
        scaling.check(scaling.Scaling(plan_of(*devices), sizes, ("weak",), 1, 300.0), gpus)


def test_rows_that_cannot_run_here_are_skipped_with_their_reason_before_any_launch():
    from devicebench.coordinator import Plan
    from devicebench.rows import RowSpec

    def plan(scale: str) -> Plan:
        return Plan(tuple(RowSpec(name, f"devicebench.workloads.{name}", "cpu", "resident")
                          for name in ("mnist_mlp", "char_gpt")), RowOptions(scale=scale))

    said: list[str] = []
    quick = scaling.runnable(scaling.Scaling(plan("quick"), (1, 2), ("weak",), 1, 300.0), said.append)
    assert len(quick.plan.rows) == 2 and said == []
    with pytest.raises(UsageError, match="none of the selected rows can run here"):
        scaling.runnable(scaling.Scaling(plan("gpt2"), (1, 2), ("weak",), 1, 300.0), said.append)
    assert said[0].startswith("    test_mnist_mlp[cpu-resident]: skipped: ") and "gpt2" in said[0]
    assert said[1].startswith("    test_char_gpt[cpu-resident]: skipped: char_gpt at --scale gpt2 is sized for "
                              "accelerators")


def test_a_rank_whose_run_wraps_nothing_is_refused_before_its_first_round(monkeypatch):
    # A workload that forgot WorkloadRun.distributed() would train each rank apart: refused at once, not after
    # its rounds.
    from dataclasses import replace

    import tiny_workload
    from test_benchmark_run import tiny_config

    from devicebench.workloads.base import DistributedRank

    config = replace(tiny_config(), distributed=DistributedRank(0, 0, 2, "weak"))
    monkeypatch.setattr(tiny_workload.ResidentRun, "distributed", lambda self, module, constant_buffers=False: module)
    run = tiny_workload.ResidentRun(config)
    with pytest.raises(UsageError, match="ResidentRun wraps no module with WorkloadRun.distributed"):
        run.run_round()
    run.ranks_share_gradients = True  # as WorkloadRun.distributed sets it when it wraps
    assert run.run_round().seconds > 0


def test_several_hosts_meet_through_torchruns_rendezvous():
    topology = scaling.Topology(nodes=2, node_rank=1, rendezvous="host:29400")
    assert topology.torchrun_arguments(16) == ["--nnodes", "2", "--node-rank", "1", "--rdzv-backend", "c10d",
                                               "--rdzv-endpoint", "host:29400", "--nproc-per-node", "8"]
    assert scaling.Topology().torchrun_arguments(2) == ["--standalone", "--nproc-per-node", "2"]
    with pytest.raises(UsageError, match="does not divide over 2 nodes"):
        topology.torchrun_arguments(3)


def status(state: str, row: str | None = "test_x[cpu-resident]", round_: int = 2, reason: str | None = None,
           lost: bool = False, collectives: int | None = None) -> dict:
    return {"rank": 0, "pid": 1, "host": "h", "state": state, "row": row, "round": round_, "reason": reason,
            "lost_a_peer": lost, "collectives": collectives}


LOG = Path("out/torchrun.log")


def test_a_rank_that_died_is_named_not_the_rank_that_lost_it():
    text = scaling.diagnose({0: status("failed", reason="RuntimeError: Connection reset by peer", lost=True,
                                       collectives=41),
                             1: status("running", collectives=40)}, 2, 1, LOG, False, 300)
    assert text.startswith("rank 1 of 2 died in test_x[cpu-resident] after round 2: it ended without a result")
    assert "after 40 collectives" in text and str(LOG) in text
    # A rank that died just after issuing its next bucket's all-reduce is ahead of the one that lost it: still dead.
    text = scaling.diagnose({0: status("failed", reason="RuntimeError: Connection reset by peer", lost=True,
                                       collectives=40),
                             1: status("running", collectives=41)}, 2, 1, LOG, False, 300)
    assert text.startswith("rank 1 of 2 died")


def test_without_counts_a_rank_that_ended_without_a_word_died():
    text = scaling.diagnose({0: status("interrupted"), 1: status("running")}, 2, 1, LOG, False, 300)
    assert text.startswith("rank 1 of 2 died in test_x[cpu-resident] after round 2")


def test_a_rank_that_stopped_answering_is_the_one_behind_in_collectives():
    # gloo: the others time out and fail; torchrun then stops the one that hung.
    text = scaling.diagnose({0: status("failed", reason="RuntimeError: timed out", lost=True, collectives=52),
                             1: status("interrupted", collectives=51),
                             2: status("failed", reason="timed out", lost=True, collectives=52)}, 3, 1, LOG, False, 5)
    assert text.startswith("rank 1 of 3 stopped answering in test_x[cpu-resident] after round 2: it issued 51 "
                           "collectives and the others 52, waiting for it (at most 5 s)")
    # NCCL: the others' watchdog aborts them (no word from them); the one behind is still the one to blame.
    text = scaling.diagnose({0: status("running", collectives=52), 1: status("interrupted", collectives=51)},
                            2, -6, LOG, False, 5)
    assert text.startswith("rank 1 of 2 stopped answering")


def test_without_counts_the_ranks_that_lost_a_peer_point_at_the_other():
    text = scaling.diagnose({0: status("failed", reason="timed out", lost=True), 1: status("interrupted")},
                            2, 1, LOG, False, 5)
    assert text.startswith("rank 1 of 2 stopped answering in test_x[cpu-resident] after round 2: rank 0 lost it")


def test_a_rank_that_failed_on_its_own_is_named_with_its_reason():
    text = scaling.diagnose({0: status("interrupted"), 1: status("failed", reason="DeviceOutOfMemory: cuda ran out")},
                            2, 1, LOG, False, 300)
    assert text.startswith("rank 1 of 2 failed in test_x[cpu-resident] after round 2: DeviceOutOfMemory")


def test_a_launch_that_made_no_progress_is_stopped_and_said_so():
    text = scaling.diagnose({0: status("interrupted", row=None, round_=0), 1: None}, 2, -15, LOG, True, 30)
    assert text.startswith("no rank of 2 made progress (a round or a collective) for 90 s before its first row")


@pytest.mark.parametrize("message, lost", [
    ("[gloo/transport/tcp/pair.cc:545] Read error: Connection reset by peer", True),
    ("[third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting 5000ms for recv operation", True),
    ("DataLoader timed out after 5 seconds", False),
    ("CUDA out of memory. Tried to allocate 2.00 GiB", False),
    ("expected scalar type Float but found Half", False),
])
def test_an_error_is_blamed_on_a_peer_only_when_a_collective_lost_one(message, lost):
    assert distributed.lost_a_peer(RuntimeError(message)) is lost


def test_collectives_in_a_trace_are_counted_once_where_they_overlap():
    assert distributed.is_collective_event("ncclDevKernel_AllReduce_Sum_f32_RING_LL(ncclDevKernelArgsStorage)")
    assert distributed.is_collective_event("gloo:all_reduce")
    assert not distributed.is_collective_event("aten::addmm")
    assert distributed.covered_seconds([(0, 10), (5, 15), (20, 30), (22, 25)]) == 25


def launch_row(world_size: int, rank_train_seconds: list[list[float]], samples: int = 100) -> dict:
    ranks = [{"round_seconds": [t + 0.1 for t in times], "train_seconds": times, "val_seconds": [0.1] * len(times)}
             for times in rank_train_seconds]
    return {"name": "test_x[cpu-resident]", "extra": {
        "samples_per_round": samples, "world_size": world_size, "communication_share": 0.25,
        "all_reduce_bytes_per_step": 2048, "processes": [{**ranks[0], "ranks": ranks}]}}


def test_a_launchs_round_lasts_as_long_as_its_slowest_rank():
    row = scaling.merge_ranks(launch_row(2, [[1.0, 2.0, 1.0], [1.5, 1.0, 1.0]]))
    process = row["extra"]["processes"][0]
    assert process["train_seconds"] == [1.5, 2.0, 1.0]
    assert process["ranks_samples_per_s"] == pytest.approx(2 * 100 / 1.5)
    assert process["rank_train_seconds"] == [[1.0, 2.0, 1.0], [1.5, 1.0, 1.0]]


def scaling_file(per_size: dict[int, list[float]]) -> dict:
    launches = []
    for size, seconds in per_size.items():
        for repetition, time in enumerate(seconds):
            launches.append({"world_size": size, "view": "weak", "repetition": repetition,
                             "rows": [scaling.merge_ranks(launch_row(size, [[time] * 3] * size))]})
    return {"devicebench": {"scaling": scaling.SCALING_FORMAT, "interrupted": False}, "launches": launches}


def test_efficiency_is_total_speed_over_n_times_one_device_with_an_interval_from_the_launches():
    # Weak view: each rank does one device's epoch; at N = 2 a round takes 1.25x as long, so E = 0.8.
    data = scaling_file({1: [1.00, 1.02, 0.98], 2: [1.25, 1.27, 1.23]})
    found = {item.world_size: item for item in scaling_report.efficiencies(data)}
    assert found[1].efficiency == pytest.approx(1.0)
    assert found[2].efficiency == pytest.approx(0.8, rel=0.01)
    low, high = found[2].interval
    assert low < 0.8 < high and high - low < 0.1
    text = scaling_report.report(data)
    assert "x[cpu-resident]" in text and "0.80" in text and "25%" in text and "2.0 kB" in text
    data["launches"][-1]["rows"][0]["extra"]["tokens_per_sample"] = 256  # a char_gpt row says its tokens too
    assert f"{256 * 2 * 100 / 1.25:,.0f}" in scaling_report.report(data)


def test_launches_of_one_world_size_far_apart_mark_the_efficiency_unstable():
    # On a busy VM one rank ran 2,035 and 6,611 samples/s in two launches, and E(2) read 13.12 without a word.
    data = scaling_file({1: [1.0, 3.25], 2: [0.1, 0.11]})
    text = scaling_report.report(data)
    assert "UNSTABLE: launches of one world size differ beyond 1.5x (x[cpu-resident] weak N=1 3.25x)" in text
    assert "UNSTABLE" not in scaling_report.report(scaling_file({1: [1.00, 1.02], 2: [1.25, 1.27]}))


def test_with_both_views_one_rank_runs_once_and_is_the_base_of_both():
    run = scaling.Scaling(plan_of("cpu"), (1, 2), ("weak", "strong"), 2, 300.0)
    assert run.order() == [(0, "weak", 1), (0, "weak", 2), (0, "strong", 2),
                           (1, "weak", 2), (1, "weak", 1), (1, "strong", 2)]
    # Strong view: two ranks share the epoch (50 samples each) and take 0.6 of one device's round: E = 1/(2 x 0.6).
    data = scaling_file({1: [1.00, 1.02], 2: [1.25, 1.23]})
    for repetition, time in enumerate([0.6, 0.61]):
        data["launches"].append({"world_size": 2, "view": "strong", "repetition": repetition, "rows": [
            scaling.merge_ranks(launch_row(2, [[time] * 3] * 2, samples=50))]})
    found = {(item.view, item.world_size): item for item in scaling_report.efficiencies(data)}
    assert set(found) == {("weak", 1), ("weak", 2), ("strong", 2)}
    assert found[("strong", 2)].efficiency == pytest.approx(1 / 1.2, rel=0.02)
    assert found[("strong", 2)].interval is not None


def test_one_launch_a_world_size_gives_efficiency_without_an_interval_and_says_how_to_get_one():
    data = scaling_file({1: [1.0], 2: [1.25]})
    found = {item.world_size: item for item in scaling_report.efficiencies(data)}
    assert found[2].efficiency == pytest.approx(0.8) and found[2].interval is None
    assert "E(N) has an interval from 2 launches a world size on" in scaling_report.report(data)


def test_a_data_parallel_row_is_another_experiment_than_a_single_process_row():
    extra = {"workload": "x", "workload_version": 1, "pipeline": "resident", "scale": "quick",
             "samples_per_round": 100, "device": "cpu", "device_name": "cpu"}
    single = results.Row("test_x", extra).identity
    ranks = results.Row("test_x", {**extra, "world_size": 2, "distributed_backend": "gloo",
                                   "scaling_view": "weak", "nccl_version": None, "gpu_topology": None}).identity
    assert single != ranks
    assert ("world_size", 2) in ranks.options


def test_a_file_of_another_kind_is_refused_by_name(tmp_path):
    path = tmp_path / "run.json"
    path.write_text('{"devicebench": {"schema": 3}, "benchmarks": []}')
    with pytest.raises(UsageError, match="scaling file format None"):
        scaling.load(path)


@pytest.mark.parametrize("arguments, message", [
    (["--world-sizes", "0,2"], "give world sizes such as 1,2,4"),
    (["--launches", "0"], "--launches 0: give 1 or more"),
    (["--nodes", "2"], "needs --rendezvous HOST:PORT"),
    (["--world-sizes", "2,4"], "must include 1"),
    (["--", "--device", "mps"], "mps has no torch.distributed backend"),
    (["--device", "cpu"], "row options (--device, --scale, -k, ...) go after --: devicebench scaling -- --device cpu"),
])
def test_bad_options_fail_naming_the_fix(arguments, message, capsys):
    try:
        code = cli.main(["scaling", *arguments])
    except SystemExit as exit:  # argparse's own refusals
        code = exit.code
    assert code == 2
    assert message in capsys.readouterr().err


def test_threads_are_shared_out_among_the_ranks_of_a_host(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(scaling.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    run = scaling.Scaling(plan_of("cuda"), (1, 2, 4), ("weak",), 1, 300.0)
    assert [scaling.threads_per_rank(run, n) for n in (1, 2, 4)] == [16, 8, 4]
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert scaling.threads_per_rank(run, 4) == 3


def test_on_several_hosts_every_world_size_divides_over_them_and_efficiency_is_against_the_smallest():
    run = scaling.Scaling(plan_of("cpu"), (2, 3), ("weak",), 1, 300.0, scaling.Topology(2, 0, "h:1"))
    with pytest.raises(UsageError, match="world size 3 does not divide over 2 nodes"):
        scaling.check(run, 0)
    data = scaling_file({2: [1.0, 1.0], 4: [1.25, 1.25]})
    found = {item.world_size: item for item in scaling_report.efficiencies(data)}
    assert found[4].efficiency == pytest.approx(0.8)
