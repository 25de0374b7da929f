"""Data layer: the refer-format reader, named dataset ids, label-ratio splits, `Processor`, augmentations.

The ShapeRefs generator (`l2l.data.shaperefs`) is not imported here: only `l2l data synth` needs it.
"""

from l2l.data.augment import flip_text, hflip, strong_photometric, weak_view
from l2l.data.dataset import DataId, RefSample, RESDataset
from l2l.data.processor import Processor
from l2l.data.refer import DATASETS, ReferData, load_image, load_refs_pickle
from l2l.data.splits import load_split, make_split

__all__ = [
    "DATASETS",
    "DataId",
    "Processor",
    "RESDataset",
    "RefSample",
    "ReferData",
    "flip_text",
    "hflip",
    "load_image",
    "load_refs_pickle",
    "load_split",
    "make_split",
    "strong_photometric",
    "weak_view",
]
