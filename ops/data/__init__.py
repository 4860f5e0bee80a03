"""Datasets: the procedural traffic generator and the COCO loader shared by all detectors."""

from ops.data.coco import (
    CocoImage,
    CocoSplit,
    load_coco_split,
    read_image_rgb,
    write_dataset_report,
)
from ops.data.traffic_scenes import (
    TRAFFIC_CLASSES,
    RenderedScene,
    generate_traffic_dataset,
    render_traffic_scene,
    traffic_categories,
)

__all__ = [
    "TRAFFIC_CLASSES",
    "CocoImage",
    "CocoSplit",
    "RenderedScene",
    "generate_traffic_dataset",
    "load_coco_split",
    "read_image_rgb",
    "render_traffic_scene",
    "traffic_categories",
    "write_dataset_report",
]
