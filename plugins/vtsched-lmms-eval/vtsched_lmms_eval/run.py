"""``vtsched-lmms-eval``: the ``lmms-eval`` command, with a failed evaluation made visible.

lmms-eval 0.7.3 catches any exception raised while it evaluates (a model error, a task that cannot
load, a dependency it cannot import), logs ``Error during evaluation: ...`` and still exits 0, with
no results file. A script or a sweep that checks the exit status then reads nothing and may not
notice. This command takes exactly lmms-eval's arguments, runs it, streams its output, and exits
non-zero when lmms-eval wrote no new ``*_results.json`` under ``--output_path``, naming the error
lmms-eval logged:

    vtsched-lmms-eval --model vtsched --model_args pretrained=PATH,policy=parvts,budget=64 \\
        --tasks mme --output_path out/

Exit status: lmms-eval's own when it is non-zero; 1 when it exited 0 without a results file;
2 when ``--output_path`` is missing (without it there is no file to check).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main", "output_path", "results_since", "logged_error"]

ERROR_MARK = "Error during evaluation"
# the `lmms-eval` console script, run with this interpreter (sys.argv[1:] are its arguments)
LMMS_EVAL = "from lmms_eval.cli.dispatch import main; main()"


def output_path(args: Sequence[str]) -> Path | None:
    """The folder given by ``--output_path PATH`` or ``--output_path=PATH``, if any."""
    for i, arg in enumerate(args):
        if arg == "--output_path" and i + 1 < len(args):
            return Path(args[i + 1])
        if arg.startswith("--output_path="):
            return Path(arg.split("=", 1)[1])
    return None


def results_since(folder: Path, start: float) -> list[Path]:
    """``*_results.json`` files under ``folder`` written at or after ``start`` (a ``time.time()``)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*_results.json") if p.stat().st_mtime >= start)


def logged_error(lines: Sequence[str]) -> str | None:
    """The last ``Error during evaluation: ...`` message lmms-eval logged, without the log prefix."""
    for line in reversed(lines):
        if ERROR_MARK in line:
            return line[line.index(ERROR_MARK):].strip()
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    folder = output_path(args)
    if folder is None:
        print("vtsched-lmms-eval: give --output_path FOLDER, so that the results file can be checked",
              file=sys.stderr)
        return 2
    start = time.time() - 1.0  # file systems with coarse modification times
    recent: deque[str] = deque(maxlen=400)
    with subprocess.Popen([sys.executable, "-c", LMMS_EVAL, *args], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, errors="replace") as process:
        assert process.stdout is not None
        for line in process.stdout:
            sys.stdout.write(line)
            recent.append(line)
        status = process.wait()
    if status != 0:
        return status
    if results_since(folder, start):
        return 0
    reason = logged_error(list(recent)) or "lmms-eval logged no error; run it with --verbosity=DEBUG"
    print(f"vtsched-lmms-eval: lmms-eval exited 0 but wrote no results file under {folder}: {reason}",
          file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
