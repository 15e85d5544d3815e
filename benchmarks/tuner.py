"""ThresholdTuner update latency per slide and method, against the 150 ms interactive target.

One update = re-threshold the cached low-resolution features (``detect_tissue``), clean the mask,
re-plan the tiles (``plan_tiles``), render the mask and grid overlays on the thumbnail and JPEG-encode it.
The peer measured in the same run is the cold path: the first detection on a slide, which reads the
low-resolution view and computes its features (what every update would cost without the cache).

    python benchmarks/tuner.py [--quick] [--slides DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TARGET_MS = 150.0
SWEEPS = {"otsu": [10, 20, 30, 40, 60], "variance": [30, 120, 400, 900, 1500], "background": [200, 215, 225, 235, 245]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (< 60 s)")
    ap.add_argument("--slides", default=os.environ.get("WSI_LAB_SLIDES", REPO.parent / "shared" / "data" / "slides"))
    args = ap.parse_args(argv)
    from wsi_lab import find_slides, tissue
    from wsi_lab.slide import open_slide
    from wsi_lab.ui.tuner import ThresholdTuner

    reps = 1 if args.quick else 4
    rows = []
    for info in find_slides(args.slides):
        if info.error:
            continue
        with open_slide(info.path) as s:  # cold path: features computed from pixels
            tissue.clear_feature_cache()
            t0 = time.perf_counter()
            tissue.detect_tissue(s, "otsu")
            cold_ms = (time.perf_counter() - t0) * 1000
        tuner = ThresholdTuner(info.path)
        for method, sweep in SWEEPS.items():
            tuner.method.value = method
            times = []
            for _ in range(reps):
                for value in sweep:
                    tuner.threshold.value = value
                    times.append(tuner.last_update_ms)
                    tuner.closing.value = 2  # a morphology change is an update too
                    times.append(tuner.last_update_ms)
                    tuner.closing.value = 0
            times.sort()
            med = statistics.median(times)
            p95 = times[min(len(times) - 1, int(round(0.95 * (len(times) - 1))))]
            rows.append((info.name, method, len(times), med, p95, p95 / TARGET_MS, cold_ms, cold_ms / med))
        tuner.close()
    head = ("slide", "method", "n", "median ms", "p95 ms", "p95/150ms", "cold ms", "cold/median")
    fmt = "{:<26} {:<10} {:>4} {:>10} {:>8} {:>10} {:>9} {:>12}"
    print(fmt.format(*head))
    for name, method, n, med, p95, ratio, cold, speed in rows:
        print(fmt.format(name[:26], method, n, f"{med:.1f}", f"{p95:.1f}", f"{ratio:.2f}", f"{cold:.0f}", f"{speed:.1f}x"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
