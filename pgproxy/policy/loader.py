"""Reading policy files: the policy layer's only I/O.

Turns a directory of YAML files into a validated :class:`~pgproxy.policy.model.PolicySet`, or raises
:class:`PolicyLoadError` listing every problem with its file, line and field path, such as
``policies/agents.yaml:12: rules[0].effect: Input should be 'allow', 'deny' or 'require_approval'``.

YAML is read with PyYAML's safe loader only. The composed node tree (which keeps line numbers) is
checked for duplicate keys and non-string keys before it is constructed, and pydantic's error
locations are mapped back onto it. This module must not decide anything about statements (that is the
engine's job) and must not be imported by the proxy's hot path.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from pgproxy.policy.model import PolicyFile, PolicySet, Source

__all__ = ["PolicyLoadError", "Problem", "load_policy_dir", "load_yaml_file", "load_yaml_text", "policy_files"]

M = TypeVar("M", bound=BaseModel)

_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
POLICY_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a policy (or policy test) file."""

    file: str
    line: int | None  # 1-based; None when the problem is not in one place (a missing directory)
    path: str  # field path such as ``rules[0].effect``; "" when the problem is not about one field
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class PolicyLoadError(Exception):
    """The policy (or a policy test file) does not load; ``problems`` says where and why."""

    def __init__(self, problems: list[Problem] | tuple[Problem, ...]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(str(problem) for problem in self.problems))


def policy_files(directory: Path) -> list[Path]:
    """The policy files of a directory: ``*.yaml``/``*.yml`` directly in it, sorted by name."""
    return sorted(p for p in directory.iterdir() if p.suffix in POLICY_SUFFIXES and p.is_file())


def load_policy_dir(directory: str | Path) -> PolicySet:
    """Load every policy file of ``directory`` into one :class:`PolicySet`.

    Raises :class:`PolicyLoadError` when the directory is missing or holds no policy file, when any file
    has a problem, when an id is defined twice (in one file or across files), or when the set has no rule.
    """
    directory = Path(directory)
    if not directory.is_dir():
        what = "does not exist" if not directory.exists() else "is not a directory"
        raise PolicyLoadError([Problem(str(directory), None, "", f"policy directory {what}")])
    files = policy_files(directory)
    if not files:
        raise PolicyLoadError([Problem(str(directory), None, "", "no policy files (*.yaml, *.yml) in this directory")])

    problems: list[Problem] = []
    loaded: list[PolicyFile] = []
    sources: dict[str, Source] = {}
    for path in files:
        try:
            policy, root = load_yaml_file(path, PolicyFile)
        except PolicyLoadError as exc:
            problems.extend(exc.problems)
            continue
        loaded.append(policy)
        for kind in ("rules", "sessions", "masks"):
            for index, entry in enumerate(getattr(policy, kind)):
                line, field_path = locate(root, (kind, index, "id"))
                source = Source(str(path), line or 1)
                if entry.id in sources:
                    message = f"duplicate id {entry.id!r} (first defined at {sources[entry.id]})"
                    problems.append(Problem(str(path), line, field_path, message))
                else:
                    sources[entry.id] = source
    if problems:
        raise PolicyLoadError(problems)
    policy_set = PolicySet.from_files(loaded, sources)
    if not policy_set.rules:
        message = "the policy set has no rules: every statement would be denied"
        raise PolicyLoadError([Problem(str(directory), None, "", message)])
    return policy_set


def load_yaml_file(path: Path, model: type[M]) -> tuple[M, Node | None]:
    """Read and validate one YAML file as ``model``; also returns the node tree (for line lookups)."""
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise PolicyLoadError([Problem(str(path), None, "", f"cannot read: {exc.strerror or exc}")]) from None
    except UnicodeDecodeError as exc:
        message = f"not UTF-8 text ({exc.reason} at byte {exc.start})"
        raise PolicyLoadError([Problem(str(path), None, "", message)]) from None
    return load_yaml_text(text, model, str(path))


def load_yaml_text(text: str, model: type[M], name: str) -> tuple[M, Node | None]:
    """Parse and validate YAML text as ``model``; ``name`` is used as the file name in problems."""
    root, data = _parse(text, name)
    try:
        return model.model_validate({} if data is None else data), root
    except ValidationError as exc:
        errors = exc.errors()
        # An empty-after-validation list is reported with its bad items already: keep only the items.
        inner = {tuple(e["loc"][:i]) for e in errors for i in range(len(e["loc"]))}
        kept = [e for e in errors if not (e["type"] == "too_short" and tuple(e["loc"]) in inner)]
        raise PolicyLoadError([_problem(name, root, model, error) for error in kept]) from None


# ---------------------------------------------------------------------------------------------
# YAML


def _parse(text: str, name: str) -> tuple[Node | None, object]:
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is not None:
            problems = list(_check_keys(root, name))
            if problems:
                raise PolicyLoadError(problems)
        data = None if root is None else loader.construct_document(root)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        message = " ".join(part for part in (exc.context, exc.problem) if part)
        if "\t" in text and "'\\t'" in message:
            message += " (indent with spaces, not tabs)"
        line = None if mark is None else mark.line + 1
        raise PolicyLoadError([Problem(name, line, "", f"invalid YAML: {message}")]) from None
    except yaml.YAMLError as exc:
        raise PolicyLoadError([Problem(name, None, "", f"invalid YAML: {exc}")]) from None
    finally:
        loader.dispose()
    if root is not None and not isinstance(root, MappingNode):
        raise PolicyLoadError([Problem(name, _line(root), "", "the file must be a mapping (e.g. 'rules: [...]')")])
    return root, data


def _check_keys(node: Node, name: str, path: str = "", seen: set[int] | None = None) -> Iterator[Problem]:
    """Duplicate and non-string mapping keys, anywhere in the tree (aliases visited once)."""
    seen = set() if seen is None else seen
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, MappingNode):
        first: dict[str, int] = {}
        for key, value in node.value:
            if key.tag == _MERGE_TAG:
                yield from _check_keys(value, name, path, seen)
                continue
            if not isinstance(key, ScalarNode) or key.tag != _STR_TAG:
                yield Problem(name, _line(key), path, "keys must be plain text (quote keys such as 'on', 'yes', '1')")
                continue
            child = _join(path, key.value)
            if key.value in first:
                yield Problem(name, _line(key), child, f"duplicate key (first at line {first[key.value]})")
            else:
                first[key.value] = _line(key)
            yield from _check_keys(value, name, child, seen)
    elif isinstance(node, SequenceNode):
        for index, item in enumerate(node.value):
            yield from _check_keys(item, name, _join(path, index), seen)


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1


def _join(path: str, part: str | int) -> str:
    if isinstance(part, int):
        return f"{path}[{part}]"
    if _PLAIN_KEY.fullmatch(part):
        return f"{path}.{part}" if path else part
    return f'{path}["{part}"]'


def locate(root: Node | None, loc: tuple[int | str, ...]) -> tuple[int | None, str]:
    """Map a pydantic error location onto the node tree: (line, field path as written in the file).

    Location parts that are not in the file (a missing field, pydantic's internal tags) do not move the
    line; a missing field at the end still shows in the path.
    """
    node = root
    line = None if root is None else _line(root)
    path = ""
    for index, part in enumerate(loc):
        child = _child(node, part)
        if child is not None:
            line, node = child
            path = _join(path, part)
        elif index == len(loc) - 1 and isinstance(part, str) and part != "[key]" and _PLAIN_KEY.fullmatch(part):
            path = _join(path, part)
    return line, path


def _child(node: Node | None, part: int | str) -> tuple[int, Node] | None:
    if isinstance(node, MappingNode) and isinstance(part, str):
        for key, value in node.value:
            if isinstance(key, ScalarNode) and key.value == part:
                return _line(key), value
    if isinstance(node, SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
        item = node.value[part]
        return _line(item), item
    return None


# ---------------------------------------------------------------------------------------------
# pydantic errors → problems


def _problem(name: str, root: Node | None, model: type[BaseModel], error: Any) -> Problem:
    loc = tuple(error["loc"])
    line, path = locate(root, loc)
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden" and loc:
        allowed = _fields_at(model, loc[:-1])
        message = f"unknown field {loc[-1]!r}"
        if allowed:
            close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            message += f" (did you mean {close[0]!r}?)" if close else f"; expected one of {', '.join(allowed)}"
    elif error["type"] == "missing":
        message = "required field is missing"
    elif error["type"] == "too_short":
        message = "must list at least one entry"
    return Problem(name, line, path, message)


def _fields_at(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """The field names of the model found at ``loc`` inside ``model`` (best effort, for messages)."""
    current: Any = model
    for part in loc:
        current = _step(current, part)
        if current is None:
            return []
    current = _unwrap(current)
    return list(current.model_fields) if isinstance(current, type) and issubclass(current, BaseModel) else []


def _step(annotation: Any, part: int | str) -> Any:
    annotation = _unwrap(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        field = annotation.model_fields.get(str(part))
        return None if field is None else field.annotation
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (tuple, list, frozenset, set) and args:
        return args[0]
    if origin is dict and len(args) == 2:
        return args[1]
    return None


def _unwrap(annotation: Any) -> Any:
    """Strip Annotated and Optional wrappers."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            members = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
            if len(members) != 1:
                return annotation
            annotation = members[0]
        else:
            return annotation
