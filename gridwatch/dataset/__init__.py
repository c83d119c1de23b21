"""Datasets for the retraining loop (issue 8, docs/DATASETS.md).

* `hard_examples`: the hard-example store (camera candidates labelled by the operators' verdicts);
* `labels`: the explicit label map (detector class id <-> name <-> COCO category id);
* `store`: versioned datasets `<root>/<name>/v<N>/` (COCO JSON, manifest, never overwritten);
* `sampler`: the active-learning sampler (hard examples -> a new version);
* `export` / `coco_import`: COCO and YOLO out, corrected COCO back in as a new version;
* `cli`: the `gridwatch dataset ...` commands as plain functions.
"""
