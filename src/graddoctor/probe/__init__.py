"""Measurement: hooks (probe.py) -> per-step reductions (stats.py, collect.py) -> Trace (trace.py)."""
from .probe import STATS, Probe, watch  # noqa: F401
from .trace import LAYER_METRICS, STEP_METRICS, LayerInfo, Trace  # noqa: F401
