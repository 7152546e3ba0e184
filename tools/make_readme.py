"""Write README.md from nbs/index.ipynb (quarto, which nbdev_readme needs, is not available everywhere).

`python tools/make_readme.py README.md` writes it; `--check` fails when README.md is out of date.
Cells starting with `#| hide` are dropped, other `#|` directive lines are stripped, outputs are kept."""
import sys, re
from pathlib import Path
import nbformat
from nbconvert import MarkdownExporter

root = Path(__file__).resolve().parent.parent

def render(nb_path=root / 'nbs' / 'index.ipynb'):
    nb = nbformat.read(nb_path, as_version=4)
    cells = []
    for c in nb.cells:
        src = c.source.lstrip()
        if c.cell_type == 'code' and re.match(r'#\|\s*(hide|exec_doc|export)', src): continue
        if c.cell_type == 'code' and re.search(r'^#\|\s*echo:\s*false', src, re.M):  # output only, as markdown
            md = [o['data'].get('text/markdown', '') for o in c.get('outputs', []) if 'data' in o]
            cells.append(nbformat.v4.new_markdown_cell('\n\n'.join(md)))
            continue
        if c.cell_type == 'code':
            c.source = '\n'.join(l for l in c.source.splitlines() if not l.lstrip().startswith('#|')).strip()
        cells.append(c)
    nb.cells = cells
    nb.metadata['language_info'] = {'name': 'python'}  # code blocks fenced as python
    body, _ = MarkdownExporter().from_notebook_node(nb)
    header = '<!-- Generated from nbs/index.ipynb by tools/make_readme.py (make readme): do not edit by hand -->\n\n'
    return header + re.sub(r'\n{3,}', '\n\n', body).strip() + '\n'

if __name__ == '__main__':
    out = Path(sys.argv[-1])
    text = render()
    if '--check' in sys.argv:
        if not out.exists() or out.read_text() != text:
            sys.exit(f'{out} is out of date with nbs/index.ipynb: run `make readme` and commit it')
        print(f'{out} in sync with nbs/index.ipynb')
    else:
        out.write_text(text); print('wrote', out)
