"""Dataset readers, one module per layout, registered by name."""

from liploc.datasets.base import DatasetReader
from liploc.datasets.frame import Calibration, Frame
from liploc.datasets.registry import (
    available_layouts,
    detect_layout,
    get_reader_class,
    open_dataset,
)
from liploc.datasets.scan import LoadedScan, load_image, load_scan, read_image_size, read_scan

__all__ = [
    "Calibration",
    "DatasetReader",
    "Frame",
    "LoadedScan",
    "available_layouts",
    "detect_layout",
    "get_reader_class",
    "load_image",
    "load_scan",
    "open_dataset",
    "read_image_size",
    "read_scan",
]
