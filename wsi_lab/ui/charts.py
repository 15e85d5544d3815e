"""Live metric charts of a training job: plotly ``FigureWidget`` (an anywidget) with one line per split.

Two charts side by side: the loss per epoch (train and validation) and one validation metric (chosen
from what the job reports: accuracy, balanced accuracy, AUC). :meth:`MetricCharts.update` takes the
:func:`wsi_lab.ui.jobs.metric_series` of a job and only sends what changed, inside one batch update per
figure, so a new epoch costs one small message to the browser. plotly loads on first use.
"""

from __future__ import annotations

from typing import Any

import ipywidgets as widgets

__all__ = ["MetricCharts", "SPLIT_COLOURS"]

SPLIT_COLOURS = {"train": "#1f77b4", "val": "#ff7f0e", "test": "#2ca02c"}
_METRICS = ("accuracy", "balanced_accuracy", "auc")


def _figure(title: str, y_title: str) -> Any:
    import plotly.graph_objects as go

    fig = go.FigureWidget(layout=go.Layout(
        title={"text": title, "font": {"size": 13}}, height=240, width=380, margin={"l": 50, "r": 10, "t": 36, "b": 36},
        xaxis={"title": {"text": "epoch"}, "dtick": 1, "rangemode": "tozero"}, yaxis={"title": {"text": y_title}},
        legend={"orientation": "h", "y": -0.3}, template="plotly_white"))
    return fig


class MetricCharts(widgets.HBox):
    """Loss and a validation metric per epoch and split (see the module docstring). ``points()`` counts
    what is plotted (kernel side), for tests and the benchmark."""

    def __init__(self, **kwargs: Any) -> None:
        self.loss = _figure("loss", "loss per tile")
        self.metric_name = widgets.Dropdown(options=[n.replace("_", " ") for n in _METRICS], value="accuracy",
                                            layout=widgets.Layout(width="160px"))
        self.metric = _figure("validation accuracy", "accuracy")
        self._series: dict[tuple[str, str], tuple[list[int], list[float]]] = {}
        self.metric_name.observe(lambda _c: self._draw_metric(force=True), "value")
        super().__init__([self.loss, widgets.VBox([self.metric, self.metric_name])], **kwargs)
        self.add_class("wsi-lab-metric-charts")
        self.loss.add_class("wsi-lab-loss-chart")
        self.metric.add_class("wsi-lab-metric-chart")

    def _set_traces(self, fig: Any, wanted: dict[str, tuple[list[int], list[float]]], force: bool = False) -> None:
        names = [t.name for t in fig.data]
        with fig.batch_update():
            for split, (xs, ys) in wanted.items():
                colour = SPLIT_COLOURS.get(split)
                if split not in names:
                    fig.add_scatter(x=list(xs), y=list(ys), mode="lines+markers", name=split,
                                    line={"color": colour} if colour else None)
                    continue
                trace = fig.data[names.index(split)]
                if force or tuple(trace.x or ()) != tuple(xs) or tuple(trace.y or ()) != tuple(ys):
                    trace.x, trace.y = list(xs), list(ys)
            for name in names:
                if name not in wanted:
                    fig.data[names.index(name)].x, fig.data[names.index(name)].y = [], []

    def update(self, series: dict[tuple[str, str], tuple[list[int], list[float]]]) -> None:
        """Draw ``{(split, metric): (epochs, values)}``; unchanged traces send nothing."""
        if series == self._series:
            return
        self._series = {k: (list(v[0]), list(v[1])) for k, v in series.items()}
        available = [n.replace("_", " ") for n in _METRICS if any(m == n for _, m in series)]
        if available and list(self.metric_name.options) != available:
            keep = self.metric_name.value if self.metric_name.value in available else available[0]
            self.metric_name.options = available
            self.metric_name.value = keep
        self._set_traces(self.loss, {s: v for (s, m), v in self._series.items() if m == "loss"})
        self._draw_metric()

    def _draw_metric(self, force: bool = False) -> None:
        name = str(self.metric_name.value or "accuracy").replace(" ", "_")
        with self.metric.batch_update():
            self.metric.layout.title.text = f"validation {name.replace('_', ' ')}"
            self.metric.layout.yaxis.title.text = name.replace("_", " ")
        self._set_traces(self.metric, {s: v for (s, m), v in self._series.items() if m == name}, force)

    def points(self) -> int:
        """How many points the loss chart holds now (every split)."""
        return sum(len(t.x or ()) for t in self.loss.data)
