"""The import graph of controller/ and registry/, read by grimp (import-linter's engine):
modules at controller/'s root, import circles between modules and between rooms, and imports
that point up the layers of [tool.importlinter]. Function-local and TYPE_CHECKING imports
count: a circle they hold together is still a circle.

  python bench/import_graph.py                 # this tree
  python bench/import_graph.py --tree /tmp/old # another checkout (e.g. a worktree of an
                                               # older commit), measured the same way

Prints a table, then one JSON line of the figures."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import grimp

# top to bottom, as [tool.importlinter]'s layers contract; a module in none is not judged
LAYERS = ["controller.demo", "controller.cli", "controller.runtime", "controller.ops",
          "controller.loop", "controller.executors", "controller.analysis"]


def strongly_connected(nodes: set[str], edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative: the components with more than one node (circles)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in sorted(nodes):
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            node, it = work[-1]
            nxt = next(it, None)
            if nxt is not None:
                if nxt not in nodes:
                    continue
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on.add(nxt)
                    work.append((nxt, iter(sorted(edges.get(nxt, ())))))
                elif nxt in on:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == node:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def room(module: str) -> str:
    """controller.loop.reconciler -> controller.loop; a root module stands for itself."""
    parts = module.split(".")
    return ".".join(parts[:2])


def layer_of(module: str) -> int | None:
    for i, name in enumerate(LAYERS):
        if module == name or module.startswith(name + "."):
            return i
    return None


def measure(tree: Path) -> dict[str, object]:
    sys.path.insert(0, str(tree))
    try:
        graph = grimp.build_graph("controller", "registry", cache_dir=None)
    finally:
        sys.path.remove(str(tree))
    modules = set(graph.modules)
    edges = {m: set(graph.find_modules_directly_imported_by(m)) & modules for m in modules}
    root_modules = sorted(p.stem for p in (tree / "controller").glob("*.py")
                          if p.stem != "__init__")
    module_circles = strongly_connected(modules, edges)
    rooms = {room(m) for m in modules}
    room_edges: dict[str, set[str]] = {}
    for m, targets in edges.items():
        for t in targets:
            if room(t) != room(m):
                room_edges.setdefault(room(m), set()).add(room(t))
    room_circles = strongly_connected(rooms, room_edges)
    upward = sorted(f"{m} -> {t}" for m, targets in edges.items() for t in targets
                    if (a := layer_of(m)) is not None and (b := layer_of(t)) is not None
                    and b < a)
    upward += sorted(f"{m} -> {t}" for m, targets in edges.items() for t in targets
                     if m.startswith("registry") and t.startswith("controller"))
    return {"controller_root_modules": len(root_modules), "root_modules": root_modules,
            "module_circles": module_circles, "room_circles": room_circles,
            "upward_imports": upward, "modules": len(modules)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tree", type=Path, default=Path(__file__).resolve().parents[1])
    args = ap.parse_args()
    tree = args.tree.resolve()
    if not (tree / "controller").is_dir():
        raise SystemExit(f"no controller/ under {tree}: pass --tree a checkout of xlt")
    f = measure(tree)
    rows = [("modules (controller + registry)", f["modules"]),
            ("modules at controller/'s root", f"{f['controller_root_modules']} "
             f"({', '.join(f['root_modules'])})"),
            ("import circles between modules", len(f["module_circles"])),
            ("import circles between rooms", len(f["room_circles"])),
            ("upward imports (layers, registry -> controller)", len(f["upward_imports"]))]
    width = max(len(k) for k, _ in rows)
    print(f"import graph of {tree}")
    for key, value in rows:
        print(f"  {key.ljust(width)}  {value}")
    for circle in f["module_circles"] + f["room_circles"]:
        print(f"  circle: {' <-> '.join(circle)}")
    for edge in f["upward_imports"]:
        print(f"  upward: {edge}")
    print(json.dumps({"controller_root_modules": f["controller_root_modules"],
                      "module_circles": len(f["module_circles"]),
                      "room_circles": len(f["room_circles"]),
                      "upward_imports": len(f["upward_imports"])}))


if __name__ == "__main__":
    main()
