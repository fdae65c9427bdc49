"""The training loop, its augmentations, several processes (torchrun) and weight interpolation."""
