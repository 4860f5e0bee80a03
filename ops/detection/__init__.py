"""Object detection (the ``traffic`` task): the procedural scene generator and COCO loader,
the CenterNet targets, losses and decoding, TrafficQuantizerNet, COCO mAP with pycocotools,
and the task's steps (:mod:`ops.detection.traffic`)."""
