"""Run with the Triton environment's Python: parse each config.pbtxt given into Triton's ModelConfig and
print a JSON list of the parsed messages (or the error text of one that does not parse)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deploy.core.errors import BadInputError  # noqa: E402 - after the path is set
from deploy.serving.schema import parse_config  # noqa: E402 - after the path is set


def main() -> None:
    parsed: list[object] = []
    for path in sys.argv[1:]:
        try:
            parsed.append(parse_config(Path(path).read_text()))
        except BadInputError as exc:
            parsed.append(str(exc))
    print(json.dumps(parsed))


if __name__ == "__main__":
    main()
