"""Line width: every line of code in the notebooks' code cells, the C++ kernel and the tools fits in 120 columns,
the width the notebooks render without scrolling. `python tools/lint.py` lists the offenders (exit status 1)."""
import json, sys
from pathlib import Path

ROOT, WIDTH = Path(__file__).resolve().parent.parent, 120

def long_lines():
    "(place, line number, length) of every line wider than `WIDTH`."
    for nb in sorted((ROOT / 'nbs').rglob('*.ipynb')):
        if '.ipynb_checkpoints' in nb.parts: continue
        for i, cell in enumerate(json.loads(nb.read_text())['cells']):
            if cell['cell_type'] != 'code': continue
            for j, line in enumerate(''.join(cell['source']).splitlines()):
                if len(line) > WIDTH: yield f'{nb.relative_to(ROOT)} cell {i}', j + 1, len(line)
    for f in sorted([*(ROOT / 'sasa_fastai' / 'csrc').glob('*'), *(ROOT / 'tools').glob('*.py')]):
        for j, line in enumerate(f.read_text().splitlines()):
            if len(line) > WIDTH: yield str(f.relative_to(ROOT)), j + 1, len(line)

if __name__ == '__main__':
    bad = list(long_lines())
    for place, line, n in bad: print(f'{place}, line {line}: {n} columns (at most {WIDTH})')
    print(f'line width: {len(bad)} line(s) wider than {WIDTH} columns' if bad else
          f'line width: every line fits in {WIDTH} columns')
    sys.exit(1 if bad else 0)
