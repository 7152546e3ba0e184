"""The house in figures: `python3 tools/house.py` prints the package's import graph (checks every import points down,
i.e. to a module of an earlier notebook) and the export cells of `nbs/` (longest, how many are followed at once by an
example or test). `--max_lines N` makes it fail when an export cell is longer than N lines."""
import argparse, ast, json, re, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NBS, PKG = ROOT / 'nbs', ROOT / 'sasa_fastai'

def cells(nb): return json.loads(nb.read_text())['cells']
def src(c): return ''.join(c['source'])
def is_export(c): return c['cell_type'] == 'code' and re.search(r'^#\|\s*export\b', src(c), re.M) is not None
def default_exp(nb):
    for c in cells(nb):
        m = re.search(r'^#\|\s*default_exp\s+(\S+)', src(c), re.M)
        if m: return m.group(1)

def code_lines(c):
    "Lines of code of an export cell: without blank lines and `#|` directives."
    return [l for l in src(c).splitlines() if l.strip() and not l.startswith('#|')]

def is_example(c):
    "A code cell that is neither exported nor hidden: what a reader sees run right after a definition."
    s = src(c)
    return c['cell_type'] == 'code' and not is_export(c) and not re.search(r'^#\|\s*(hide|exporti?)\b', s, re.M) \
        and bool(s.strip())

def export_stats():
    rows = []
    for nb in sorted(NBS.glob('[0-9]*.ipynb')):
        cs = cells(nb)
        for i, c in enumerate(cs):
            if not is_export(c): continue
            nxt = cs[i + 1] if i + 1 < len(cs) else None
            rows.append(dict(nb=nb.name, lines=len(code_lines(c)), followed=bool(nxt and is_example(nxt))))
    return rows

def import_graph():
    "{module: set of sasa_fastai modules it imports}, and the notebook order of the modules."
    order = {default_exp(nb): i for i, nb in enumerate(sorted(NBS.glob('[0-9]*.ipynb'))) if default_exp(nb)}
    graph = {}
    for mod in order:
        tree = ast.parse((PKG / f'{mod}.py').read_text())
        deps = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1: deps.add((node.module or '').split('.')[0])
            elif isinstance(node, ast.ImportFrom) and (node.module or '').startswith('sasa_fastai.'):
                deps.add(node.module.split('.')[1])
        graph[mod] = {d for d in deps if d and d != mod}
    return graph, order

def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument('--max_lines', type=int, default=0, help='fail if an export cell has more code lines than this')
    a = p.parse_args()
    graph, order = import_graph()
    up = []
    print('import graph (module <- what it imports; modules in notebook order):')
    for mod in sorted(graph, key=order.get):
        deps = sorted(graph[mod], key=lambda d: order.get(d, -1))
        bad = [d for d in deps if order.get(d, -1) >= order[mod]]
        up += [(mod, d) for d in bad]
        print(f'  {order[mod]:2d} {mod:15s} <- {", ".join(deps) or "-"}' + (f'   UP: {", ".join(bad)}' if bad else ''))
    print('every import points down' if not up else f'{len(up)} imports point up: {up}')
    rows = export_stats()
    longest = max(rows, key=lambda r: r['lines'])
    n_follow = sum(r['followed'] for r in rows)
    over = [r for r in rows if a.max_lines and r['lines'] > a.max_lines]
    print(f'export cells: {len(rows)}; followed at once by an example or test: {n_follow} '
          f'({n_follow / len(rows):.0%}); '
          f'longest: {longest["lines"]} lines ({longest["nb"]})')
    print('longest per notebook: ' + ', '.join(f'{nb.split("_")[0]}={max(r["lines"] for r in rows if r["nb"] == nb)}'
                                                for nb in dict.fromkeys(r['nb'] for r in rows)))
    for r in over: print(f'  over {a.max_lines} lines: {r["nb"]} ({r["lines"]} lines)')
    sys.exit(1 if up or over else 0)

if __name__ == '__main__': main()
