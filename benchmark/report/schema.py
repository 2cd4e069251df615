"""What the report accepts from a result.json, and how it writes its files as one set.

A result file is input the report does not control (hand-edited, damaged, from another version): each is
read with bounds (size, nesting) and its known keys checked for their types before anything renders it, so
one odd file becomes one `invalid` row with the reason, never a crash. Unknown keys are accepted: newer
versions add fields (they are rendered where the renderer knows them, ignored elsewhere).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmark.core.errors import DiskFullError
from benchmark.core.io import current_umask, disk_full
from benchmark.run.key import CELL_FIELDS

MAX_BYTES = 64 * 2**20  # a result.json is kB (a long curve: a few hundred kB)
MAX_DEPTH = 32  # its deepest real nesting is about 8 (config.attack.kwargs...)
NO_DIGEST = "no digest: written before digests existed, or edited with its digest removed; not verified"

Check = Callable[[Any], bool]


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _optional(check: Check) -> Check:
    return lambda v: v is None or check(v)


def _is(kind: type) -> Check:
    return lambda v: isinstance(v, kind)


def _numbers(v: Any) -> bool:
    return isinstance(v, dict) and all(v_ is None or _number(v_) for v_ in v.values())


def _curve(v: Any) -> bool:
    return isinstance(v, list) and all(
        isinstance(r, dict) and all(_optional(_number)(x) for x in r.values()) for r in v
    )


def _natural(v: Any) -> bool:
    return isinstance(v, dict) and all(
        isinstance(v.get(p, {}), dict) and _numbers(v.get(p, {})) for p in ("before", "after")
    )


# The known keys and the type each must have; a key that is absent is left to result_problems (required ones).
TYPES: dict[str, tuple[Check, str]] = {
    "model_source": (_is(str), "a string"),
    "der": (_optional(_number), "a number or null"),
    "defense_info": (_optional(_is(dict)), "an object or null"),
    "timing_s": (_numbers, "an object of numbers"),
    "config": (_is(dict), "an object"),
    "natural_asr": (_optional(_natural), "an object with before/after objects of numbers"),
    "model_meta": (_optional(_is(dict)), "an object or null"),
    "model_sha256": (_optional(_is(str)), "a string or null"),
    "digest": (_is(str), "a string"),
}
INFO_TYPES: dict[str, tuple[Check, str]] = {
    "curve": (_optional(_curve), "a list of objects of numbers"),
    "selected_threshold": (_optional(_number), "a number or null"),
}


def load_json(path: Path) -> Any:
    """The JSON in `path`, refused (ValueError) when larger or deeper than any result.json can be."""
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise ValueError(f"{size} bytes, more than the {MAX_BYTES} a result file can hold")
    text = path.read_text()
    if _depth_of_text(text) > MAX_DEPTH:
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
    return json.loads(text)


def _depth_of_text(text: str) -> int:
    """The deepest bracket nesting of a JSON text (brackets inside strings skipped), without recursion."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            escaped, in_string = (False, True) if escaped else (ch == "\\", ch != '"')
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def type_problems(result: Mapping[str, Any]) -> list[str]:
    """The known keys of a result.json whose value has the wrong type (unknown keys are accepted)."""
    problems = [
        f"{k} is {_shown(result[k])}, expected {what}"
        for k, (ok, what) in TYPES.items()
        if k in result and not ok(result[k])
    ]
    cell = result.get("cell")
    if isinstance(cell, dict):
        problems += [
            f"cell.{k} is {_shown(cell[k])}, expected {'an integer' if k == 'seed' else 'a string'}"
            for k in CELL_FIELDS
            if k in cell
            and not (
                isinstance(cell[k], int) and not isinstance(cell[k], bool) if k == "seed" else isinstance(cell[k], str)
            )
        ]
    info = result.get("defense_info")
    if isinstance(info, dict):
        problems += [
            f"defense_info.{k} is {_shown(info[k])}, expected {what}"
            for k, (ok, what) in INFO_TYPES.items()
            if k in info and not ok(info[k])
        ]
    return problems


def _shown(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else f"a {type(value).__name__}"


def write_set(files: Mapping[Path, str]) -> None:
    """Write every file of the set to a temp name first, then rename each into place.

    A failure while writing (a full disk, Ctrl-C) leaves all the old files; only a crash between the renames,
    which touch no data, could mix old and new.
    """
    temps: dict[Path, str] = {}
    try:
        for path, text in files.items():
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            temps[path] = tmp
            os.fchmod(fd, 0o666 & ~current_umask())
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
        for path, tmp in temps.items():
            os.replace(tmp, path)
    except BaseException as exc:
        for tmp in temps.values():
            Path(tmp).unlink(missing_ok=True)
        if disk_full(exc):
            folder = next(iter(files)).parent
            raise DiskFullError(folder, sum(len(t.encode()) for t in files.values()), "writing the report") from None
        raise


def report_notes(cells: Sequence[Any], running: Sequence[str]) -> list[str]:
    """What the report must say beyond its tables: cells left out because running, results not verified."""
    notes = [
        f"{path}: left out, another sweep is running this cell now (rerun the report after it)" for path in running
    ]
    notes += [f"{c.row['path']}: {note}" for c in cells for note in c.notes]
    return notes


def notes_markdown(notes: Sequence[str]) -> str:
    """results.md's closing section listing the notes (empty when there are none)."""
    if not notes:
        return ""
    return "\n## Notes\n\n" + "".join(f"- {note}\n" for note in notes)
