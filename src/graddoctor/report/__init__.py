"""Show: figures (matplotlib), the self-contained HTML report and the TensorBoard export.

Everything here draws from a RunStore, so a report is re-rendered without retraining.
"""
from .figures import render_all  # noqa: F401
from .html import write_report  # noqa: F401

__all__ = ["render_all", "write_report"]
