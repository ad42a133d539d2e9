"""The rounds' core (affinity.py): which core each pair gets, pinning and giving back the thread's cores, what a
and what a row records."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

from devicebench import affinity, devices
from devicebench.measure import measure_row
from tests.doubles.fakes import RecordingTimer
import tiny_workload
from test_benchmark_run import tiny_config

needs_affinity = pytest.mark.skipif(not affinity.available() or len(affinity.allowed_cores()) < 2,
                                    reason="needs a thread affinity call and two cores")


def test_each_pair_gets_the_next_core_leaving_out_core_0():
    cores = [0, 1, 2, 3]
    assert [affinity.core_for_pair(index, cores) for index in range(1, 8)] == [1, 2, 3, 1, 2, 3, 1]
    assert [affinity.core_for_pair(index, [4, 9]) for index in (1, 2, 3)] == [4, 9, 4]
    # One core: a pinned thread would share it with everything else the process does, so nothing is pinned.
    assert affinity.core_for_pair(1, [0]) is None and affinity.core_for_pair(1, []) is None


def test_only_accelerator_rows_are_pinned():
    assert affinity.core_for_rounds("cuda", 3) == 3 and affinity.core_for_rounds("mps", 3) == 3
    assert affinity.core_for_rounds("cpu", 3) is None  # its work is the intra-op pool, which one core would change
    assert affinity.core_for_rounds("cuda", None) is None


@needs_affinity
def test_the_thread_runs_on_the_core_inside_the_block_and_gets_its_cores_back_after():
    before = os.sched_getaffinity(0)
    core = affinity.allowed_cores()[-1]
    with affinity.main_thread_on(core) as pinned:
        assert pinned == core and os.sched_getaffinity(0) == {core}
    assert os.sched_getaffinity(0) == before
    with pytest.raises(RuntimeError):  # given back on the way out of an error too
        with affinity.main_thread_on(core):
            raise RuntimeError
    assert os.sched_getaffinity(0) == before
    with affinity.main_thread_on(None) as pinned:
        assert pinned is None and os.sched_getaffinity(0) == before


def test_an_accelerator_rows_rounds_run_on_its_core_and_the_row_says_which(monkeypatch):
    # The tiny workload runs on the cpu; treated as an accelerator row here, its rounds must run on the core
    # (seen from inside every round, warm-up included) and the thread get its cores back afterwards.
    monkeypatch.setattr(affinity, "core_for_rounds", lambda device_type, core: core)
    seen: list[set] = []
    monkeypatch.setattr(devices, "sync", lambda device: seen.append(os.sched_getaffinity(0)))
    before = os.sched_getaffinity(0)
    core = affinity.allowed_cores()[-1]
    config = replace(tiny_config(), round_core=core)
    extra = measure_row(tiny_workload, config, "test cpu", RecordingTimer([]), count_steps=False)
    rounds = config.scale.warmup_rounds + config.scale.rounds
    assert seen[:2 * rounds] == [{core}] * (2 * rounds)  # two syncs a round: training and validation
    assert extra["round_core"] == core and os.sched_getaffinity(0) == before


def test_a_cpu_rows_rounds_are_never_pinned(monkeypatch):
    seen: list[set] = []
    if affinity.available():
        monkeypatch.setattr(devices, "sync", lambda device: seen.append(os.sched_getaffinity(0)))
    before = os.sched_getaffinity(0) if affinity.available() else None
    config = replace(tiny_config(), round_core=affinity.allowed_cores()[-1] if affinity.available() else 0)
    extra = measure_row(tiny_workload, config, "test cpu", RecordingTimer([]), count_steps=False)
    assert extra["round_core"] is None and all(cores == before for cores in seen)


def test_a_pinned_row_is_another_experiment_than_an_unpinned_one():
    from devicebench import compare, results

    fields = {"workload": "mnist_mlp", "workload_version": 1, "pipeline": "resident", "scale": "standard",
              "samples_per_round": 60000, "valid_samples": 10000, "batch_size": 100, "valid_batch_size": 100,
              "device": "cuda", "device_name": "NVIDIA H200", "round_seconds": [0.1]}
    free, unrecorded = results.Row("t", {**fields, "round_core": None}), results.Row("t", fields)
    pinned, other_core = results.Row("t", {**fields, "round_core": 3}), results.Row("t", {**fields, "round_core": 7})
    # Rows written before the field and rows not pinned are the same experiment; pinned rows, whatever the core,
    # are another one, and a comparison names the difference instead of calling it a change.
    assert free.identity == unrecorded.identity != pinned.identity == other_core.identity
    assert "pinned_rounds None -> True" in compare.why_not_comparable(pinned.identity, [free])
