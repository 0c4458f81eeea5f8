"""Dataset readers, one module per layout, registered by name."""

from liploc.datasets.frame import Calibration, Frame
from liploc.datasets.registry import (
    DatasetReader,
    available_layouts,
    detect_layout,
    get_reader_class,
    open_dataset,
    register,
)

__all__ = [
    "Calibration",
    "DatasetReader",
    "Frame",
    "available_layouts",
    "detect_layout",
    "get_reader_class",
    "open_dataset",
    "register",
]
