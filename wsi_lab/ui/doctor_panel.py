"""``DoctorPanel``: ``wsi-lab doctor`` in the notebook: one row per part (slide readers and codecs, Dask,
torch + CUDA, Horovod, SageMaker, napari, Chromium...) with its version, what was found, and the command
that fixes a missing one. A thin view over :func:`wsi_lab.doctor.check_environment`; the checks run in a
background thread (importing torch takes seconds) and "Deep check" also imports the heavy frameworks.
"""

from __future__ import annotations

import html
import logging
import threading
from typing import Any

import ipywidgets as widgets

from wsi_lab.ui.common import ErrorBox, message_html

log = logging.getLogger(__name__)

__all__ = ["DoctorPanel", "checks_html"]


def checks_html(checks: list[Any]) -> str:
    """An HTML table of :class:`wsi_lab.doctor.Check` rows (ok / missing, version, detail, fix command)."""
    rows = []
    for c in checks:
        mark = ("<span class='wsi-lab-doctor-ok' style='color:#2e7d32'>✔ ok</span>" if c.ok else
                "<span class='wsi-lab-doctor-missing' style='color:#c62828'>✘ missing</span>")
        fix = f"<code class='wsi-lab-doctor-fix'>{html.escape(c.hint)}</code>" if c.hint else ""
        rows.append(f"<tr><td>{mark}</td><td>{html.escape(c.name)}</td><td>{html.escape(c.version or '')}</td>"
                    f"<td>{html.escape(c.detail or '')}</td><td>{fix}</td></tr>")
    return ("<table class='wsi-lab-doctor' style='font-size:12px'><thead><tr><th></th><th align=left>part</th>"
            "<th align=left>version</th><th align=left>found</th><th align=left>fix</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


class DoctorPanel(widgets.VBox):
    """The environment report (see the module docstring); ``checks`` holds the last results."""

    def __init__(self, deep: bool = False, run: bool = True, **kwargs: Any) -> None:
        self.checks: list[Any] = []
        self.errors = ErrorBox()
        self.deep = widgets.Checkbox(value=deep, description="Deep check (import TensorFlow, napari, Horovod)",
                                     indent=False)
        self.button = widgets.Button(description="Check again", icon="refresh")
        self.button.on_click(lambda _b: self.run())
        self.summary = widgets.HTML()
        self.table = widgets.HTML()
        self._done = threading.Event()
        self._done.set()
        super().__init__([self.errors, widgets.HBox([self.button, self.deep]), self.summary, self.table], **kwargs)
        self.add_class("wsi-lab-doctor-panel")
        if run:
            self.run()

    def run(self) -> None:
        """Run the checks in the background (the panel fills in when they finish)."""
        if not self._done.is_set():
            return
        self._done.clear()
        self.button.disabled = True
        self.summary.value = message_html("checking the environment…", "info")
        threading.Thread(target=self._check, args=(bool(self.deep.value),), name="wsi-lab-doctor", daemon=True).start()

    def _check(self, deep: bool) -> None:
        from wsi_lab.doctor import check_environment

        try:
            with self.errors.guard("doctor"):
                self.checks = check_environment(deep=deep)
                missing = [c.name for c in self.checks if not c.ok]
                self.summary.value = message_html(
                    f"{len(self.checks) - len(missing)} of {len(self.checks)} parts available"
                    + (f"; missing: {', '.join(missing)} (the fix for each is in its row)" if missing else ""),
                    "warning" if missing else "info")
                self.table.value = checks_html(self.checks)
        finally:
            if self.errors.value:
                self.summary.value = ""
            self.button.disabled = False
            self._done.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the running check finishes; True when it did within ``timeout`` s."""
        return self._done.wait(timeout)
