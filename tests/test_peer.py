"""devicebench peer: the alternation, the figures it keeps and its errors, with fake processes."""

import json
import subprocess
from pathlib import Path

import pytest

from devicebench import peer, runfile
from devicebench.errors import DevicebenchError, UsageError

RUNS = Path(__file__).parent / "runs"


def suite_json(samples_per_s: float) -> dict:
    """A worker's file whose row is a real saved cuda resnet18_cifar row made the tuned one, at ``samples_per_s``."""
    data = runfile.migrate(json.loads((RUNS / "devices_after.json").read_text()))
    bench, = [b for b in data["benchmarks"] if b["name"] == "test_resnet18_cifar[cuda-resident]"]
    bench["extra_info"].update(pipeline="tuned", samples_per_s=samples_per_s, profile={"seconds": {"kernels": 0.05}})
    return {"machine_info": data["machine_info"], "rows": [{"name": "test_resnet18_cifar[cuda-tuned]",
                                                            "status": "measured", "extra": bench["extra_info"]}]}


class FakeProcesses:
    """Stands in for subprocess.run: timm prints its summary, the suite's worker writes its file."""

    def __init__(self, timm=(200.0, 220.0), suite=(180.0, 170.0, 150.0), timm_output=None):
        self.timm, self.suite, self.timm_output, self.calls = list(timm), list(suite), timm_output, []

    def __call__(self, argv):
        if "--torchcompile" in argv:
            self.calls.append("timm")
            output = self.timm_output or f"log line\n--result\n{json.dumps({'infer_samples_per_sec': self.timm.pop(0)})}"
            return subprocess.CompletedProcess(argv, 0, output, "")
        task = json.loads(Path(argv[-1]).read_text())
        self.calls.append("profile" if task["options"]["profile"] else "suite")
        assert task["rows"] == [{"workload": "resnet18_cifar", "module": "devicebench.workloads.resnet18_cifar",
                                 "device": "cuda", "pipeline": "tuned"}]
        Path(task["output"]).write_text(json.dumps(suite_json(self.suite.pop(0))))
        return subprocess.CompletedProcess(argv, 0, "", "")


def test_alternates_the_sides_and_writes_both_medians_and_their_ratio(tmp_path, monkeypatch):
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)  # where the user stands: nothing may be written there
    script = tmp_path / "benchmark.py"
    script.write_text("# timm's benchmark")
    fake = FakeProcesses()
    out = tmp_path / "h200" / "peer-timm.json"
    result = peer.run_peer(script, out, 2, "cuda", "standard", "bfloat16", profile=True, echo=lambda _: None,
                           run=fake)
    assert fake.calls == ["timm", "suite", "suite", "timm", "profile"]
    saved = json.loads(out.read_text())
    assert saved == result
    assert saved["timm_infer_samples_per_sec"] == 210.0 and saved["devicebench_tuned_samples_per_s"] == 175.0
    assert saved["ratio"] == pytest.approx(175.0 / 210.0)
    assert saved["devicebench_tuned_samples_per_s_per_process"] == [180.0, 170.0]  # the profiled one is apart
    assert saved["profile"] == {"seconds": {"kernels": 0.05}}
    assert "--img-size 96 -b 1024 --num-classes 10" in saved["timm_command"]
    assert not list(out.parent.glob("*.part")) and list(here.iterdir()) == []
    assert saved["suite_command"] == ("devicebench run --processes 1 -- --device cuda --workload resnet18_cifar "
                                      "--pipeline tuned --scale standard")


def test_a_missing_script_a_silent_timm_and_a_failed_suite_are_named(tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        peer.run_peer(tmp_path / "nope.py", tmp_path / "o.json", 1, "cuda", "standard", "bfloat16", False)
    script = tmp_path / "benchmark.py"
    script.write_text("")
    with pytest.raises(DevicebenchError, match="printed no '--result' summary"):
        peer.run_peer(script, tmp_path / "o.json", 1, "cuda", "standard", "bfloat16", False,
                      echo=lambda _: None, run=FakeProcesses(timm_output="CUDA out of memory"))

    def failing(argv):
        if "--torchcompile" in argv:
            return FakeProcesses()(argv)
        return subprocess.CompletedProcess(argv, 1, "", "RuntimeError: boom")
    with pytest.raises(DevicebenchError, match=r"tuned row failed \(exit 1\)(.|\n)*boom"):
        peer.run_peer(script, tmp_path / "o.json", 1, "cuda", "standard", "bfloat16", False,
                      echo=lambda _: None, run=failing)
    assert not (tmp_path / "o.json").exists()
