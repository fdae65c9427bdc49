"""From pixels to masks: preprocessing, the Segmenter and its backends, post-processing, whole volumes."""
