"""`make memory`: the memory estimate of one training step (nbs/12a_memory.ipynb) against the peak the step adds,
measured in fresh processes, for ResNet-26 and SASA-ResNet-26 at three sizes; writes results/memory.md."""
import sys
from pathlib import Path
from sasa_fastai.benchmark import memory_rows
from sasa_fastai.report import memory_markdown, machine_info, machine_line

def main(out='results/memory.md'):
    rows = memory_rows()
    text = (f'Command: `make memory` (tools/memory_check.py). Machine: {machine_line(machine_info())}.\n\n'
            + memory_markdown(rows) + '\n')
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(text)
    print(text)
    worst = max(abs(r['estimate_mib'] / r['measured_mib'] - 1) for r in rows)
    print(f'largest difference: {worst:.0%} (target: within 25%)')
    return 0 if worst <= 0.25 else 1

if __name__ == '__main__': sys.exit(main(*sys.argv[1:]))
