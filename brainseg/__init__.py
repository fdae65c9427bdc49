"""brainseg: U-Net segmentation of FLAIR abnormality on brain-MRI slices (LGG)."""
from .config import ModelConfig
from .hub import ModelLoadError, bundled_models
from .inference import Segmenter, load_segmenter

__all__ = ["ModelConfig", "ModelLoadError", "Segmenter", "bundled_models", "load_segmenter"]
