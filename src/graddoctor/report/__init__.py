"""Show: figures (matplotlib), the self-contained HTML report and the TensorBoard export.

Everything here draws from a RunStore, so a report is re-rendered without retraining.
"""
from .figures import render_all
from .html import write_report

__all__ = ["render_all", "write_report"]
