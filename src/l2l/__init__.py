"""l2l: Learning to Label, semi-supervised referring expression segmentation."""

__version__ = "0.1.0"
