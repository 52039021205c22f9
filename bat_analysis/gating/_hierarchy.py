"""Gate hierarchies: one ordering (parents first) and one cycle check for every module that walks one.

A hierarchy is a set of named nodes (template gate specs, gates, exported populations), each depending on
other nodes by name (its parent, a boolean gate's operands). :func:`topological_order` returns the nodes with
every dependency before its dependents, keeping the given order wherever the dependencies allow it (a
depth-first walk in input order: a list already ordered parents-first comes back unchanged).
:func:`ancestors` returns a node's chain of parents. Both refuse a cycle with a :class:`HierarchyError` that
names it (``cycle: a -> b -> a``) and an unknown dependency with one naming the node and the missing name.
:func:`parent_cycles` lists every cycle of a parent map at once (for validators reporting all problems). All
three walk each node once per call, so a hostile hierarchy thousands of gates deep costs milliseconds.
"""

from __future__ import annotations

from typing import Callable, Hashable, Iterable, Mapping, Sequence, TypeVar

from ..errors import GatingError

N = TypeVar("N")


class HierarchyError(GatingError):
    """A gate hierarchy with a cycle (``cycle`` lists it, first name repeated last) or an unknown dependency
    (``node`` depends on ``unknown``)."""

    def __init__(self, message: str, *, field: str = "parent", expected: str | None = None,
                 cycle: Sequence[str] = (), node: str | None = None, unknown: str | None = None) -> None:
        self.cycle = tuple(cycle)
        self.node = node
        self.unknown = unknown
        super().__init__(message, field=field, expected=expected)


#: a cycle of more names than this is named by its first and last few (a message stays one readable line)
CYCLE_TEXT_NAMES = 12


def cycle_text(cycle: Sequence[str]) -> str:
    """``a -> b -> a``: how a cycle is named in every message (a long one: ``a -> b -> ... 90 more ... -> a``)."""
    names = [str(c) for c in cycle]
    if len(names) > CYCLE_TEXT_NAMES:
        keep = CYCLE_TEXT_NAMES // 2 - 1
        names = names[:keep] + [f"... {len(names) - 2 * keep} more ..."] + names[-keep:]
    return " -> ".join(names)


def _cycle_error(cycle: Sequence[str]) -> HierarchyError:
    what = "is its own ancestor" if cycle[0] == cycle[-1] else "descends from a cycle"
    return HierarchyError(f"gate {cycle[0]!r} {what} (cycle: {cycle_text(cycle)})", expected="no cycles",
                          cycle=cycle)


def topological_order(nodes: Iterable[N], name: Callable[[N], Hashable],
                      depends_on: Callable[[N], Iterable[Hashable]], *, unknown: str = "raise") -> list[N]:
    """``nodes`` with each node after everything it depends on; stable (input order where free).

    ``depends_on(node)`` lists the names a node needs first (its parent, its operands), in the order they
    are to be visited. ``unknown`` says what a name that is no node means: ``"raise"`` (a
    :class:`HierarchyError` naming both) or ``"ignore"`` (the caller reports it elsewhere). A cycle raises a
    :class:`HierarchyError` whose ``cycle`` lists it. Names must be unique (the caller checks: a later node
    of the same name replaces an earlier one).
    """
    items = list(nodes)
    by_name = {name(n): n for n in items}
    done: set[Hashable] = set()
    out: list[N] = []
    for root in items:
        if name(root) in done:
            continue
        # iterative depth-first walk (no recursion limit on deep hierarchies): a stack of (node, its deps)
        path: list[Hashable] = [name(root)]
        on_path: set[Hashable] = {name(root)}
        stack = [(root, iter(list(depends_on(root))))]
        while stack:
            node, deps = stack[-1]
            for dep in deps:
                if dep in done:
                    continue
                if dep in on_path:
                    raise _cycle_error([str(p) for p in path[path.index(dep):]] + [str(dep)])
                if dep not in by_name:
                    if unknown == "ignore":
                        continue
                    raise HierarchyError(f"gate {name(node)!r}: unknown gate {dep!r}",
                                         expected=f"one of {sorted(map(str, by_name))}",
                                         node=str(name(node)), unknown=str(dep))
                child = by_name[dep]
                path.append(dep)
                on_path.add(dep)
                stack.append((child, iter(list(depends_on(child)))))
                break
            else:
                stack.pop()
                key = path.pop()
                on_path.discard(key)
                done.add(key)
                out.append(node)
    return out


_OWN = object()


def ancestors(start: Hashable, parent_of: Mapping[Hashable, Hashable | None], *, parent: object = _OWN,
              unknown: str = "raise") -> list[Hashable]:
    """The parents of ``start``, nearest first (``start`` itself not included).

    ``parent_of`` maps every node to its parent (None: a root); ``parent`` is the parent of ``start`` when
    that is not ``parent_of[start]`` (a node not in the map, or one of two nodes of the same name). A parent
    that is no node raises a
    :class:`HierarchyError` (``unknown="raise"``) or ends the chain (``"ignore"``). A cycle on the way
    raises a :class:`HierarchyError` whose ``cycle`` is the chain walked from ``start`` up to the repeated
    name (``c -> a -> b -> a``).
    """
    chain: list[Hashable] = [start]
    seen = {start}
    cur = parent_of.get(start) if parent is _OWN else parent
    while cur is not None:
        if cur in seen:
            raise _cycle_error([str(c) for c in chain] + [str(cur)])
        if cur not in parent_of:
            if unknown == "ignore":
                break
            raise HierarchyError(f"gate {chain[-1]!r}: unknown parent {cur!r}", node=str(chain[-1]),
                                 unknown=str(cur))
        chain.append(cur)
        seen.add(cur)
        cur = parent_of[cur]
    return chain[1:]


def parent_cycles(nodes: Iterable[Hashable], parent_of: Mapping[Hashable, Hashable | None]
                  ) -> list[tuple[Hashable, ...]]:
    """Every cycle of a parent map, each once: its names from the first met in ``nodes`` order, that name
    repeated last (``(a, b, a)``). Parents that are no node end a chain. Linear in the number of nodes (each
    is walked once), however deep the hierarchy."""
    state: dict[Hashable, int] = {}  # 1: on the chain being walked, 2: done
    cycles: list[tuple[Hashable, ...]] = []
    for start in nodes:
        path: list[Hashable] = []
        cur: Hashable | None = start
        while cur is not None and cur in parent_of and cur not in state:
            state[cur] = 1
            path.append(cur)
            cur = parent_of[cur]
        if cur is not None and state.get(cur) == 1:  # the walk came back onto itself
            loop = path[path.index(cur):]
            cycles.append((*loop, loop[0]))
        for p in path:
            state[p] = 2
    return cycles
