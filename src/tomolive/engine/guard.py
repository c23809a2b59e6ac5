"""Refuse to start a LocalCluster from an unguarded script, before any scan starts.

Dask's worker processes start by re-importing the main script; without
``if __name__ == "__main__":`` each would run the script's scans again (phantom scans, then
"Nanny failed to start"). The check reads the script's own source: is the line that led here
inside the guard?
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from types import FrameType

from ..errors import BadInputError


def check_main_guard() -> None:
    """Raise :class:`BadInputError` when called from the unguarded top level of the main script."""
    path = getattr(sys.modules.get("__main__"), "__file__", None)
    if path is None:  # IPython, Jupyter, python -c: no script to re-import
        return
    line = _script_line(path)
    if line is None:
        return
    try:
        tree = ast.parse(Path(path).read_text())
    except (OSError, SyntaxError, ValueError):
        return
    if not any(_is_main_guard(node) and node.lineno <= line <= (node.end_lineno or 0) for node in tree.body):
        raise BadInputError(
            f"{path}, line {line}: tomolive starts a Dask LocalCluster here, at the top level of the script, "
            "and Dask's worker processes re-import the script, which would run it again. Put the script's "
            'work under `if __name__ == "__main__":` (or pass dask="tcp://scheduler:8786").'
        )


def _script_line(path: str) -> int | None:
    """The line of the main script's module-level code that is running now (None if none is)."""
    frame: FrameType | None = sys._getframe(1)
    line = None
    while frame is not None:
        if frame.f_code.co_name == "<module>" and Path(frame.f_code.co_filename) == Path(path):
            line = frame.f_lineno
        frame = frame.f_back
    return line


def _is_main_guard(node: ast.stmt) -> bool:
    """``if __name__ == "__main__":`` (either operand order)."""
    if not isinstance(node, ast.If) or not isinstance(node.test, ast.Compare) or len(node.test.comparators) != 1:
        return False
    sides = {ast.unparse(node.test.left), ast.unparse(node.test.comparators[0])}
    return isinstance(node.test.ops[0], ast.Eq) and sides == {"__name__", "'__main__'"}
