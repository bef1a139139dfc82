"""Fail clearly when a script starts an engine without the ``if __name__ == "__main__":`` guard.

vLLM runs its engine core in a process it *spawns*; the child re-imports the parent's main
script (as ``__mp_main__``) to rebuild its state. A script that calls :func:`asrctl.load` at
its top level, unguarded, then starts a second engine inside the child while the parent waits
for the first: a crash in the child process or a hang, far from the cause. :func:`check`
catches it before anything starts:

* in the parent: the call is traced to a top-level statement of the main script, which is
  parsed to see whether that statement is an ``if __name__ == "__main__":`` block;
* in a child re-importing the script (multiprocessing's bootstrapping phase).

Interactive sessions, notebooks and ``python -c`` have no script to re-import and are left
alone.
"""

from __future__ import annotations

import ast
import functools
import multiprocessing
import sys
import types
from pathlib import Path

from asrctl.errors import MainGuardError

HINT = (
    'put the code that loads and uses the model under `if __name__ == "__main__":` '
    "(vLLM starts its engine in a new process that re-imports your script)"
)


def check(what: str = "asrctl.load") -> None:
    """Raise :class:`MainGuardError` if ``what`` runs unguarded at a script's top level,
    or while a spawned child re-imports the script."""
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        raise MainGuardError(
            f"{what}() was called while a child process re-imported the main script", hint=HINT
        )
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or not path:
        return
    frame = _top_level_frame(main)
    if frame is None:
        return
    if not _guarded(str(Path(path).resolve()), frame.f_lineno):
        script = Path(path).name
        raise MainGuardError(
            f"{what}() is called at the top level of {script} (line {frame.f_lineno}) without "
            'an `if __name__ == "__main__":` guard',
            hint=HINT,
        )


def _top_level_frame(main: types.ModuleType) -> types.FrameType | None:
    """The frame running the main script's module-level code, if it is on the stack."""
    frame: types.FrameType | None = sys._getframe(1)
    while frame is not None:
        if frame.f_globals is main.__dict__ and frame.f_code.co_name == "<module>":
            return frame
        frame = frame.f_back
    return None


@functools.lru_cache(maxsize=8)
def _guarded_lines(path: str) -> tuple[tuple[int, int, bool], ...] | None:
    """Each top-level statement of the script as (first line, last line, is a main guard);
    None when the file cannot be read or parsed (then nothing is reported)."""
    try:
        tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return None
    return tuple(
        (node.lineno, node.end_lineno or node.lineno, _is_main_guard(node)) for node in tree.body
    )


def _guarded(path: str, line: int) -> bool:
    statements = _guarded_lines(path)
    if statements is None:
        return True
    for first, last, guard in statements:
        if first <= line <= last:
            return guard
    return True  # not found (e.g. code run through exec): do not accuse


def _is_main_guard(node: ast.stmt) -> bool:
    """``if __name__ == "__main__":`` (either side of the comparison)."""
    if not isinstance(node, ast.If) or not isinstance(node.test, ast.Compare):
        return False
    test = node.test
    if len(test.ops) != 1 or not isinstance(test.ops[0], ast.Eq):
        return False
    sides = [test.left, test.comparators[0]]
    names = {s.id for s in sides if isinstance(s, ast.Name)}
    values = {s.value for s in sides if isinstance(s, ast.Constant)}
    return names == {"__name__"} and values == {"__main__"}
