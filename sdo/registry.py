"""One registry for every kind of plug-in (models, samplers, estimators, tasks, rewards, image
domains): a name maps to one entry, the entry must be of the kind's base class, and a second
entry under a taken name is refused with a message naming both files. Each plug-in file
registers itself when it is imported, so adding one is one new file."""

from __future__ import annotations

import inspect
from pathlib import Path


def source_file(entry) -> str:
    """The file that defines `entry` (a class or function, or an object with a `source`)."""
    given = getattr(entry, "source", None)
    if isinstance(given, str):
        return given
    target = entry if inspect.isclass(entry) or inspect.isfunction(entry) else type(entry)
    try:
        return str(Path(inspect.getsourcefile(target)).resolve())
    except (TypeError, OSError):
        return "<unknown file>"


class Registry(dict):
    """Name -> entry for one `kind` of plug-in. `base`: the class every entry must be (a
    subclass of, for class entries; an instance of, for others); None: anything."""

    def __init__(self, kind: str, base: type | None = None):
        super().__init__()
        self.kind, self.base = kind, base

    def register(self, name: str, entry):
        """Add `entry` under `name` and return it; TypeError for the wrong kind of entry,
        ValueError when another file already registered the name."""
        if self.base is not None:
            fits = issubclass(entry, self.base) if inspect.isclass(entry) else isinstance(entry, self.base)
            if not fits:
                raise TypeError(f"{self.kind} {name!r} must be a {self.base.__name__}, got {entry!r}")
        if name in self and self[name] is not entry:
            first, second = source_file(self[name]), source_file(entry)
            if first != second:
                raise ValueError(f"{self.kind} {name!r} is registered twice: by {first} and by {second}")
        self[name] = entry
        return entry

    def lookup(self, name: str):
        """The entry `name`; ValueError naming the registered ones."""
        if name not in self:
            raise ValueError(f"unknown {self.kind} {name!r}; known: {', '.join(sorted(map(str, self))) or 'none'}")
        return self[name]
