"""brainseg: U-Net segmentation of FLAIR abnormality on brain-MRI slices (LGG)."""
from brainseg.config import ModelConfig
from brainseg.inference.segmenter import Segmenter, load_segmenter
from brainseg.io.hub import ModelLoadError, bundled_models

__all__ = ["ModelConfig", "ModelLoadError", "Segmenter", "bundled_models", "load_segmenter"]
