"""One job's row in the Job console: status, progress, tiles/s, ETA, memory, cancel/resume, live charts
(training), the status grid (per slide or per epoch), the Dask dashboard link and the log tail.

A row is a view over a :class:`wsi_lab.ui.jobs.JobEntry`; :meth:`JobRow.refresh` re-reads the job and
updates only the widgets whose text changed. Errors are shown as readable messages (never a traceback).
"""

from __future__ import annotations

import html
import json
import logging
import time
from typing import Any

import ipywidgets as widgets

from wsi_lab.runs.job import JobStatus
from wsi_lab.ui.common import ErrorBox, message_html
from wsi_lab.ui.jobs import JobEntry, JobSnapshot, forget_job, metric_series, snapshot, status_rows

log = logging.getLogger(__name__)

__all__ = ["JobRow", "format_stats"]

_BAR = {JobStatus.DONE: "success", JobStatus.FAILED: "danger", JobStatus.CANCELLED: "warning"}


def _fmt_s(s: float | None) -> str:
    if s is None:
        return "–"
    s = int(round(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return "–"
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def format_stats(snap: JobSnapshot) -> str:
    """The row's numbers as one line: done/total, tiles/s, ETA, memory, elapsed."""
    progress = f"{snap.done}/{snap.total} {snap.unit}" if snap.total else ""
    rate = f"{snap.tiles_per_s:,.0f} tiles/s" if snap.tiles_per_s is not None else "– tiles/s"
    parts = [p for p in (progress, rate, f"ETA {_fmt_s(snap.eta_s)}", f"memory {_fmt_bytes(snap.memory_bytes)}",
                         f"elapsed {_fmt_s(snap.elapsed_s)}") if p]
    return " · ".join(parts)


def grid_html(rows: list[dict[str, str]]) -> str:
    """An HTML table of status rows (columns: the union of the rows' keys, in first-seen order)."""
    if not rows:
        return ""
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    head = "".join(f"<th align=left>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(r.get(c, ''))}</td>" for c in cols) + "</tr>" for r in rows)
    return (f"<table class='wsi-lab-job-grid' style='font-size:12px'><thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table>")


class JobRow(widgets.VBox):
    """The view of one :class:`JobEntry` (see the module docstring)."""

    def __init__(self, entry: JobEntry, on_remove: Any = None, **kwargs: Any) -> None:
        self.entry = entry
        self._on_remove = on_remove
        self.title = widgets.HTML()
        self.progress = widgets.FloatProgress(value=0.0, min=0.0, max=1.0, layout=widgets.Layout(width="260px"))
        self.stats = widgets.HTML()
        self.stats.add_class("wsi-lab-job-stats")
        self.cancel_button = widgets.Button(description="Cancel", icon="stop", button_style="warning",
                                            layout=widgets.Layout(width="100px"))
        self.resume_button = widgets.Button(description="Resume", icon="play", layout=widgets.Layout(width="100px"),
                                            tooltip="start again: a training job continues after its last checkpoint")
        self.remove_button = widgets.Button(description="Remove", icon="times", layout=widgets.Layout(width="100px"),
                                            tooltip="remove this finished job from the console (its files stay)")
        self.cancel_button.add_class("wsi-lab-job-cancel")
        self.resume_button.add_class("wsi-lab-job-resume")
        self.cancel_button.on_click(lambda _b: self.cancel())
        self.resume_button.on_click(lambda _b: self.resume())
        self.remove_button.on_click(lambda _b: self.remove())
        self.errors = ErrorBox()   # the job's own error (set by refresh)
        self.notice = ErrorBox()   # what a button press could not do
        self.dashboard = widgets.HTML()
        self.grid = widgets.HTML()
        self.logs = widgets.HTML()
        self.logs.add_class("wsi-lab-job-logs")
        self.spec = widgets.HTML()
        spec_box = widgets.Accordion([self.spec], titles=("job spec",), selected_index=None)
        self.charts = None
        if entry.kind == "training":
            from wsi_lab.ui.charts import MetricCharts

            self.charts = MetricCharts()
        self._created = time.monotonic()
        self._detail = [self.grid, self.dashboard, self.logs, spec_box]
        head = widgets.HBox([self.title, self.progress, self.cancel_button, self.resume_button, self.remove_button])
        self._head = [head, self.stats, self.errors, self.notice]
        super().__init__([*self._head, *self._detail], **kwargs)
        self.add_class("wsi-lab-job-row")
        self.add_class(f"wsi-lab-job-{entry.kind}")
        self._last: dict[str, Any] = {}
        self.refresh()

    def _set(self, widget: Any, attr: str, value: Any) -> None:
        key = f"{id(widget)}.{attr}"
        if self._last.get(key) != value:
            self._last[key] = value
            setattr(widget, attr, value)

    def refresh(self) -> None:
        """Re-read the job and update what changed."""
        e = self.entry
        try:
            snap = snapshot(e)
            status = snap.status
            badge = (f"<b>{html.escape(e.label)}</b> <span class='wsi-lab-job-status wsi-lab-job-{status.value}'>"
                     f"{status.value}</span>")
            self._set(self.title, "value", badge)
            self._set(self.progress, "value", snap.fraction)
            self._set(self.progress, "bar_style", _BAR.get(status, ""))
            self._set(self.stats, "value", html.escape(format_stats(snap)))
            self._set(self.cancel_button, "disabled", status.finished)
            self._set(self.resume_button, "disabled", not status.finished or e.restart is None)
            self._set(self.remove_button, "disabled", not status.finished)
            if snap.error:
                self._set(self.errors, "value", message_html(snap.error, "error"))
            elif snap.failures:
                self._set(self.errors, "value", message_html(f"{len(snap.failures)} item(s) failed: "
                                                             + "; ".join(snap.failures[:5]), "warning"))
            else:
                self._set(self.errors, "value", "")
            ev = e.job.last_event
            if ev is not None and ev.dashboard:
                from wsi_lab.ui.dashboard import dashboard_html

                self._set(self.dashboard, "value", dashboard_html(ev.dashboard))
            self._set(self.grid, "value", grid_html(status_rows(e)))
            tail = "\n".join(snap.log_tail)
            self._set(self.logs, "value", f"<pre style='font-size:11px;max-height:9em;overflow:auto;margin:2px 0'>"
                                          f"{html.escape(tail)}</pre>" if tail else "")
            if e.spec is not None:
                self._set(self.spec, "value", f"<pre style='font-size:11px'>{html.escape(json.dumps(e.spec, indent=2), quote=False)}"
                                              "</pre>")
            if self.charts is not None:
                series = metric_series(e)
                self.charts.update(series)
                # shown once there is something to draw, and not in the same instant the figures were made:
                # plotly's widget front end can draw a figure displayed right after its creation blank
                shown = list(self.children)  # type: ignore[has-type]
                if series and self.charts not in shown and time.monotonic() - self._created > 1.0:
                    self.children = [*self._head, self.charts, *self._detail]
        except Exception as exc:
            log.info("job row %s: refresh failed: %s", e.id, exc)
            log.debug("job row refresh failed", exc_info=True)
            self.notice.show(exc)

    def cancel(self) -> None:
        """Ask the job to stop."""
        with self.notice.guard("cancel"):
            self.entry.job.cancel()
        self.refresh()

    def resume(self) -> None:
        """Start the job again (a training job continues after its last checkpoint)."""
        with self.notice.guard("resume"):
            self.entry.resume()
        self.refresh()

    def remove(self) -> None:
        """Remove the finished job from the registry and this row from its console."""
        with self.notice.guard("remove"):
            forget_job(self.entry.id)
            if self._on_remove is not None:
                self._on_remove(self)
