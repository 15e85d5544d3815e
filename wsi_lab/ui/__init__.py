"""Notebook views: ipywidgets/anywidget panels and the Lab dashboard that composes them.

Importing this package needs the ``ui`` extra (ipywidgets, anywidget); the core never imports it.
"""
