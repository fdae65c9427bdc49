"""brainseg: U-Net segmentation of FLAIR abnormality on brain-MRI slices (LGG)."""
from .config import ModelConfig
from .hub import ModelLoadError, load_segmenter
from .inference import Segmenter

__all__ = ["ModelConfig", "ModelLoadError", "Segmenter", "load_segmenter"]
