"""Known divergences: class patterns with the reason each is expected.

The file (`known_divergences.json` beside this module by default, `--known FILE`):

    {"divergences": [
        {"class": "handshake | syn.field:flags | fallback=yes/no*",
         "reason": "why the two IUTs differ here, and which one the RFC backs"}
    ]}

`class` is a divergence class id (`observe.class_id`: seed | mutated step.kind:target
... | field=first IUT/second IUT; ...) or an `fnmatch` pattern of ids, or a list of
them; the values are in the order of `--iut` (default kernel, then stack-v1). A pattern
`* ack.length *` names a trigger: the mutated `step.kind:target` with spaces around it
(labels are space-separated), whatever the seed and the consequences. Every entry
needs a reason.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PATH = Path(__file__).with_name("known_divergences.json")


class KnownError(Exception):
    """The known-divergences file cannot be used; the message says where and why."""


@dataclass(frozen=True)
class Known:
    patterns: tuple[str, ...]
    reason: str


def load(path: Path = DEFAULT_PATH) -> list[Known]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise KnownError(f"{path}: {error}") from None
    entries = data.get("divergences") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise KnownError(f'{path}: expected {{"divergences": [...]}}')
    known = []
    for n, entry in enumerate(entries):
        if not isinstance(entry, dict) or not entry.get("class") or not entry.get("reason"):
            raise KnownError(f'{path}: entry {n} needs a non-empty "class" and "reason"')
        patterns = entry["class"] if isinstance(entry["class"], list) else [entry["class"]]
        known.append(Known(tuple(map(str, patterns)), str(entry["reason"])))
    return known


def match(known: list[Known], class_id: str) -> Known | None:
    return next(
        (k for k in known if any(fnmatch.fnmatchcase(class_id, p) for p in k.patterns)), None
    )
