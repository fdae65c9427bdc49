"""The Gradio demo: model list, slice tab, volume tab, launcher."""
