"""LiDAR projections: the spherical range image (the paper's input) and the camera depth image, from
the scan's own viewpoint or one moved sideways (a training augmentation)."""

from liploc.lidar.camera_depth import (
    camera_depth_image,
    camera_depth_input,
    project_to_camera,
    scale_calibration,
)
from liploc.lidar.range_image import (
    CropWindow,
    RangeImage,
    RangeProjector,
    camera_crop_window,
    crop_range_image,
    crop_window,
    lidar_input_channels,
    lidar_range_input,
    nearest_point_per_pixel,
    paper_crop_window,
    project_to_range_image,
    range_image_to_input,
    spherical_coordinates,
)
from liploc.lidar.viewpoint_shift import fill_small_gaps, shift_points_sideways

__all__ = [
    "CropWindow",
    "RangeImage",
    "RangeProjector",
    "camera_crop_window",
    "camera_depth_image",
    "camera_depth_input",
    "crop_range_image",
    "crop_window",
    "fill_small_gaps",
    "lidar_input_channels",
    "lidar_range_input",
    "nearest_point_per_pixel",
    "paper_crop_window",
    "project_to_camera",
    "project_to_range_image",
    "range_image_to_input",
    "scale_calibration",
    "shift_points_sideways",
    "spherical_coordinates",
]
