"""`python -m pipeline.check_params [FILE]`: check a params file (default params.yaml) in a second.

Prints every problem, each naming its dotted key, and exits 1; prints a one-line summary and
exits 0 when the file is good. No stage runs and nothing is written.
"""

from __future__ import annotations

import sys

from vlm.config import ALL_KEYS, PARAMS_FILE, ParamError, load


def main(argv: list[str]) -> int:
    path = argv[0] if argv else PARAMS_FILE
    try:
        load(path)
    except ParamError as e:
        print(e, file=sys.stderr)
        return 1
    print(f"{path}: ok ({len(ALL_KEYS)} params and sections checked)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
