"""glioseg: 3D brain-tumour segmentation of multi-modal MRI, made cheap."""

__version__ = "0.1.0"
