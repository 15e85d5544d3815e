"""``TilingPanel``: run :func:`wsi_lab.tiling.run_tiling` on Dask from a notebook.

A thin view over :func:`wsi_lab.tiling.start_tiling` (the run happens in a background thread, the
kernel stays responsive) and :mod:`wsi_lab.tiling.plan`: cluster choice (a local cluster with N workers,
or a scheduler address, checked before anything is written), the plan (slides × settings, tiles
expected) before Start, start and cancel, an ipywidgets progress bar fed per tile chunk by the
:mod:`wsi_lab.runs.progress` events, the Dask dashboard link, a per-slide status table (from the
events' item statuses and the result's ``Failure`` objects) and a preview of the resulting TileTable.
"""

from __future__ import annotations

import html
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets
import pandas as pd
import traitlets

from wsi_lab.errors import InvalidParameterError
from wsi_lab.runs.progress import ItemStatus, ProgressEvent
from wsi_lab.ui.common import ErrorBox, message_html

if TYPE_CHECKING:
    from wsi_lab.tiling.dask_run import TilingJob

log = logging.getLogger(__name__)


def _slide_id(path: str) -> str:
    from wsi_lab.slide import slide_id

    return slide_id(path)  # the id run_tiling reports the slide under


def _fmt_eta(s: float | None) -> str:
    if s is None:
        return ""
    s = int(round(s))
    return f", ETA {s // 60}:{s % 60:02d}" if s >= 60 else f", ETA {s} s"


def progress_line(event: ProgressEvent) -> str:
    """The status line of a tiling event: tiles read / expected, tiles kept, tiles/s, ETA (HTML)."""
    m = event.metrics
    read = (f"{int(m.get('tiles_done', 0))}/{int(m['tiles_expected'])} candidate tiles read, "
            if m.get("tiles_expected") else "")
    return (f"{event.done}/{event.total} {event.unit}, {read}<b>{event.tiles}</b> tiles kept, "
            f"{event.tiles_per_s:.0f} tiles/s{_fmt_eta(event.eta_s)}")


class TilingPanel(widgets.VBox):
    """Tile ``slides`` with ``params`` on a Dask cluster; observable ``result`` (TilingResult) and
    ``table`` (the TileTable of all tiled slides) are set when a run ends.

    ``params`` and ``slides`` may be callables (read at start), so the Lab passes the tuner's current
    parameters and selection; ``overrides`` maps slide id to per-slide :class:`TilingParams`;
    ``expected`` (optional) gives known tile counts per slide id (e.g. the tuner's), others are counted.
    """

    result = traitlets.Any(None).tag(sync=False)
    table = traitlets.Any(None).tag(sync=False)
    running = traitlets.Bool(False).tag(sync=False)

    def __init__(self, slides: Sequence[str | os.PathLike] | Callable[[], Sequence[Any]] = (),
                 params: Any = None, out: str | os.PathLike | None = None,
                 overrides: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None = None,
                 n_workers: int = 2, expected: Callable[[], Mapping[str, int]] | None = None, **kwargs) -> None:
        self._slides, self._params, self._overrides, self._expected = slides, params, overrides, expected
        self.job: TilingJob | None = None
        self.events: list[ProgressEvent] = []
        self._status: dict[str, str] = {}
        self._counts: dict[tuple[str, str], int | str] = {}
        self._lock = threading.Lock()
        self._finished = threading.Event()
        self._finished.set()
        self.errors = ErrorBox()
        style = {"description_width": "110px"}
        self.cluster = widgets.ToggleButtons(options=[("Local cluster", "local"), ("Scheduler address", "address")],
                                             value="local", description="Dask", style=style)
        self.n_workers = widgets.BoundedIntText(value=max(1, n_workers), min=1, max=max(64, os.cpu_count() or 1),
                                                description="Workers", style=style, layout=widgets.Layout(width="200px"))
        self.address = widgets.Text(placeholder="tcp://127.0.0.1:8786", description="Scheduler", style=style,
                                    layout=widgets.Layout(width="360px", display="none"))
        self.out = widgets.Text(value=str(out or Path.cwd() / "wsi-lab-tiles"), description="Output",
                                style=style, layout=widgets.Layout(width="480px"))
        # "" (not None: a Dropdown shows None as "no selection") means the TileTable only
        self.materialize = widgets.Dropdown(options=[("table only", ""), ("JPEG tiles", "jpeg"),
                                                     ("TFRecord shards", "tfrecord")], value="",
                                            description="Write", style=style, layout=widgets.Layout(width="300px"))
        self.plan_button = widgets.Button(description="Show plan", icon="list")
        self.plan = widgets.HTML()
        self.plan.add_class("wsi-lab-tiling-plan")
        self.start_button = widgets.Button(description="Start tiling", button_style="primary", icon="play")
        self.cancel_button = widgets.Button(description="Cancel", button_style="warning", icon="stop", disabled=True)
        self.progress = widgets.FloatProgress(value=0.0, min=0.0, max=1.0, description="Progress", style=style,
                                              layout=widgets.Layout(width="480px"))
        self.progress.add_class("wsi-lab-tiling-progress")
        self.status = widgets.HTML()
        self.notice = widgets.HTML()  # warnings about the set-up (more workers than cores)
        self.dashboard = widgets.HTML()
        self.slide_table = widgets.HTML()
        self.preview = widgets.HTML()
        self.cluster.observe(self._on_cluster, "value")
        self.plan_button.on_click(lambda _b: self.show_plan(count=True))
        self.start_button.on_click(lambda _b: self.start())
        self.cancel_button.on_click(lambda _b: self.cancel())
        super().__init__([self.errors, self.cluster, widgets.HBox([self.n_workers, self.address]), self.out,
                          self.materialize, self.plan_button, self.plan,
                          widgets.HBox([self.start_button, self.cancel_button]), self.progress,
                          self.status, self.notice, self.dashboard, self.slide_table, self.preview], **kwargs)
        self.add_class("wsi-lab-tiling")

    # -- inputs -------------------------------------------------------------------------------
    def _on_cluster(self, change) -> None:
        local = change["new"] == "local"
        self.n_workers.layout.display = None if local else "none"
        self.address.layout.display = "none" if local else None

    def slides(self) -> list[str]:
        s = self._slides() if callable(self._slides) else self._slides
        return [str(getattr(p, "path", p)) for p in (s or [])]

    def params(self):
        from wsi_lab.tiling.params import TilingParams

        p = self._params() if callable(self._params) else self._params
        if p is None:
            return TilingParams().validate()
        if isinstance(p, Mapping):
            return TilingParams.from_dict(dict(p))
        return p.validate()

    def overrides(self) -> dict[str, Any]:
        o = self._overrides() if callable(self._overrides) else self._overrides
        return dict(o or {})

    def client_arg(self) -> str | None:
        """None (a local cluster of ``n_workers``) or the scheduler address typed in, normalised
        (``InvalidParameterError`` for ``:``, ``tcp://`` and the like)."""
        from wsi_lab.runs.executors import normalize_scheduler_address

        if self.cluster.value == "local":
            return None
        return normalize_scheduler_address(self.address.value)

    def out_dir(self) -> Path:
        """The output folder typed in (an empty box is refused: it would mean the kernel's working folder)."""
        text = self.out.value.strip()
        if not text:
            raise InvalidParameterError("the Output box is empty: type the folder the tiles go to")
        return Path(text).expanduser()

    def workers_warning(self) -> str | None:
        cores = os.cpu_count() or 1
        if self.cluster.value == "local" and self.n_workers.value > cores:
            return (f"{self.n_workers.value} workers on {cores} CPU core(s): they will compete for the cores "
                    f"(at most {cores} is faster)")
        return None

    # -- plan ---------------------------------------------------------------------------------
    def plan_rows(self):
        from wsi_lab.tiling.plan import plan_rows

        return plan_rows(self.slides(), self.params(), self.overrides())

    def show_plan(self, count: bool = True) -> bool:
        """Render the plan (slides × settings, tiles expected); ``count`` fills missing tile counts in
        the background (coarse plan of each slide). Returns False with a message when it cannot."""
        with self.errors.guard("plan"):
            rows = self.plan_rows()
            known = dict((self._expected() if callable(self._expected) else None) or {})
            for r in rows:
                if r.slide_id in known:
                    self._counts[(r.path, r.params.hash())] = int(known[r.slide_id])
            self._render_plan(rows)
            missing = [r for r in rows if (r.path, r.params.hash()) not in self._counts]
            if count and missing:
                threading.Thread(target=self._count, args=(missing,), name="wsi-lab-plan-count", daemon=True).start()
            return True
        return False

    def _count(self, rows) -> None:
        from wsi_lab.tiling.plan import expected_tiles

        for r in rows:
            key = (r.path, r.params.hash())
            try:
                self._counts[key] = expected_tiles(r.path, r.params)
            except Exception as exc:  # noqa: BLE001 - shown in the plan's cell; the run reports it as that slide's failure
                log.info("counting tiles of %s failed: %s", r.slide_id, exc)
                self._counts[key] = f"cannot plan: {type(exc).__name__}"
            self._render_plan(rows)

    def _render_plan(self, rows) -> None:
        if not rows:
            self.plan.value = message_html("No slides selected: nothing to tile.", "warning")
            return
        head = "".join(f"<th align=left>{html.escape(k)}</th>" for k in ["slide", *rows[0].settings(), "tiles expected"])
        body = ""
        for r in rows:
            n = self._counts.get((r.path, r.params.hash()), "counting…")
            cells = [r.slide_id, *r.settings().values(), f"{n:,}" if isinstance(n, int) else n]
            body += "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>"
        self.plan.value = (f"<b>Plan</b>: {len(rows)} slide(s)<table class='wsi-lab-plan' style='font-size:12px'>"
                           f"<thead><tr>{head}</tr></thead>{body}</table>")

    # -- run ----------------------------------------------------------------------------------
    def start(self) -> bool:
        """Start a run in the background (returns False, with a message, when it cannot start)."""
        from wsi_lab.tiling import start_tiling

        if self.running:
            self.errors.show("A tiling run is already going; cancel it first.", "warning")
            return False
        with self.errors.guard("tiling"):
            slides = self.slides()
            if not slides:
                raise InvalidParameterError("no slides to tile: select one or more slides first")
            params, overrides, client, out = self.params(), self.overrides(), self.client_arg(), self.out_dir()
            self.show_plan(count=False)
            self.events = []
            with self._lock:
                self._status = {_slide_id(p): str(ItemStatus.QUEUED) for p in slides}
            self.progress.value, self.progress.bar_style = 0.0, ""
            self.status.value = ("starting a local Dask cluster…" if client is None
                                 else f"checking {html.escape(client)} (up to 5 s)…")
            self.dashboard.value = self.preview.value = ""
            self._render_slides()
            self.result = self.table = None
            self.running = True
            self._finished.clear()
            self.start_button.disabled, self.cancel_button.disabled = True, False
            warning = self.workers_warning()
            self.job = start_tiling(slides, params, client=client, out=out,
                                    materialize=self.materialize.value or None, progress=self._on_progress,
                                    n_workers=self.n_workers.value if client is None else None, overrides=overrides)
            self.notice.value = message_html(warning, "warning") if warning else ""
            threading.Thread(target=self._wait, name="wsi-lab-tiling-panel", daemon=True).start()
            return True
        return False

    def cancel(self) -> None:
        """Ask the run to stop; finished slides stay written."""
        if self.job is not None and self.running:
            self.job.cancel()
            self.status.value = "cancelling…"

    def close(self) -> None:
        """Close the panel; a run still going is cancelled (its Dask cluster shuts down with it)."""
        if self.job is not None and not self.job.done():
            self.job.cancel()
        super().close()

    def wait(self, timeout: float | None = None) -> Any:
        """Block until the run ends (for scripts and tests); returns the result (None if it failed)."""
        self._finished.wait(timeout)
        return self.result

    def _wait(self) -> None:
        ok = False
        try:
            with self.errors.guard("tiling"):
                assert self.job is not None  # set before this thread starts
                result = self.job.result()
                self.result = result
                self._show_result(result)
                ok = True
        finally:
            if not ok:  # the run never started (unreachable scheduler...) or broke: no stale lines under the error
                with self._lock:
                    self._status = {}
                self._render_slides()
                self.status.value = self.dashboard.value = ""
                self.progress.value, self.progress.bar_style = 0.0, "danger"
            self.running = False
            self.start_button.disabled, self.cancel_button.disabled = False, True
            self._finished.set()

    def _show_result(self, result) -> None:
        with self._lock:
            for sid, n in result.n_tiles.items():
                self._status[sid] = f"done: {n} tiles" + (" (already complete)" if sid in result.skipped else "")
            for f in result.failures:
                self._status[f.item] = f"failed: {f.error_type}: {f.message}"
            if result.cancelled:
                for sid, st in self._status.items():
                    if st in (ItemStatus.QUEUED, ItemStatus.RUNNING) or st.startswith(str(ItemStatus.RUNNING)):
                        self._status[sid] = str(ItemStatus.CANCELLED)
        self._render_slides()
        self.progress.bar_style = "success" if result.ok else ("warning" if result.cancelled else "danger")
        self.status.value = html.escape(result.summary()).replace("\n", "<br>")
        self.table = result.table()
        self.preview.value = self._preview_html(self.table)
        if result.failures:
            self.errors.show(f"{len(result.failures)} slide(s) failed: "
                             + "; ".join(f"{f.item}: {f.error_type}: {f.message}" for f in result.failures))

    def _on_progress(self, event: ProgressEvent) -> None:
        self.events.append(event)
        self.progress.value = float(event.fraction)
        self.status.value = progress_line(event) + (f"<br><small>{html.escape(event.message)}</small>"
                                                    if event.message else "")
        if event.dashboard and not self.dashboard.value:
            link = html.escape(event.dashboard)
            self.dashboard.value = (f"Dask dashboard: <a href='{link}' target='_blank' "
                                    f"class='wsi-lab-dashboard'>{link}</a>")
        with self._lock:
            for sid, status in event.items.items():
                if sid not in self._status:
                    continue
                was = self._status[sid]
                if status.closed and not was.startswith(str(status)):
                    detail = event.message if event.current == sid and event.message else ""
                    self._status[sid] = str(status) + (f": {detail}" if detail else "")
                elif not status.closed:
                    self._status[sid] = str(status)
        self._render_slides()

    def _render_slides(self) -> None:
        with self._lock:
            items = list(self._status.items())
        rows = "".join(f"<tr><td>{html.escape(s)}</td><td>{html.escape(st)}</td></tr>" for s, st in items)
        self.slide_table.value = ("" if not items else
                                  "<table class='wsi-lab-slide-status' style='font-size:12px'><thead><tr>"
                                  f"<th align=left>slide</th><th align=left>status</th></tr></thead>{rows}</table>")

    @staticmethod
    def _preview_html(table: pd.DataFrame, n: int = 8) -> str:
        if table is None or not len(table):
            return message_html("The run kept no tiles.", "warning")
        head = table.head(n).to_html(index=False, float_format=lambda v: f"{v:.3g}", classes="wsi-lab-preview",
                                     border=0)
        return f"<b>TileTable</b>: {len(table)} rows × {len(table.columns)} columns{head}"
