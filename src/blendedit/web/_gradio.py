"""Gradio, imported with its telemetry and version check switched off: the web modules take ``gr``
from here, so that the switches are set before Gradio's first import, whichever module comes
first."""

import os

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # no telemetry, no version check
os.environ.setdefault("GRADIO_SSR_MODE", "False")

import gradio as gr

__all__ = ["gr"]
