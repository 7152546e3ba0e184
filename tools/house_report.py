#!/usr/bin/env python3
"""The house before and after: names per concept, what `import sasa_fastai` changes in the process, exported names per
module and the files a finished run writes, for a git revision BEFORE against the working tree; markdown on stdout.

    python tools/house_report.py BEFORE [--no-run]

BEFORE is checked out in a temporary git worktree and imported from there (PYTHONPATH), with this venv's packages.
`--no-run` leaves out the training runs (a few minutes: one tiny conv ResNet epoch per tree, on the digits)."""
import argparse, ast, io, json, os, re, subprocess, sys, tempfile, tokenize
from collections import Counter
from pathlib import Path
from sasa_fastai import fixtures  # (this tree's: the probe runs the other tree in a fresh process)

ROOT = Path(__file__).resolve().parents[1]
# one concept, the names it has had; identifiers are counted in the package's code (not nbdev's index)
CONCEPTS = {
    'a model\'s channels in/out': ['n_in', 'n_out', 'in_chans', 'num_classes', 'ni', 'nf', 'c_in', 'c_out'],
    'a layer\'s channels': ['in_channels', 'out_channels', 'in_planes', 'planes'],
    'the window\'s side': ['kernel_size', 'ks', 'block', 'block_size', 'window_size'],
    'attention heads (a count)': ['num_heads', 'heads', 'n_heads', 'NH'],
    'class names': ['vocab', 'class_names', 'classes'],
    'a run\'s settings': ['settings', 'RunSettings', 'config', 'cfg'],
    'the model on disk': ['save_pretrained', 'from_pretrained', 'load_model', 'save_weights', 'load_weights'],
}
STRINGS = ['weights.pth', 'model.safetensors', 'export.pkl']  # counted inside string literals too

RUN = '''
import os, sys, json
from pathlib import Path
from sasa_fastai.fixtures import digits_subset
from sasa_fastai.learner import train
data, out = Path(sys.argv[1]), Path(sys.argv[2])
digits_subset(data)
train(data=str(data), arch='resnet26', size=32, bs=4, epochs=1, out=str(out))
print(json.dumps(sorted(str(p.relative_to(out)) for p in out.rglob('*') if p.is_file())))
'''

def modules(tree):
    return sorted(p for p in (tree / 'sasa_fastai').glob('*.py') if not p.name.startswith('_'))

def exported(tree):
    "`__all__` of each module."
    res = {}
    for p in modules(tree):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Assign) and any(getattr(t, 'id', None) == '__all__' for t in node.targets):
                res[p.stem] = [ast.literal_eval(e) for e in node.value.elts]
    return res

def name_counts(tree):
    "How often each identifier (and each file name in strings) occurs in the package's code."
    c = Counter()
    for p in modules(tree):
        for tok in tokenize.generate_tokens(io.StringIO(p.read_text()).readline):
            if tok.type == tokenize.NAME: c[tok.string] += 1
            elif tok.type == tokenize.STRING:
                for s in STRINGS: c[s] += tok.string.count(s)
    return c

def import_effects(tree, fastai_first=True):
    "What importing `sasa_fastai` (and, `fastai_first`, every module of it, after fastai) from `tree` changes."
    mods = ['sasa_fastai'] + ([f'sasa_fastai.{p.stem}' for p in modules(tree)] if fastai_first else [])
    try: return fixtures.import_effects(*mods, path=tree, fastai_first=fastai_first)
    except RuntimeError as e: return {'error': [str(e)]}

def run_files(tree, tmp):
    env = {**os.environ, 'PYTHONPATH': str(tree), 'OMP_NUM_THREADS': '2', 'PYTHONWARNINGS': 'ignore'}
    r = subprocess.run([sys.executable, '-c', RUN, str(tmp / 'data'), str(tmp / 'run')], capture_output=True,
                       text=True, env=env, cwd=tmp)
    if r.returncode: return ['error: ' + (r.stderr.strip().splitlines() or ['?'])[-1]]
    return json.loads(r.stdout.strip().splitlines()[-1])

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('before', help='a git revision')
    ap.add_argument('--no-run', action='store_true', help='leave out the training runs')
    a = ap.parse_args()
    rev = subprocess.run(['git', 'rev-parse', '--short', a.before], capture_output=True, text=True, cwd=ROOT,
                         check=True).stdout.strip()
    with tempfile.TemporaryDirectory() as d:
        old = Path(d) / 'before'
        subprocess.run(['git', 'worktree', 'add', '--detach', str(old), rev], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            trees = {f'before ({rev})': old, 'now (working tree)': ROOT}
            info = {k: dict(exported=exported(t), names=name_counts(t), effects=import_effects(t),
                            alone=import_effects(t, fastai_first=False)) for k, t in trees.items()}
            if not a.no_run:
                for i, (k, t) in enumerate(trees.items()):
                    (Path(d) / f'r{i}').mkdir()
                    info[k]['files'] = run_files(t, Path(d) / f'r{i}')
        finally:
            subprocess.run(['git', 'worktree', 'remove', '--force', str(old)], cwd=ROOT, capture_output=True)
    (b, nb), (n, nn) = info.items()
    print(f'# The house: {b} and {n}\n\n`python tools/house_report.py {a.before}`\n')
    print('## Names per concept (identifiers in sasa_fastai/*.py; file names in strings)\n')
    print(f'| concept | {b} | {n} |\n|---|---|---|')
    fmt = lambda c, names: ', '.join(f'`{x}` {c[x]}' for x in names if c[x]) or '—'
    for concept, names in CONCEPTS.items():
        print(f'| {concept} | {fmt(nb["names"], names)} | {fmt(nn["names"], names)} |')
    print(f'| file names in strings | {fmt(nb["names"], STRINGS)} | {fmt(nn["names"], STRINGS)} |')
    print('\n## What importing every module of sasa_fastai changes in a fresh process (after fastai)\n')
    print(f'| shared state | {b} | {n} |\n|---|---|---|')
    for k in sorted(set(nb['effects']) | set(nn['effects'])):
        cell = lambda e: '<br>'.join(f'`{x[:90]}`' for x in e.get(k, [])) or 'unchanged'
        print(f'| {k} | {cell(nb["effects"])} | {cell(nn["effects"])} |')
    alone = lambda e: '<br>'.join(f'`{x[:90]}`' for x in e.get('meta_path', [])) or 'unchanged'
    print(f'| meta_path, `import sasa_fastai` alone (fastai and timm not imported) | {alone(nb["alone"])} | '
          f'{alone(nn["alone"])} |')
    print('\n## Exported names per module (`__all__`)\n')
    print(f'| module | {b} | {n} | added | removed |\n|---|---:|---:|---|---|')
    for m in sorted(set(nb['exported']) | set(nn['exported'])):
        x, y = nb['exported'].get(m), nn['exported'].get(m)
        add = sorted(set(y or []) - set(x or [])); rem = sorted(set(x or []) - set(y or []))
        short = lambda l: ', '.join(f'`{o}`' for o in l[:8]) + (f' and {len(l) - 8} more' if len(l) > 8 else '')
        print(f'| `{m}` | {"—" if x is None else len(x)} | {"—" if y is None else len(y)} | {short(add)} | '
              f'{short(rem)} |')
    if 'files' in nb:
        print('\n## Files a finished run writes (`train`, one epoch of a conv ResNet-26 on 3 digit classes)\n')
        print(f'| {b} | {n} |\n|---|---|')
        print(f'| {"<br>".join(nb["files"])} | {"<br>".join(nn["files"])} |')

if __name__ == '__main__': main()
