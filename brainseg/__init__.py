"""brainseg: U-Net segmentation of FLAIR abnormality on brain-MRI slices (LGG)."""
from .config import ModelConfig
from .hub import ModelLoadError
from .inference import Segmenter, load_segmenter

__all__ = ["ModelConfig", "ModelLoadError", "Segmenter", "load_segmenter"]
