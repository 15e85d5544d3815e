"""``JobConsole``: launch training jobs and watch every job of the notebook (training, tiling, inference).

The launch form builds a :class:`wsi_lab.train.JobSpec` (task, model preset, hyper-parameters, the data:
the Lab's current TileTable or a Parquet file, with its own ``split`` column or a new patient split,
and the backend: local, torchrun with N processes, Horovod with N processes) and shows it as JSON before
anything runs; "Save spec" writes that JSON, "Launch" calls :func:`wsi_lab.train.launch`. SageMaker is
offered only where ``wsi_lab.cloud`` is importable.

Below the form, one :class:`~wsi_lab.ui.job_row.JobRow` per job of the module-level registry
(:mod:`wsi_lab.ui.jobs`): jobs outlive the console, so closing it (or the Lab) orphans nothing, and a new
console shows them all again. Other jobs join with :meth:`JobConsole.watch` (a tiling or inference job)
or :func:`wsi_lab.ui.jobs.register_job`. A background thread refreshes running rows when a job reports
progress and at least every ``refresh_s`` seconds (metric records arrive between progress events).
"""

from __future__ import annotations

import html
import importlib.util
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ipywidgets as widgets

from wsi_lab.errors import DataError, InvalidParameterError
from wsi_lab.runs.job import Job
from wsi_lab.ui.common import ErrorBox
from wsi_lab.ui.job_row import JobRow
from wsi_lab.ui.jobs import JobEntry, register_job, registered_jobs, wait_for_change

log = logging.getLogger(__name__)

__all__ = ["JobConsole", "TrainingPanel", "HAS_CLOUD", "TASK_CHOICES", "launch_spec"]

#: ``wsi_lab.cloud`` (SageMaker) is part of this installation: the form offers the SageMaker backend
HAS_CLOUD = importlib.util.find_spec("wsi_lab.cloud") is not None
TASK_CHOICES = {"classify": ("small_cnn", "resnet18", "resnet50"), "vae": ("vae",)}
_TABLE_FILE = "table.parquet"


def _small() -> widgets.Layout:
    return widgets.Layout(width="220px")  # one Layout per widget: hiding one must not hide the others


def launch_spec(spec: Any) -> Job:
    """Start a validated :class:`JobSpec` on its backend (local / torchrun / horovod through
    :func:`wsi_lab.train.launch`; ``sagemaker`` through ``wsi_lab.cloud.train``)."""
    if spec.backend == "sagemaker":
        import importlib

        cloud = importlib.import_module("wsi_lab.cloud")
        return cloud.train(spec)
    from wsi_lab.train.launcher import launch

    return launch(spec)


class JobConsole(widgets.VBox):
    """The launch form and one row per job (see the module docstring).

    ``table``: the TileTable to train on by default: a DataFrame, a callable returning one (the Lab
    passes its current tiles), or a Parquet path. ``jobs_root``: where job folders go
    (``<jobs_root>/<name>``; default ``./wsi-lab-jobs``)."""

    def __init__(self, table: Any = None, jobs_root: str | os.PathLike | None = None, refresh_s: float = 0.25,
                 **kwargs: Any) -> None:
        self._table = table
        self.refresh_s = float(refresh_s)
        self.rows: dict[str, JobRow] = {}
        self._rows_lock = threading.RLock()
        self.errors = ErrorBox()
        style = {"description_width": "110px"}
        self.task = widgets.Dropdown(options=list(TASK_CHOICES), value="classify", description="Task", style=style,
                                     layout=_small())
        self.model = widgets.Dropdown(options=list(TASK_CHOICES["classify"]), description="Model", style=style,
                                      layout=_small())
        self.epochs = widgets.BoundedIntText(value=5, min=1, max=100_000, description="Epochs", style=style, layout=_small())
        self.batch_size = widgets.BoundedIntText(value=32, min=1, max=65_536, description="Batch (global)",
                                                 style=style, layout=_small())
        self.lr = widgets.BoundedFloatText(value=1e-3, min=0.0, max=10.0, step=1e-4, description="Learning rate",
                                           style=style, layout=_small())
        self.weight_decay = widgets.BoundedFloatText(value=0.0, min=0.0, max=10.0, step=1e-4,
                                                     description="Weight decay", style=style, layout=_small())
        self.seed = widgets.IntText(value=0, description="Seed", style=style, layout=_small())
        self.precision = widgets.Dropdown(options=["fp32", "bf16", "fp16"], value="fp32", description="Precision",
                                          style=style, layout=_small())
        self.source = widgets.Dropdown(options=[("current Lab tiles", "lab"), ("Parquet file", "file")],
                                       value="lab" if table is not None and not isinstance(table, (str, os.PathLike))
                                       else "file", description="Data", style=style, layout=_small())
        self.table_path = widgets.Text(value=str(table) if isinstance(table, (str, os.PathLike)) else "",
                                       placeholder="tiles/table.parquet", description="Table file", style=style,
                                       layout=widgets.Layout(width="440px"))
        self.split = widgets.Dropdown(options=[("the table's split column", "column"),
                                               ("new patient split", "patient")], value="column",
                                      description="Split", style=style, layout=widgets.Layout(width="300px"))
        self.val_fraction = widgets.BoundedFloatText(value=0.25, min=0.05, max=0.9, step=0.05,
                                                     description="val fraction", style=style, layout=_small())
        self.label_column = widgets.Text(value="label", description="Label column", style=style, layout=_small())
        backends = [("local", "local"), ("torchrun", "torchrun"), ("Horovod", "horovod")]
        if HAS_CLOUD:
            backends.append(("SageMaker", "sagemaker"))
        self.backend = widgets.ToggleButtons(options=backends, value="local", description="Backend", style=style)
        self.backend.add_class("wsi-lab-console-backend")
        self.nproc = widgets.BoundedIntText(value=2, min=1, max=max(64, os.cpu_count() or 1), description="Processes",
                                            style=style, layout=_small())
        self.instance_type = widgets.Text(value="ml.m5.xlarge", description="Instance type", style=style, layout=_small())
        self.instance_count = widgets.BoundedIntText(value=1, min=1, max=64, description="Instances", style=style,
                                                     layout=_small())
        self.bucket = widgets.Text(placeholder="my-bucket", description="S3 bucket", style=style, layout=_small())
        self.role = widgets.Text(placeholder="arn:aws:iam::…:role/…", description="IAM role", style=style,
                                 layout=widgets.Layout(width="440px"))
        self.sagemaker_box = widgets.VBox([widgets.HBox([self.instance_type, self.instance_count]),
                                           widgets.HBox([self.bucket, self.role])],
                                          layout=widgets.Layout(display="none"))
        self.backend_hint = widgets.HTML("" if HAS_CLOUD else
                                         "<small>SageMaker: the SageMaker backend comes with <code>wsi_lab.cloud</code>"
                                         ", which this installation does not have.</small>")
        root = Path(jobs_root) if jobs_root is not None else Path.cwd() / "wsi-lab-jobs"
        self.jobs_root = widgets.Text(value=str(root), description="Jobs folder", style=style,
                                      layout=widgets.Layout(width="440px"))
        self.name = widgets.Text(value="", placeholder="classify-small_cnn", description="Job name", style=style,
                                 layout=_small())
        self.show_button = widgets.Button(description="Show spec", icon="file-code-o")
        self.save_button = widgets.Button(description="Save spec", icon="save")
        self.launch_button = widgets.Button(description="Launch", icon="rocket", button_style="primary")
        self.launch_button.add_class("wsi-lab-console-launch")
        self.spec_view = widgets.HTML()
        self.spec_view.add_class("wsi-lab-console-spec")
        self.saved = widgets.HTML()
        self.jobs_box = widgets.VBox()
        self.jobs_box.add_class("wsi-lab-console-jobs")
        self.task.observe(self._on_task, "value")
        self.backend.observe(self._on_backend, "value")
        self.show_button.on_click(lambda _b: self.show_spec())
        self.save_button.on_click(lambda _b: self.save_spec())
        self.launch_button.on_click(lambda _b: self.launch())
        self._on_backend({"new": self.backend.value})
        form = widgets.VBox([
            widgets.HTML("<b>Launch a training job</b>"),
            widgets.HBox([self.task, self.model, self.precision]),
            widgets.HBox([self.epochs, self.batch_size, self.seed]),
            widgets.HBox([self.lr, self.weight_decay, self.label_column]),
            widgets.HBox([self.source, self.table_path]),
            widgets.HBox([self.split, self.val_fraction]),
            widgets.HBox([self.backend, self.nproc]), self.sagemaker_box, self.backend_hint,
            widgets.HBox([self.jobs_root, self.name]),
            widgets.HBox([self.show_button, self.save_button, self.launch_button]), self.saved, self.spec_view])
        form.add_class("wsi-lab-console-form")
        from wsi_lab.ui.charts import first_figure

        super().__init__([first_figure(), self.errors, form, widgets.HTML("<b>Jobs</b>"), self.jobs_box], **kwargs)
        self.add_class("wsi-lab-console")
        self._closed = threading.Event()
        self._sync_rows()
        self._thread = threading.Thread(target=self._tick, name="wsi-lab-console", daemon=True)
        self._thread.start()

    # -- form ---------------------------------------------------------------------------------
    def _on_task(self, change: dict) -> None:
        self.model.options = list(TASK_CHOICES[change["new"]])
        self.model.value = self.model.options[0]

    def _on_backend(self, change: dict) -> None:
        b = change["new"]
        self.nproc.layout.display = None if b in ("torchrun", "horovod") else "none"
        self.sagemaker_box.layout.display = None if b == "sagemaker" else "none"

    def job_name(self) -> str:
        """The job's folder name: typed in, else ``<task>-<model>-<n>`` (the first free n)."""
        name = self.name.value.strip()
        if name:
            if "/" in name or name in (".", ".."):
                raise InvalidParameterError(f"job name {name!r}: use a plain folder name (no '/')")
            return name
        base, root = f"{self.task.value}-{self.model.value}", Path(self.jobs_root.value).expanduser()
        n = 1
        while (root / f"{base}-{n}").exists():
            n += 1
        return f"{base}-{n}"

    def _data(self) -> tuple[Any, bool]:
        """The table to train on: (a DataFrame or a path, whether it must be written into the job folder)."""
        if self.source.value == "lab":
            table = self._table() if callable(self._table) else self._table
            if table is None or isinstance(table, (str, os.PathLike)):
                if table is None:
                    raise DataError("no current Lab tiles: tile slides in the Tiling tab first, or choose "
                                    "'Parquet file' and type a table's path")
                return str(table), False
            return table, True
        text = self.table_path.value.strip()
        if not text:
            raise InvalidParameterError("the Table file box is empty: type the path of a Parquet TileTable")
        path = Path(text).expanduser()
        if not path.exists():
            raise DataError(f"{path}: no such table file")
        return str(path), False

    def spec(self, name: str | None = None) -> Any:
        """The :class:`JobSpec` the form describes now (validated; ``InvalidParameterError`` naming the key)."""
        from wsi_lab.train.spec import JobSpec

        name = name or self.job_name()
        out = Path(self.jobs_root.value).expanduser() / name
        data, write = self._data()
        table = str(out / _TABLE_FILE) if (write or self.split.value == "patient") else str(data)
        backend = self.backend.value
        d: dict[str, Any] = {
            "task": self.task.value, "model": self.model.value, "table": table, "out": str(out),
            "epochs": int(self.epochs.value), "batch_size": int(self.batch_size.value), "lr": float(self.lr.value),
            "weight_decay": float(self.weight_decay.value), "seed": int(self.seed.value),
            "precision": self.precision.value, "backend": backend,
            "nproc": int(self.nproc.value) if backend in ("torchrun", "horovod") else 1,
            "label_column": self.label_column.value.strip() or "label"}
        if backend == "sagemaker":
            d["sagemaker"] = {"instance_type": self.instance_type.value.strip(),
                              "instance_count": int(self.instance_count.value),
                              "bucket": self.bucket.value.strip(), "role": self.role.value.strip()}
        return JobSpec.from_dict(d)

    def show_spec(self) -> Any:
        """Render the spec's JSON under the form; returns the spec (None, with a message, when invalid)."""
        with self.errors.guard("spec"):
            spec = self.spec()
            self.spec_view.value = f"<pre style='font-size:11px'>{html.escape(spec.to_json(indent=2), quote=False)}</pre>"
            return spec
        self.spec_view.value = ""
        return None

    def save_spec(self, path: str | os.PathLike | None = None) -> Path | None:
        """Write the spec as JSON (default ``<jobs folder>/<name>.json``); returns the path."""
        with self.errors.guard("save spec"):
            name = self.job_name()
            spec = self.spec(name)
            target = Path(path) if path is not None else Path(self.jobs_root.value).expanduser() / f"{name}.json"
            target.parent.mkdir(parents=True, exist_ok=True)
            spec.write(target)
            self.spec_view.value = f"<pre style='font-size:11px'>{html.escape(spec.to_json(indent=2), quote=False)}</pre>"
            self.saved.value = f"saved <code>{html.escape(str(target))}</code>"
            return target
        return None

    def _prepare_table(self, spec: Any) -> None:
        """Write the job's own table (the Lab's tiles, and/or a new patient split) to ``spec.table``."""
        if Path(spec.table).name != _TABLE_FILE or Path(spec.table).parent != Path(spec.out):
            return
        from wsi_lab.data.splits import split_by_patient
        from wsi_lab.data.table import read_table, write_table

        data, _ = self._data()
        table = read_table(data) if isinstance(data, str) else data
        if spec.label_column not in table.columns and spec.task == "classify":
            raise DataError(f"the table has no {spec.label_column!r} column: attach labels first "
                            "(wsi_lab.attach_labels) or choose a labelled table")
        if self.split.value == "patient":
            v = float(self.val_fraction.value)
            table = split_by_patient(table, (1.0 - v, v, 0.0),
                                     stratify=spec.label_column if spec.label_column in table.columns else None,
                                     seed=spec.seed)
        elif "split" not in table.columns:
            raise DataError("the table has no 'split' column: choose 'new patient split'")
        Path(spec.out).mkdir(parents=True, exist_ok=True)
        write_table(table, spec.table)

    def launch(self) -> JobEntry | None:
        """Build the spec, write the job's table when needed, start the job and add its row; returns the
        registry entry (None, with a readable message, when it cannot start)."""
        with self.errors.guard("launch"):
            spec = self.spec()
            self.spec_view.value = f"<pre style='font-size:11px'>{html.escape(spec.to_json(indent=2), quote=False)}</pre>"
            self._prepare_table(spec)
            job = launch_spec(spec)
            entry = register_job(job, "training", label=Path(spec.out).name, spec=spec.to_dict(),
                                 restart=lambda: launch_spec(spec))
            self.name.value = ""
            self._sync_rows()
            return entry
        return None

    # -- jobs ---------------------------------------------------------------------------------
    def watch(self, job: Job, kind: str | None = None, label: str | None = None,
              restart: Callable[[], Job] | None = None) -> JobEntry:
        """Show another job here (a ``TilingJob``, an inference job, any run-layer Job)."""
        entry = register_job(job, kind, label, restart=restart)
        self._sync_rows()
        return entry

    def _remove_row(self, row: JobRow) -> None:
        self.rows.pop(row.entry.id, None)
        self.jobs_box.children = [r for r in self.jobs_box.children if r is not row]
        row.close()

    def _sync_rows(self) -> None:
        with self._rows_lock:  # the refresh thread and button clicks both come here
            self._sync_rows_locked()

    def _sync_rows_locked(self) -> None:
        entries = registered_jobs()
        known = {e.id for e in entries}
        for e in entries:
            if e.id not in self.rows:
                self.rows[e.id] = JobRow(e, on_remove=self._remove_row)
        for jid in [j for j in self.rows if j not in known]:
            self.rows.pop(jid).close()
        kids = [self.rows[e.id] for e in reversed(entries)]  # newest first
        if list(self.jobs_box.children) != kids:
            self.jobs_box.children = kids

    def refresh(self) -> None:
        """Add rows for new jobs and refresh the rows of unfinished (or just finished) jobs."""
        with self._rows_lock:
            self._sync_rows_locked()
            for row in list(self.rows.values()):
                if not row.entry.job.done() or row._last.get("final") is not row.entry.job:
                    row.refresh()
                    if row.entry.job.done():
                        row._last["final"] = row.entry.job

    def _tick(self) -> None:
        gen = -1
        while not self._closed.is_set():
            gen = wait_for_change(gen, self.refresh_s)
            if self._closed.is_set():
                return
            try:
                self.refresh()
            except Exception as exc:
                log.info("job console refresh failed: %s", exc)
                log.debug("job console refresh failed", exc_info=True)
                self.errors.show(exc)

    def close(self) -> None:
        """Close the console; its jobs keep running (they live in :mod:`wsi_lab.ui.jobs`)."""
        self._closed.set()
        for row in self.rows.values():
            row.close()
        self.rows = {}
        super().close()


#: the issue's name for the console when it is used for training
TrainingPanel = JobConsole
