"""What every bench script does last: print its result as JSON and, with ``--output``, write it there too."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def emit(result: Any, output: Path | None) -> str:
    """Print ``result`` as indented JSON; also write it to ``output`` (folders made) when given."""
    text = json.dumps(result, indent=2)
    print(text)
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text + "\n")
    return text
