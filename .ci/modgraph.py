#!/usr/bin/env python3
"""Prints the module graph of tchu-runtime/src and fails on a circle.

A node is a top-level module: `foo.rs`, or a folder `foo/` with everything under it. An edge
`a -> b` is a `crate::b...` path in a's code (a `use` or an inline path such as
`crate::trace::TraceContext`), with comments, strings and `#[cfg(test)]` modules left out.
`crate::Name` re-exported by lib.rs counts as the module it comes from. `super::`/`self::`
never leave a node. Prints the layers (each module above everything it imports), then every
circle; exits 1 if there is one.

Usage: python3 .ci/modgraph.py [SRC_DIR]   (default: tchu-runtime/src; Python 3 stdlib only)
"""
import re
import sys
from pathlib import Path

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
# A char literal (not a lifetime): 'a', '"', '\'', '\n', '\x7f', '\u{1F600}'.
CHAR = re.compile(r"'(?:\\(?:x[0-9a-fA-F]{2}|u\{[0-9a-fA-F]+\}|.)|[^\\'\n])'")


def strip_code(text: str) -> str:
    """Blanks out comments, string and char literals (keeping newlines)."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    out.append("\n" if text[i] == "\n" else "")
                    i += 1
        elif c == "r" and re.match(r'r#*"', text[i:]):
            hashes = re.match(r'r(#*)"', text[i:]).group(1)
            end = text.find('"' + hashes, i + 2 + len(hashes))
            j = n if end < 0 else end + 1 + len(hashes)
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j + 1
        elif c == "'" and CHAR.match(text, i):
            i = CHAR.match(text, i).end()
            out.append("' '")
        else:
            out.append(c)
            i += 1
    return "".join(out)


def drop_test_modules(code: str) -> str:
    """Removes `#[cfg(test)] mod name { ... }` bodies."""
    while True:
        m = re.search(r"#\[cfg\(test\)\]\s*(pub(\([^)]*\))?\s+)?mod\s+" + IDENT + r"\s*\{", code)
        if not m:
            return code
        depth, j = 1, m.end()
        while j < len(code) and depth:
            depth += {"{": 1, "}": -1}.get(code[j], 0)
            j += 1
        code = code[:m.start()] + "\n" * code.count("\n", m.start(), j) + code[j:]


def crate_targets(code: str):
    """The first path segment after each `crate::` (expanding `crate::{a::X, b}`)."""
    for m in re.finditer(r"\bcrate\s*::\s*(\{|" + IDENT + ")", code):
        if m.group(1) != "{":
            yield m.group(1), m.start()
            continue
        depth, j, item = 1, m.end(), ""
        while j < len(code) and depth:
            ch = code[j]
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            if depth == 1 and ch == ",":
                yield from ((seg, m.start()) for seg in re.findall("^\\s*(" + IDENT + ")", item))
                item = ""
            elif depth >= 1:
                item += ch
            j += 1
        yield from ((seg, m.start()) for seg in re.findall("^\\s*(" + IDENT + ")", item))


def main() -> int:
    src = Path(sys.argv[1] if len(sys.argv) > 1 else "tchu-runtime/src")
    modules = {p.stem for p in src.glob("*.rs") if p.stem not in ("lib", "main")}
    modules |= {p.name for p in src.iterdir() if p.is_dir()}
    lib = drop_test_modules(strip_code((src / "lib.rs").read_text()))
    # `pub use module::{A, B};` / `pub use module::sub::C;` in lib.rs: where root names live.
    root_names = {}
    for m in re.finditer(r"\bpub\s+use\s+(" + IDENT + r")\s*::\s*([^;]*);", lib):
        if m.group(1) in modules:
            for name in re.findall(IDENT, m.group(2)):
                root_names.setdefault(name, set()).add(m.group(1))
    # Inline modules of lib.rs (`pub mod headers { pub use crate::dispatch::... }`).
    for m in re.finditer(r"\bmod\s+(" + IDENT + r")\s*\{", lib):
        depth, j = 1, m.end()
        while j < len(lib) and depth:
            depth += {"{": 1, "}": -1}.get(lib[j], 0)
            j += 1
        root_names[m.group(1)] = {t for t, _ in crate_targets(lib[m.end():j]) if t in modules}

    edges = {mod: set() for mod in modules}
    where = {}  # (a, b) -> first "file:line" of an a -> b path
    for mod in sorted(modules):
        files = [src / f"{mod}.rs"] if (src / f"{mod}.rs").exists() else []
        if (src / mod).is_dir():
            files += sorted((src / mod).rglob("*.rs"))
        for f in files:
            code = drop_test_modules(strip_code(f.read_text()))
            for seg, at in crate_targets(code):
                for target in ({seg} & modules) or root_names.get(seg, set()):
                    if target != mod:
                        edges[mod].add(target)
                        line = code.count("\n", 0, at) + 1
                        where.setdefault((mod, target), f"{f.relative_to(src)}:{line}")

    # Strongly connected components (Tarjan): a component of two or more is a circle.
    index, low, stack, on, sccs = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            sccs.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(modules):
        if v not in index:
            visit(v)

    # Layers over the components: 0 imports nothing of the crate, n imports layers below n.
    comp_of = {v: i for i, c in enumerate(sccs) for v in c}
    level = {}
    for i, comp in enumerate(sccs):  # Tarjan emits a component after everything it reaches
        deps = {comp_of[w] for v in comp for w in edges[v]} - {i}
        level[i] = 1 + max((level[d] for d in deps), default=-1)
    name = lambda v: v + "/" if (src / v).is_dir() else v + ".rs"
    print(f"module graph of {src} ({len(modules)} modules, {sum(map(len, edges.values()))} edges)")
    for lv in range(max(level.values(), default=-1) + 1):
        print(f"layer {lv}:")
        for i in sorted((i for i in level if level[i] == lv), key=lambda i: sccs[i]):
            for v in sccs[i]:
                deps = ", ".join(name(w) for w in sorted(edges[v])) or "-"
                print(f"  {name(v):16} -> {deps}")
    circles = [c for c in sccs if len(c) > 1]
    for c in circles:
        print(f"CIRCLE: {' <-> '.join(name(v) for v in c)}")
        for v in c:
            for w in sorted(edges[v] & set(c)):
                print(f"  {name(v)} -> {name(w)}  (first at {where[(v, w)]})")
    if circles:
        print(f"{len(circles)} circle(s): layers must point one way (see ARCHITECTURE.md)")
        return 1
    print("no circle")
    return 0


if __name__ == "__main__":
    sys.exit(main())
