"""Network architectures: the U-Net and the Transformer, built from a :class:`brainseg.config.ModelConfig`."""
