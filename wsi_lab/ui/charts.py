"""Live metric charts of a training job: plotly ``FigureWidget`` (an anywidget) with one line per split.

Two charts side by side: the loss per epoch (train and validation) and one validation metric (chosen
from what the job reports: accuracy, balanced accuracy, AUC). :meth:`MetricCharts.update` takes the
:func:`wsi_lab.ui.jobs.metric_series` of a job and only sends what changed, inside one batch update per
figure, so a new epoch costs one small message to the browser. plotly loads on first use.
"""

from __future__ import annotations

from typing import Any

import ipywidgets as widgets

__all__ = ["MetricCharts", "SPLIT_COLOURS", "first_figure"]

SPLIT_COLOURS = {"train": "#1f77b4", "val": "#ff7f0e", "test": "#2ca02c"}
_METRICS = ("accuracy", "balanced_accuracy", "auc")


def _figure(title: str, y_title: str, splits: tuple[str, ...]) -> Any:
    """A FigureWidget with one (empty) line per split, made with all its traces: later updates only
    restyle ``x``/``y`` (adding traces to a shown FigureWidget is where plotly's widget is fragile)."""
    import plotly.graph_objects as go

    traces = [go.Scatter(x=[], y=[], mode="lines+markers", name=s, line={"color": SPLIT_COLOURS.get(s, "#555")})
              for s in splits]
    return go.FigureWidget(data=traces, layout=go.Layout(
        title={"text": title, "font": {"size": 13}}, height=240, width=380, margin={"l": 50, "r": 10, "t": 36, "b": 36},
        xaxis={"title": {"text": "epoch"}, "dtick": 1, "rangemode": "tozero"}, yaxis={"title": {"text": y_title}},
        legend={"orientation": "h", "y": -0.3}, template="plotly_white"))


def first_figure() -> Any:
    """A blank 10-px FigureWidget to display before any chart. plotly 7.1's widget front end can leave the
    first figure view a page creates blank (its state never reaches the view; seen in JupyterLab 4.6 with
    anywidget 0.11): whatever shows charts puts one of these first, so no chart is that view."""
    import plotly.graph_objects as go

    fig = go.FigureWidget(layout={"width": 10, "height": 10, "margin": {"l": 0, "r": 0, "t": 0, "b": 0},
                                  "xaxis": {"visible": False}, "yaxis": {"visible": False}})
    fig.add_class("wsi-lab-plotly-first")
    return fig


class MetricCharts(widgets.HBox):
    """Loss and a validation metric per epoch and split (see the module docstring). ``points()`` counts
    what is plotted (kernel side), for tests and the benchmark."""

    def __init__(self, **kwargs: Any) -> None:
        self.loss = _figure("loss", "loss per tile", ("train", "val"))
        self.metric_name = widgets.Dropdown(options=[n.replace("_", " ") for n in _METRICS], value="accuracy",
                                            layout=widgets.Layout(width="160px"))
        self.metric = _figure("validation metric", "accuracy", ("train", "val"))
        self._series: dict[tuple[str, str], tuple[list[int], list[float]]] = {}
        self.metric_name.observe(lambda _c: self._draw_metric(), "value")
        self._first = first_figure()
        super().__init__([self._first, self.loss, widgets.VBox([self.metric, self.metric_name])], **kwargs)
        self.add_class("wsi-lab-metric-charts")
        self.loss.add_class("wsi-lab-loss-chart")
        self.metric.add_class("wsi-lab-metric-chart")

    @staticmethod
    def _set_traces(fig: Any, wanted: dict[str, tuple[list[int], list[float]]]) -> None:
        # one restyle of every trace (each figure has two): plotly's widget mis-draws a restyle of one
        # trace to a one-point list (the front end takes it as a scalar and stops drawing)
        new = [wanted.get(t.name, ([], [])) for t in fig.data]
        if any(tuple(t.x or ()) != tuple(v[0]) or tuple(t.y or ()) != tuple(v[1]) for t, v in zip(fig.data, new)):
            fig.plotly_restyle({"x": [list(v[0]) for v in new], "y": [list(v[1]) for v in new]},
                               trace_indexes=list(range(len(fig.data))))

    def update(self, series: dict[tuple[str, str], tuple[list[int], list[float]]]) -> None:
        """Draw ``{(split, metric): (epochs, values)}``; unchanged traces send nothing."""
        if series == self._series:
            return
        self._series = {k: (list(v[0]), list(v[1])) for k, v in series.items()}
        self._set_traces(self.loss, {s: v for (s, m), v in self._series.items() if m == "loss"})
        self._draw_metric()

    def _draw_metric(self) -> None:
        name = str(self.metric_name.value or "accuracy").replace(" ", "_")
        label = name.replace("_", " ")
        if self.metric.layout.yaxis.title.text != label:
            with self.metric.batch_update():
                self.metric.layout.title.text = f"validation {label}"
                self.metric.layout.yaxis.title.text = label
        self._set_traces(self.metric, {s: v for (s, m), v in self._series.items() if m == name})

    def points(self) -> int:
        """How many points the loss chart holds now (every split)."""
        return sum(len(t.x or ()) for t in self.loss.data)
