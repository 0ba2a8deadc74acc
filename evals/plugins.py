"""User code loaded by name, one loader for all of it: plug-in files that register models,
samplers, estimators, tasks or rewards (`import_plugin`), and callables named as
`package.module:function` or `path/to/file.py:function` (`load_callable`: a user's reward or
metric). Every failure is a `PluginError` with one line naming the file or name, what went
wrong and what is allowed, so the command line and the config checks say the same."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

CALLABLE_FORMS = "'package.module:function' or 'path/to/file.py:function'"


class PluginError(ValueError):
    """User code that cannot be loaded: a missing file, a syntax error, an error raised on
    import, a registration that collides, or a name that is not there."""


def _module_from_file(path: Path, prefix: str):
    """The module of a Python file, imported once per process (the same file is not run twice)."""
    path = path.resolve()
    name = f"{prefix}{abs(hash(str(path)))}_{path.stem}"
    loaded = sys.modules.get(name)
    if loaded is not None and getattr(loaded, "__file__", None) == str(path):
        return loaded
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as error:
        del sys.modules[name]
        raise PluginError(f"{path}: syntax error on line {error.lineno}: {error.msg}") from None
    except Exception as error:
        del sys.modules[name]
        raise PluginError(f"{path}: importing it raised {type(error).__name__}: {error}") from None
    return module


def import_plugin(path: str | Path) -> None:
    """Import a file that registers plug-ins (its registrations are refused with both files
    named when a name is taken)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise PluginError(
            f"plug-in file {path} does not exist (allowed: a Python file that registers models, "
            "samplers, estimators, tasks or rewards)"
        )
    _module_from_file(path, "_sdo_plugin_")


def load_callable(name: str, base: Path | str = ".") -> Callable:
    """The callable named `package.module:function` or `file.py:function` (a file relative to
    `base`)."""
    source, sep, attribute = name.rpartition(":")
    if not sep or not source or not attribute.isidentifier() or ":" in source:
        raise PluginError(f"{name!r} names no callable; allowed: {CALLABLE_FORMS}")
    if source.endswith(".py"):
        path = Path(base) / source
        if not path.is_file():
            raise PluginError(f"{name!r}: file {path} does not exist; allowed: {CALLABLE_FORMS}")
        module = _module_from_file(path, "_sdo_user_")
    else:
        try:
            module = importlib.import_module(source)
        except ImportError as error:
            raise PluginError(
                f"{name!r}: module {source!r} cannot be imported ({error}); allowed: {CALLABLE_FORMS} "
                "with the module on the Python path"
            ) from None
        except Exception as error:
            raise PluginError(f"{name!r}: importing {source!r} raised {type(error).__name__}: {error}") from None
    function = getattr(module, attribute, None)
    if function is None:
        raise PluginError(f"{name!r}: {source} defines no {attribute!r}")
    if not callable(function):
        raise PluginError(f"{name!r}: {attribute} in {source} is not callable")
    return function
