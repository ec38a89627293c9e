"""The step runtime for layered models whose states live in pages on the PS (see runtime.py)."""

from seraphim.worker.paged.layout import PageLayout, RowShape, row_shape
from seraphim.worker.paged.policy import EvictionPolicy, FarthestNextUse, LeastRecentlyUsed
from seraphim.worker.paged.runtime import PagedModel, PagingConfig, StepReport
from seraphim.worker.paged.trace import StepTrace

__all__ = ["PagedModel", "PagingConfig", "StepReport", "PageLayout", "RowShape", "row_shape", "EvictionPolicy",
           "FarthestNextUse", "LeastRecentlyUsed", "StepTrace"]
