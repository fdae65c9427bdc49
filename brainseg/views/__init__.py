"""What is drawn and handed out from a prediction (overlays, planes, 3D mesh, report); no gradio."""
