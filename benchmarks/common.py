"""What the benchmarks share: a result printed as JSON and, with ``--json PATH``, kept in that file."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def print_and_save(result: Any, json_path: str | Path | None) -> None:
    """Print ``result`` as indented JSON; also write it to ``json_path`` when one is given."""
    text = json.dumps(result, indent=2)
    print(text)
    if json_path:
        Path(json_path).write_text(text + "\n")
