"""The brainseg Gradio demo (the Hugging Face Space's ``app_file``): ``python app.py [--model ...] [--data-dir ...]``,
the same as ``brainseg app``. The app itself is the package ``brainseg.app`` (``brainseg/app/launch.py``)."""
from brainseg.app.launch import main

if __name__ == "__main__":
    main(prog="app.py")
