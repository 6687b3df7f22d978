"""A manifest's YAML read safely and with line numbers, and the error that lists its problems by line.

What lives here: ``load_yaml`` (one YAML document, bounded before anything expands it: aliases that refer to
themselves or expand past ``MAX_EXPANDED_NODES`` nodes are refused, see ``check_alias_expansion``), the
line of every key and value by field path (``YamlLines``), and ``Issue`` / ``ManifestError`` /
``format_loc``, which name each problem as ``file:line: models[2].budget: message``. ``modelpress.manifest``
validates the loaded data against its schema and expands it into jobs.

Example:
    >>> data, lines = load_yaml("models:\\n  - mlp\\n  - model: digits_cnn\\n", "m.yaml")
    >>> data["models"][1], lines.line(("models", 1, "model")), format_loc(("models", 1, "model"))
    ({'model': 'digits_cnn'}, 3, 'models[1].model')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modelpress.errors import UserInputError

#: A field path inside a manifest: ``("models", 2, "budget")``.
Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class Issue:
    """One problem: where (line, field path) and what."""

    line: int | None
    loc: Loc
    message: str

    def format(self, filename: str) -> str:
        where = f"{filename}:{self.line}" if self.line else filename
        return f"{where}: {format_loc(self.loc)}: {self.message}" if self.loc else f"{where}: {self.message}"


class ManifestError(UserInputError):
    """The manifest has problems; ``issues`` lists each with its line number and field."""

    def __init__(self, filename: str, issues: list[Issue]) -> None:
        self.filename, self.issues = filename, issues
        n = len(issues)
        lines = [f"{filename} is invalid ({n} problem{'s' if n != 1 else ''}); nothing was submitted:"]
        lines += [f"  {i.format(filename)}" for i in issues]
        super().__init__("\n".join(lines))


def format_loc(loc: Loc) -> str:
    """``("models", 2, "budget")`` → ``models[2].budget``."""
    out = ""
    for p in loc:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


# Hostile YAML is bounded before anything expands it: aliases let a 1 kB file name billions of nodes
# ("billion laughs") or itself (``a: &a [*a]``), and both the line walk below and pydantic would expand them.
MAX_EXPANDED_NODES = 1_000_000


def check_alias_expansion(root: Any, filename: str, *, limit: int = MAX_EXPANDED_NODES) -> None:
    """Refuse a node graph that refers to itself or expands to more than ``limit`` nodes.

    Counts each node's expanded size once (memoized by identity), so the check is linear in the
    *composed* document however many times aliases repeat it.

    Example:
        >>> import yaml
        >>> check_alias_expansion(yaml.compose("a: &a [1, 2]\\nb: *a"), "m.yaml")
        >>> try:
        ...     check_alias_expansion(yaml.compose("a: &a [*a]"), "m.yaml")
        ... except ManifestError as e:
        ...     print(e.issues[0].line)
        1
    """
    import yaml

    sizes: dict[int, int] = {}
    active: set[int] = set()
    mapping = yaml.MappingNode

    def size(node: Any) -> int:
        value = node.value
        if isinstance(value, str):
            return 1  # a scalar
        nid = id(node)
        known = sizes.get(nid)
        if known is not None:
            return known
        if nid in active:
            raise ManifestError(filename, [Issue(node.start_mark.line + 1, (),
                "a YAML alias refers to the node that contains it (a self-referencing alias); "
                "manifests must be finite trees")])
        active.add(nid)
        if isinstance(node, mapping):
            total = 1 + sum(size(k) + size(v) for k, v in value)
        else:
            total = 1 + sum(size(c) for c in value)
        active.discard(nid)
        if total > limit:
            raise ManifestError(filename, [Issue(node.start_mark.line + 1, (),
                f"the YAML aliases here expand to more than {limit} nodes; write the manifest out "
                "instead of nesting aliases")])
        sizes[nid] = total
        return total

    try:
        size(root)
    except RecursionError:
        raise ManifestError(filename, [Issue(None, (), "the YAML is nested too deeply")]) from None


class YamlLines:
    """Line numbers of every key and value in a YAML document, by path (from yaml's node marks)."""

    def __init__(self) -> None:
        self.values: dict[Loc, int] = {}
        self.keys: dict[Loc, int] = {}
        self.duplicates: list[Issue] = []

    def walk(self, node: Any, loc: Loc = ()) -> None:
        import yaml

        self.values[loc] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for k, v in node.value:
                key = k.value if isinstance(k, yaml.ScalarNode) else str(k.start_mark)
                if key in seen:
                    # yaml.safe_load silently keeps the last one; a manifest author meant one of them.
                    self.duplicates.append(Issue(k.start_mark.line + 1, loc + (key,), "duplicate key"))
                seen.add(key)
                self.keys[loc + (key,)] = k.start_mark.line + 1
                self.walk(v, loc + (key,))
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                self.walk(v, loc + (i,))

    def line(self, loc: Loc) -> int | None:
        """The line of the field's key, or of the nearest enclosing node the file has (a missing field's parent)."""
        if loc in self.keys:
            return self.keys[loc]
        for n in range(len(loc), -1, -1):  # the nearest enclosing node that exists in the file
            if loc[:n] in self.values:
                return self.values[loc[:n]]
        return None


def load_yaml(text: str, filename: str, *, max_nodes: int = MAX_EXPANDED_NODES) -> tuple[Any, YamlLines]:
    """The document's data and the line of each of its fields; ``ManifestError`` (with the line) when the
    text is not YAML, is empty, nests too deeply or expands past ``max_nodes``.

    Example:
        >>> load_yaml("name: weekly", "m.yaml")[0]
        {'name': 'weekly'}
    """
    import yaml

    lines = YamlLines()
    # libyaml's parser when present: the pure-Python one takes minutes on a manifest of 32,768 entries.
    loader = (yaml.CSafeLoader if getattr(yaml, "__with_libyaml__", False) else yaml.SafeLoader)(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise ManifestError(filename, [Issue(1, (), "the file is empty; it needs at least a `models` list")])
        check_alias_expansion(node, filename, limit=max_nodes)
        try:
            lines.walk(node)
        except RecursionError:
            raise ManifestError(filename, [Issue(None, (), "the YAML is nested too deeply")]) from None
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        raise ManifestError(filename, [Issue(mark.line + 1 if mark else None, (),
                                             f"not valid YAML: {e.problem or e}")]) from None
    except yaml.YAMLError as e:
        raise ManifestError(filename, [Issue(None, (), f"not valid YAML: {e}")]) from None
    finally:
        loader.dispose()
    return data, lines


__all__ = ["Issue", "Loc", "MAX_EXPANDED_NODES", "ManifestError", "YamlLines", "check_alias_expansion", "format_loc",
           "load_yaml"]
