"""devicebench report: one self-contained HTML file holding every row, nothing fetched from a network."""

from __future__ import annotations

import re
from pathlib import Path

from devicebench import cli, report, results

RUNS = Path(__file__).resolve().parent / "runs"
EXTERNAL = re.compile(r"<(?:script|link|img|iframe|source)\b[^>]*\b(?:src|href)\s*=", re.IGNORECASE)


def test_the_report_holds_every_row_of_every_run_and_loads_nothing_from_outside(tmp_path, capsys):
    names = ["cpu_torch_2.13.json", "cpu_torch_2.14.json", "m1_mps.json", "gtx1060_cuda.json"]
    out = tmp_path / "report.html"
    assert cli.main(["report", *(str(RUNS / name) for name in names), "-o", str(out)]) == 0
    assert "opens offline" in capsys.readouterr().out
    page = out.read_text()
    assert not EXTERNAL.search(page), EXTERNAL.search(page)  # no <script src=...>, <link href=...>
    assert "plotly" in page.lower() and len(page) > 1_000_000  # the library itself is inside
    for name in names:
        run = results.load_run(RUNS / name)
        assert str(run.path) in page
        for row in run.rows:
            assert report.bar_label(row) in page, (name, row.test)
    for section in ("Devices: training samples/s", "History over torch versions"):
        assert section in page
    assert not list(tmp_path.glob("*.part"))  # written atomically


def test_the_report_judges_a_change_on_this_machines_calibrated_noise(tmp_path):
    from test_calibration import frozen_calibration

    pair = [results.load_run(RUNS / name) for name in ("cpu_torch_2.13.json", "cpu_torch_2.14.json")]
    calibrated = report.write_report(pair, tmp_path / "calibrated.html", 0.05,
                                     cli.calibration.Calibration.load(
                                         frozen_calibration(tmp_path, "cpu_torch_2.14.json", process_sd=0.02)))
    alone = report.write_report(pair, tmp_path / "alone.html", 0.05)
    assert "1.10x slower (p=" in calibrated.read_text() and "calibrated 2026-12-01 from 21 plain processes" in calibrated.read_text()
    assert "no verdict below 2x" in alone.read_text()


def test_the_page_opens_with_the_verdict_table_and_draws_ratios_on_a_log_axis(tmp_path):
    import plotly.graph_objects as go
    from test_calibration import frozen_calibration

    pair = [results.load_run(RUNS / name) for name in ("cpu_torch_2.13.json", "cpu_torch_2.14.json")]
    noise = cli.calibration.Calibration.load(frozen_calibration(tmp_path, "cpu_torch_2.14.json", process_sd=0.02))
    page = report.write_report(pair, tmp_path / "r.html", 0.05, noise).read_text()
    table, first_chart = page.index("Verdicts: each row against the first run"), page.index("<h2>Devices")
    assert table < first_chart and "<th>95% interval</th>" in page and "1.10x slower (p=" in page[table:first_chart]
    changes = report._change_rows(pair, 0.05, noise)
    figure = report._change_figure(go, changes)
    assert figure.layout.yaxis.type == "log"
    for trace in figure.data:  # every interval stays above zero, as a ratio's must
        assert all(y - low > 0 for y, low in zip(trace.y, trace.error_y.arrayminus))
