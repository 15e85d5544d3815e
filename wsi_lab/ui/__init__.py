"""Notebook views: ipywidgets/anywidget panels and the Lab dashboard that composes them.

Importing this package needs the ``ui`` extra (ipywidgets, anywidget); the core never imports it.
"""


def __getattr__(name: str):
    """Lazy public names of the ui package (``from wsi_lab.ui import SlideViewer``)."""
    if name == "SlideViewer":
        from wsi_lab.ui.viewer import SlideViewer

        return SlideViewer
    raise AttributeError(f"module 'wsi_lab.ui' has no attribute {name!r}")
