"""Reward specs: the strings that name a reward, and the functions they name.

A spec is a built-in grader name (`math`, `math_lenient`, `multiple_choice`, `exact`;
`ngrpo.rewards.grader`), `package.module:function` (imported by name) or `path/to/file.py:function`
(loaded from that file, registered in `sys.modules` under a name derived from its path, so that a
worker process finds the same module and pickling by reference works). `spec_of` is the inverse for
a Python callable: the spec recorded in a run's config.yaml.

Used by the reward set (`ngrpo.rewards.functions`), by the worker that runs a user function
(`ngrpo.rewards.user`) and by config validation.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ngrpo.rewards.grader import GRADERS
from ngrpo.utils.errors import NgrpoError

_FILE_MODULE_PREFIX = "ngrpo_user_rewards_"


def check_spec(spec: str) -> None:
    """Syntax check of a reward spec (no import); `NgrpoError` says what forms are allowed."""
    if spec in GRADERS:
        return
    module, sep, name = spec.rpartition(":")
    name = name.strip()
    if not sep or not module.strip() or not name.replace(".", "_").isidentifier():
        raise NgrpoError(
            f"{spec!r} is not a reward: use a built-in ({', '.join(GRADERS)}), "
            "module:function, or path/to/file.py:function"
        )


def _split(spec: str) -> tuple[str, str]:
    check_spec(spec)
    module, _, name = spec.rpartition(":")
    return module.strip(), name.strip()


def absolute_spec(spec: str) -> str:
    """A `file.py:function` spec with its path made absolute (other specs unchanged)."""
    if spec in GRADERS:
        return spec
    module, name = _split(spec)
    if module.endswith(".py"):
        return f"{Path(module).expanduser().resolve()}:{name}"
    return spec


def _load_file(path_text: str) -> Any:
    path = Path(path_text).expanduser().resolve()
    if not path.is_file():
        raise NgrpoError(f"reward file {str(path)!r} does not exist")
    # The same name in every process (a worker unpickles functions by module name).
    module_name = _FILE_MODULE_PREFIX + hashlib.sha1(str(path).encode()).hexdigest()[:12]
    if module_name in sys.modules:
        return sys.modules[module_name]
    loader_spec = importlib.util.spec_from_file_location(module_name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise NgrpoError(f"cannot load reward file {str(path)!r}")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[module_name] = module  # pickling by reference needs it registered
    try:
        loader_spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[module_name]
        raise NgrpoError(
            f"reward file {str(path)!r} failed to load: {type(err).__name__}: {err}"
        ) from err
    return module


def import_function(spec: str) -> Callable:
    """The callable a `module:function` / `file.py:function` spec names, or `NgrpoError`."""
    module_text, name = _split(spec)
    if module_text == "__main__":
        raise NgrpoError(
            f"reward function {name} was defined in a script's __main__ and cannot be found from "
            f"here; pass it again with ngrpo.train(..., reward_funcs=[{name}])"
        )
    if module_text.endswith(".py"):
        module = _load_file(module_text)
    else:
        try:
            module = importlib.import_module(module_text)
        except Exception as err:
            raise NgrpoError(
                f"reward {spec!r}: cannot import module {module_text!r}: "
                f"{type(err).__name__}: {err}"
            ) from err
    target: Any = module
    for part in name.split("."):
        if not hasattr(target, part):
            raise NgrpoError(f"reward {spec!r}: {module_text!r} has no attribute {name!r}")
        target = getattr(target, part)
    if not callable(target):
        raise NgrpoError(f"reward {spec!r}: {name!r} is not callable")
    return target


def spec_of(fn: Callable) -> str:
    """The spec that names a Python callable (`module:qualname`), recorded in config.yaml."""
    module = getattr(fn, "__module__", None) or "__main__"
    if module.startswith(_FILE_MODULE_PREFIX):
        module = sys.modules[module].__file__ or module
    return f"{module}:{getattr(fn, '__qualname__', getattr(fn, '__name__', 'reward'))}"
