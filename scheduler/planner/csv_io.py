"""The common DSA CSV format (MiniMalloc's, also idealloc's): read an instance, write a plan.

    problem = read_problem("trace.csv")            # header id,lower,upper,size; lifetimes half-open
    write_plan("plan.csv", plan)                   # the same rows plus an offset column

Columns are found by header name, in any order. An ``offset`` column (a plan written here, IREE's placements) is
read past and ignored. Any other column is rejected: MiniMalloc's ``alignment``, ``hint`` and ``gaps`` change what a
valid placement is, and a planner that dropped them would hand out wrong plans. The pre-2023 MiniMalloc header
``buffer,start,end,size`` (inclusive end) is rejected with a pointer to the conversion. Every error names the file,
the line (the header is line 1) and the rule.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from seraphim.scheduler.planner.problem import Plan, Problem

COLUMNS = ("id", "lower", "upper", "size")
IGNORED_COLUMNS = ("offset",)


class TraceFormatError(ValueError):
    """A DSA CSV that cannot be read; the message names the file, the line and what is wrong."""


def read_problem(path: str | Path) -> Problem:
    """The instance in `path` (see the module docstring for the format)."""
    path = Path(path)
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    if not rows or not rows[0]:
        raise TraceFormatError(f"{path}: line 1: empty; expected the header {','.join(COLUMNS)}")
    header = [name.strip() for name in rows[0]]
    if header[:4] == ["buffer", "start", "end", "size"]:
        raise TraceFormatError(f"{path}: line 1: the old MiniMalloc header buffer,start,end,size (inclusive end); "
                               "rename the columns to id,lower,upper,size and add 1 to every end")
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise TraceFormatError(f"{path}: line 1: header {','.join(header)} lacks column(s) {','.join(missing)}; "
                               f"expected {','.join(COLUMNS)} (an offset column is allowed)")
    unknown = [c for c in header if c not in COLUMNS + IGNORED_COLUMNS]
    if unknown or len(set(header)) != len(header):
        what = f"unsupported column(s) {','.join(unknown)}" if unknown else "a repeated column"
        raise TraceFormatError(f"{path}: line 1: {what}; only {','.join(COLUMNS)} and offset are read "
                               "(alignment, hints and gaps are not supported)")
    numbered = [(line, row) for line, row in enumerate(rows[1:], start=2) if row]
    lines = np.array([line for line, _ in numbered], np.int64)
    short = [line for line, row in numbered if len(row) != len(header)]
    if short:
        row = rows[short[0] - 1]
        raise TraceFormatError(f"{path}: line {short[0]}: {len(row)} fields, the header has {len(header)} "
                               f"({','.join(header)})")
    columns = {name: [row[k].strip() for _, row in numbered] for k, name in enumerate(header)}
    ints = {name: _integers(path, lines, name, columns[name]) for name in COLUMNS[1:]}
    _check_rows(path, lines, columns["id"], ints)
    return Problem(tuple(columns["id"]), ints["lower"], ints["upper"], ints["size"])


def _integers(path: Path, lines: np.ndarray, name: str, values: list[str]) -> np.ndarray:
    try:
        return np.array(values, dtype=np.int64) if values else np.zeros(0, np.int64)
    except (ValueError, OverflowError):
        for line, value in zip(lines, values):
            try:
                int(value)
            except ValueError:
                raise TraceFormatError(f"{path}: line {line}: {name} {value!r} is not an integer") from None
        raise TraceFormatError(f"{path}: a {name} value does not fit in int64") from None


def _check_rows(path: Path, lines: np.ndarray, ids: list[str], ints: dict[str, np.ndarray]) -> None:
    """The rules Problem checks too, but reported by line number."""
    empty = [line for line, i in zip(lines, ids) if not i]
    if empty:
        raise TraceFormatError(f"{path}: line {empty[0]}: empty id")
    bad = np.flatnonzero(ints["lower"] >= ints["upper"])
    if len(bad):
        k = bad[0]
        raise TraceFormatError(f"{path}: line {lines[k]}: lower {ints['lower'][k]} >= upper {ints['upper'][k]}; "
                               "the lifetime [lower, upper) must be non-empty")
    bad = np.flatnonzero(ints["size"] < 0)
    if len(bad):
        raise TraceFormatError(f"{path}: line {lines[bad[0]]}: size {ints['size'][bad[0]]} is negative")
    first_line: dict[str, int] = {}
    for line, i in zip(lines, ids):
        if i in first_line:
            raise TraceFormatError(f"{path}: line {line}: id {i!r} repeats line {first_line[i]}; ids must be unique")
        first_line[i] = int(line)


def write_plan(path: str | Path, plan: Plan) -> None:
    """`plan`'s buffers as id,lower,upper,size,offset rows, in the instance's order. The file appears whole or not
    at all (written aside, then renamed): a job's workers poll for it while the scheduler writes it, and a torn
    read gave a worker offsets that did not match their sizes."""
    p = plan.problem
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    with partial.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS + ("offset",))
        writer.writerows(zip(p.ids, p.lower.tolist(), p.upper.tolist(), p.size.tolist(), plan.offsets.tolist()))
    os.replace(partial, path)
