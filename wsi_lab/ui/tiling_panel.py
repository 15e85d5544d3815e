"""``TilingPanel``: run :func:`wsi_lab.tiling.run_tiling` on Dask from a notebook.

A thin view over :func:`wsi_lab.tiling.start_tiling` (the run happens in a background thread, the
kernel stays responsive): cluster choice (a local cluster with N workers, or a scheduler address),
start and cancel, an ipywidgets progress bar fed by the :mod:`wsi_lab.runs.progress` callback, the Dask
dashboard link, a per-slide status table and a preview of the resulting TileTable.
"""

from __future__ import annotations

import html
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import pandas as pd
import traitlets

from wsi_lab.errors import InvalidParameterError
from wsi_lab.runs.progress import ProgressEvent
from wsi_lab.ui.common import ErrorBox, message_html

log = logging.getLogger(__name__)


def _slide_id(path: str) -> str:
    from wsi_lab.slide import slide_id

    return slide_id(path)  # the id run_tiling reports the slide under


class TilingPanel(widgets.VBox):
    """Tile ``slides`` with ``params`` on a Dask cluster; observable ``result`` (TilingResult) and
    ``table`` (the TileTable of all tiled slides) are set when a run ends.

    ``params`` and ``slides`` may be callables (read at start), so the Lab passes the tuner's current
    parameters and selection; ``overrides`` maps slide id to per-slide :class:`TilingParams`.
    """

    result = traitlets.Any(None).tag(sync=False)
    table = traitlets.Any(None).tag(sync=False)
    running = traitlets.Bool(False).tag(sync=False)

    def __init__(self, slides: Sequence[str | os.PathLike] | Callable[[], Sequence[Any]] = (),
                 params: Any = None, out: str | os.PathLike | None = None,
                 overrides: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None = None,
                 n_workers: int = 2, **kwargs) -> None:
        self._slides, self._params, self._overrides = slides, params, overrides
        self.job = None
        self.events: list[ProgressEvent] = []
        self._status: dict[str, str] = {}
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
        self.start_button = widgets.Button(description="Start tiling", button_style="primary", icon="play")
        self.cancel_button = widgets.Button(description="Cancel", button_style="warning", icon="stop", disabled=True)
        self.progress = widgets.FloatProgress(value=0.0, min=0.0, max=1.0, description="Progress", style=style,
                                              layout=widgets.Layout(width="480px"))
        self.progress.add_class("wsi-lab-tiling-progress")
        self.status = widgets.HTML()
        self.dashboard = widgets.HTML()
        self.slide_table = widgets.HTML()
        self.preview = widgets.HTML()
        self.cluster.observe(self._on_cluster, "value")
        self.start_button.on_click(lambda _b: self.start())
        self.cancel_button.on_click(lambda _b: self.cancel())
        super().__init__([self.errors, self.cluster, widgets.HBox([self.n_workers, self.address]), self.out,
                          self.materialize, widgets.HBox([self.start_button, self.cancel_button]), self.progress,
                          self.status, self.dashboard, self.slide_table, self.preview], **kwargs)
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
        """None (a local cluster of ``n_workers``) or the scheduler address typed in."""
        if self.cluster.value == "local":
            return None
        addr = self.address.value.strip()
        if not addr or "://" not in addr and ":" not in addr:
            raise InvalidParameterError(f"scheduler address {addr!r} is not usable; type one like tcp://127.0.0.1:8786")
        return addr if "://" in addr else f"tcp://{addr}"

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
            params, overrides, client = self.params(), self.overrides(), self.client_arg()
            self.events = []
            with self._lock:
                self._status = {_slide_id(p): "queued" for p in slides}
            self.progress.value, self.progress.bar_style = 0.0, ""
            self.status.value = "starting the Dask cluster…" if client is None else f"connecting to {client}…"
            self.dashboard.value = self.preview.value = ""
            self._render_slides()
            self.result = self.table = None
            self.running = True
            self._finished.clear()
            self.start_button.disabled, self.cancel_button.disabled = True, False
            self.job = start_tiling(slides, params, client=client, out=self.out.value,
                                    materialize=self.materialize.value or None, progress=self._on_progress,
                                    n_workers=self.n_workers.value if client is None else None, overrides=overrides)
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
        try:
            with self.errors.guard("tiling"):
                result = self.job.result()
                self.result = result
                with self._lock:
                    for sid, n in result.n_tiles.items():
                        self._status[sid] = f"done: {n} tiles" + (" (already complete)" if sid in result.skipped else "")
                    for sid, msg in result.failed.items():
                        self._status[sid] = f"failed: {msg}"
                    if result.cancelled:
                        for sid, st in self._status.items():
                            if st in ("queued", "running"):
                                self._status[sid] = "cancelled"
                self._render_slides()
                self.progress.bar_style = "success" if result.ok else ("warning" if result.cancelled else "danger")
                self.status.value = html.escape(result.summary()).replace("\n", "<br>")
                self.table = result.table()
                self.preview.value = self._preview_html(self.table)
                if result.failed:
                    self.errors.show(f"{len(result.failed)} slide(s) failed: "
                                     + "; ".join(f"{k}: {v}" for k, v in result.failed.items()))
        finally:
            self.running = False
            self.start_button.disabled, self.cancel_button.disabled = False, True
            self._finished.set()

    def _on_progress(self, event: ProgressEvent) -> None:
        self.events.append(event)
        self.progress.value = float(event.fraction)
        eta = "" if event.eta_s is None else f", ETA {event.eta_s:.0f} s"
        self.status.value = (f"{event.done}/{event.total} {event.unit}, <b>{event.tiles}</b> tiles kept, "
                             f"{event.tiles_per_s:.0f} tiles/s{eta}"
                             + (f"<br><small>{html.escape(event.message)}</small>" if event.message else ""))
        if event.dashboard and not self.dashboard.value:
            link = html.escape(event.dashboard)
            self.dashboard.value = (f"Dask dashboard: <a href='{link}' target='_blank' "
                                    f"class='wsi-lab-dashboard'>{link}</a>")
        with self._lock:
            prev_done = self.events[-2].done if len(self.events) > 1 else 0
            if event.current and event.current in self._status:
                if event.done > prev_done:  # this event closed the slide (done or failed)
                    self._status[event.current] = ("failed: " if event.failed and "failed" in event.message.lower()
                                                   else "") + (event.message or "done")
                elif self._status[event.current] == "queued":
                    self._status[event.current] = "running"
        self._render_slides()

    def _render_slides(self) -> None:
        with self._lock:
            items = list(self._status.items())
        rows = "".join(f"<tr><td>{html.escape(s)}</td><td>{html.escape(st)}</td></tr>" for s, st in items)
        self.slide_table.value = ("<table class='wsi-lab-slide-status' style='font-size:12px'><thead><tr>"
                                  f"<th align=left>slide</th><th align=left>status</th></tr></thead>{rows}</table>")

    @staticmethod
    def _preview_html(table: pd.DataFrame, n: int = 8) -> str:
        if table is None or not len(table):
            return message_html("The run kept no tiles.", "warning")
        head = table.head(n).to_html(index=False, float_format=lambda v: f"{v:.3g}", classes="wsi-lab-preview",
                                     border=0)
        return f"<b>TileTable</b>: {len(table)} rows × {len(table.columns)} columns{head}"
