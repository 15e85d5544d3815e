"""Job console: metric update → chart latency (target < 500 ms), measured in the kernel.

A run-layer job (a ``ThreadJob`` registered as a training job) records one epoch's train and val
metrics; the clock stops when the console's loss chart (plotly ``FigureWidget``) holds the new points,
i.e. when the restyle message to the browser has been sent. Measured in the same run:

- ``console, progress event``: the job also emits a progress event after its records (as the training
  entry point does after every epoch), which wakes the console at once;
- ``console, records only``: no event; the console finds the records on its periodic refresh
  (``refresh_s`` = 0.25 s);
- ``FigureWidget restyle alone``: the peer floor, the same restyle sent directly without the console.

Run: ``PYTHONPATH=. python benchmarks/console_ui.py [--updates 20]``. The browser's own drawing time
(plotly.js) comes on top; the real JupyterLab test (tests/test_console_browser.py) sees it grow live.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

from wsi_lab.runs import ProgressEvent, ThreadJob
from wsi_lab.ui.charts import MetricCharts
from wsi_lab.ui.console import JobConsole
from wsi_lab.ui.jobs import register_job


def _console_latencies(n: int, with_event: bool) -> list[float]:
    console = JobConsole(jobs_root="/tmp/wsi-lab-bench-jobs")
    step, done = threading.Event(), threading.Event()

    def target(job: ThreadJob) -> None:
        for epoch in range(1, n + 1):
            step.wait()
            step.clear()
            job.record_metrics(epoch=epoch, split="train", loss=1.0 / epoch, tiles=10, tiles_per_s=100.0)
            job.record_metrics(epoch=epoch, split="val", loss=1.1 / epoch, tiles=5, tiles_per_s=100.0, accuracy=0.5)
            if with_event:
                job.emit(ProgressEvent(done=epoch, total=n, unit="epochs", fraction=epoch / n))
        done.wait()

    job = ThreadJob(target, name="bench")
    entry = register_job(job, "training", label="bench", spec={"epochs": n})
    console.refresh()
    row = console.rows[entry.id]
    out = []
    try:
        for epoch in range(1, n + 1):
            time.sleep(0.05 + 0.013 * epoch)  # updates do not line up with the refresh period
            t0 = time.perf_counter()
            step.set()
            assert row.charts is not None
            while row.charts.points() < 2 * epoch:
                time.sleep(0.0005)
            out.append(time.perf_counter() - t0)
    finally:
        done.set()
        job.wait(5)
        console.close()
    return out


def _direct_latencies(n: int) -> list[float]:
    charts = MetricCharts()
    series: dict = {}
    out = []
    for epoch in range(1, n + 1):
        series = {**series}
        for split, loss in (("train", 1.0 / epoch), ("val", 1.1 / epoch)):
            xs, ys = series.get((split, "loss"), ([], []))
            series[(split, "loss")] = ([*xs, epoch], [*ys, loss])
        t0 = time.perf_counter()
        charts.update(series)
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--updates", type=int, default=20)
    args = ap.parse_args()
    rows = [("console, progress event", _console_latencies(args.updates, True)),
            ("console, records only", _console_latencies(args.updates, False)),
            ("FigureWidget restyle alone", _direct_latencies(args.updates))]
    floor = statistics.median(rows[-1][1])
    print(f"{'path':<28} {'median ms':>10} {'p95 ms':>8} {'max ms':>8} {'× restyle':>10}  target < 500 ms")
    for name, xs in rows:
        med, p95 = statistics.median(xs), sorted(xs)[max(0, int(0.95 * len(xs)) - 1)]
        print(f"{name:<28} {med * 1e3:>10.1f} {p95 * 1e3:>8.1f} {max(xs) * 1e3:>8.1f} {med / floor:>10.1f}"
              f"  {'ok' if p95 < 0.5 else 'OVER'}")


if __name__ == "__main__":
    main()
