"""Show: the terminal report (rich), figures (matplotlib), the self-contained HTML report, CSV and
TensorBoard exports.

Everything but the terminal report draws from a RunStore, so a report is re-rendered without
retraining; the terminal report draws from a Diagnosis (which the store also keeps).
"""
from .figures import render_all
from .html import write_report

__all__ = ["render_all", "write_report"]
