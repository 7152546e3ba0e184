#!/usr/bin/env python
"""Execute a notebook and save its outputs, as its committed documentation.

    python tools/run_notebook.py NB [--skip FLAG ...] [--keep_going]

Cells are run in order in the notebook's folder (as `nbdev_test` runs them); a cell flagged `#| eval: false` or with
one of the `--skip` flags (`#| slow`, say) keeps the outputs it had. Stops at the first error, writing nothing (unless
--keep_going)."""
import argparse, os, re, sys
from pathlib import Path
from execnb.nbio import read_nb, write_nb
from execnb.shell import CaptureShell

def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('notebook'); p.add_argument('--skip', nargs='*', default=[], help='flags whose cells are not run')
    p.add_argument('--keep_going', action='store_true',
                   help="save the outputs even if a cell fails (index.ipynb's last cell fails until `make readme`)")
    a = p.parse_args()
    path = Path(a.notebook).resolve()
    nb = read_nb(path)
    flagged = lambda c: (c.cell_type != 'code' or re.search(r'^#\|\s*eval:\s*false', c.source, re.M) is not None
                         or any(re.search(rf'^#\|\s*{f}\s*$', c.source, re.M) for f in a.skip))
    os.chdir(path.parent)
    sh = CaptureShell(path.parent)
    sh.run('import sasa_fastai')  # first, as in a session that imports it: it quiets fastai's import-time warning
    try: sh.run_all(nb, exc_stop=True, preproc=flagged)
    except Exception as e:
        if not a.keep_going: raise
        print(f'a cell failed ({type(e).__name__}: {e}); outputs saved all the same', file=sys.stderr)
    write_nb(nb, path)
    print('wrote', path)

if __name__ == '__main__': sys.exit(main())
