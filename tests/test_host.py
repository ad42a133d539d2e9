"""What the host did to a process's rounds (host.py): read around each round, kept per process."""

from __future__ import annotations

import json
from pathlib import Path

from devicebench import host, runfile, summary
from test_compare import RUNS


def test_cpu_steal_is_read_from_the_first_line_of_proc_stat_and_absent_where_there_is_none(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 5 50 800 10 1 2 32 7 0\ncpu0 50 2 25 400 5 0 1 16 3 0\n")
    assert host.cpu_ticks(str(stat)) == (32, 100 + 5 + 50 + 800 + 10 + 1 + 2 + 32)  # guest time is in user's
    stat.write_text("intr 1 2 3\n")
    assert host.cpu_ticks(str(stat)) is None
    assert host.cpu_ticks(str(tmp_path / "missing")) is None


def test_a_process_keeps_each_rounds_faults_and_preemptions_their_medians_and_the_steal_between_its_rounds():
    rounds = [host.Usage(10, 0), host.Usage(400, 3), host.Usage(12, 1)]
    fields = host.process_fields(rounds, (100, 10_000), (150, 11_000))
    assert fields == {"page_faults_per_round": [10, 400, 12], "preemptions_per_round": [0, 3, 1],
                      "median_page_faults": 12, "median_preemptions": 1, "cpu_steal_fraction": 0.05}
    assert host.process_fields([host.Usage(1, 1), None], None, None) == {}  # a round not counted: no lists
    assert host.round_counts(host.Usage(5, 1), host.Usage(9, 4)) == host.Usage(4, 3)
    assert host.round_counts(None, host.Usage(9, 4)) is None
    usage = host.usage()
    assert usage is not None and usage.page_faults > 0  # this process has faulted pages in to get here


def test_a_row_whose_host_gave_its_cpu_to_other_machines_says_so_in_its_summary_line():
    fresh = runfile.migrate(json.loads((RUNS / "cpu_torch_2.14.json").read_text()))
    name, extra = fresh["benchmarks"][0]["name"], fresh["benchmarks"][0]["extra_info"]
    quiet, stolen = json.loads(json.dumps(extra)), json.loads(json.dumps(extra))
    quiet["processes"][0]["cpu_steal_fraction"] = 0.01
    stolen["processes"][0]["cpu_steal_fraction"] = 0.12
    lines = summary.lines([(name, quiet), (name, stolen)], [])
    assert "other machines" not in lines[0] and "host gave 12% of its CPU to other machines" in lines[1]


def test_memory_settings_read_the_chosen_huge_page_words_and_the_allocator_variables(tmp_path):
    (tmp_path / "enabled").write_text("always [madvise] never\n")
    (tmp_path / "defrag").write_text("[always] defer defer+madvise madvise never\n")
    environ = {"PATH": "/bin", "MALLOC_ARENA_MAX": "2", "LD_PRELOAD": "/usr/lib/libjemalloc.so.2",
               "TCMALLOC_RELEASE_RATE": "0", "HOME": "/root"}
    assert host.memory_settings(environ, str(tmp_path)) == {
        "transparent_hugepages": "madvise", "transparent_hugepages_defrag": "always",
        "allocator_environment": {"LD_PRELOAD": "/usr/lib/libjemalloc.so.2", "MALLOC_ARENA_MAX": "2",
                                  "TCMALLOC_RELEASE_RATE": "0"}}
    # No sysfs (macOS, a container without it) or a file of another form: the variables alone.
    (tmp_path / "enabled").write_text("madvise\n")
    assert host.memory_settings({}, str(tmp_path / "missing")) == {"allocator_environment": {}}
    assert "transparent_hugepages" not in host.memory_settings({}, str(tmp_path))


def test_memory_differences_name_each_setting_that_changed_and_nothing_when_either_is_unknown():
    madvise = {"transparent_hugepages": "madvise", "allocator_environment": {}}
    always = {"transparent_hugepages": "always", "allocator_environment": {"MALLOC_MMAP_THRESHOLD_": "4294967296"}}
    assert host.memory_differences(madvise, always) == ["MALLOC_MMAP_THRESHOLD_ unset -> 4294967296",
                                                        "transparent_hugepages madvise -> always"]
    assert host.memory_differences(madvise, dict(madvise)) == []
    assert host.memory_differences(None, always) == [] and host.memory_differences(madvise, None) == []
    assert host.describe_memory(always) == ("transparent huge pages always (defrag ?); allocator variables: "
                                            "MALLOC_MMAP_THRESHOLD_=4294967296")
    assert host.describe_memory({"allocator_environment": {}}) == ("transparent huge pages unknown; allocator "
                                                                   "variables: none")


def test_huge_pages_unreadable_on_one_side_are_unknown_there_not_a_difference():
    known = {"transparent_hugepages": "madvise", "transparent_hugepages_defrag": "madvise",
             "allocator_environment": {}}
    unreadable = {"allocator_environment": {}}
    assert host.memory_differences(known, unreadable) == [] == host.memory_differences(unreadable, known)
    assert host.memory_differences(unreadable, {"allocator_environment": {"MALLOC_ARENA_MAX": "2"}}) == [
        "MALLOC_ARENA_MAX unset -> 2"]


def test_a_worker_names_its_row_under_the_settings_its_results_record_and_an_until_run_sizes_from_them():
    # The worker's row key (measure.calibration_key, sent to the coordinator through JSON) and the results' machine
    # info (what Calibration.add records) must carry the same settings, or --until never finds its calibration.
    from devicebench import environment, measure, until
    from devicebench.calibration import Calibration
    import tiny_workload
    from test_benchmark_run import tiny_config

    config = tiny_config()
    key = json.loads(json.dumps(measure.calibration_key(tiny_workload, config, "test cpu",
                                                        tiny_workload.ResidentRun(config))))
    recorded = environment.machine_info()["host_memory"]
    assert key["host_memory"] == recorded == host.memory_settings() and "allocator_environment" in recorded
    entry = {"machine": key["machine"], "torch_version": key["torch_version"], "identity": key["identity"],
             "test": "test_tiny_linear", "pairs": 7, "pair_log_sd": 0.0879, "pair_df": 7, "process_log_sd": 0.05,
             "process_df": 20, "rounds_per_worker": 10, "measured": "2026-12-01", "how": "A/A", "sources": [],
             "compiled_code": key["compiled_code"], "round_log_sd": 0.1307, "round_df": 100,
             "host_memory": recorded}
    wanted = until.rounds_wanted(Calibration(Path("unused.json"), [entry]), until.UntilTarget(0.05))
    assert wanted(key, 5) is not None
