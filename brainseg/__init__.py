"""brainseg: U-Net segmentation of FLAIR abnormality on brain-MRI slices (LGG)."""
from .config import ModelConfig
from .inference import Segmenter

__all__ = ["ModelConfig", "Segmenter"]
