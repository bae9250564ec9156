"""Checks on a workflow's task graph, shared by ActionChain and Orquesta: unreachable tasks and
cycles nothing can leave, found at pack load so they never start running."""

from __future__ import annotations

from collections.abc import Iterable, Mapping


def reachable(starts: Iterable[str], edges: Mapping[str, Iterable[str]]) -> set[str]:
    seen: set[str] = set()
    stack = list(starts)
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        stack.extend(t for t in edges.get(node, ()) if t not in seen)
    return seen


def strongly_connected(nodes: Iterable[str], edges: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative (a long chain must not hit the recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(list(edges.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(list(edges.get(child, ())))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(component)
    return components


def closed_cycles(nodes: Iterable[str], edges: Mapping[str, Iterable[str]],
                  can_stop: Mapping[str, bool]) -> list[list[str]]:
    """Cycles a run can never leave: no edge out of the cycle, and no member that may stop there
    (a conditional transition, a missing branch, a `fail`)."""
    found = []
    for component in strongly_connected(nodes, edges):
        members = set(component)
        if len(component) == 1 and component[0] not in set(edges.get(component[0], ())):
            continue
        leaves = any(t not in members for n in component for t in edges.get(n, ()))
        if not leaves and not any(can_stop.get(n, True) for n in component):
            found.append(sorted(component))
    return found
