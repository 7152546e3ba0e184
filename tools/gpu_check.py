#!/usr/bin/env python
"""One command for a CUDA machine: does the GPU path of sasa_fastai work, and how fast is it?

    python tools/gpu_check.py                     # on a CUDA machine: everything, markdown to stdout and gpu_check.md
    python tools/gpu_check.py --device cpu --tiny # dry run of the script's logic on a CPU, on tiny shapes (a minute)

1. Agreement: a SASA2d layer on the CUDA backend ('flex', FlexAttention) against the same layer on 'reference'
   (k*k copies): the output and the gradients of the input, the q/k/v projection and both relative tables, in fp32 and
   bf16, zero-padded and masked borders. The error is max |ours - gold| / max |gold|, gold = 'reference' in float64
   with the same (rounded) weights and input.
2. The layer table of `sasa_bench` on CUDA (each case in a fresh process, CUDA allocator peak memory).
3. Training throughput (images/s, forward + backward + SGD step) of sasa_resnet50 vs resnet50 at 224 px, bf16 autocast,
   channels-last; target: SASA-R50 at least 0.5x the conv network's throughput.

Each section catches its own errors and reports them, so one failure does not hide the rest. Exit status 1 when an
agreement check fails or a section errors, 0 otherwise (a missed speed target is reported, not an error).
"""
import argparse, os, sys, time, traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing; the measuring subprocesses need it too
os.environ['PYTHONPATH'] = os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get('PYTHONPATH')] if p])
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

import torch
from sasa_fastai.attention import SASA2d, pick_backend
from sasa_fastai.benchmark import benchmark, run_case, model_case, layer_markdown, machine_info, machine_line, LAYER_SHAPES

TOL = {torch.float32: (1e-4, 1e-3), torch.bfloat16: (3e-2, 6e-2)}  # (forward, gradients): error relative to max |gold|
NAMES = ('out', 'dx', 'dW_qkv', 'd rel_h', 'd rel_w')


def _rel_err(a, gold):
    return ((a.double() - gold).abs().max() / gold.abs().max().clamp_min(1e-30)).item()


def agree_one(backend, B, C, N, H, W, ks, masked, dtype, device, grads=True):
    "Errors of a `SASA2d` on `backend` against float64 'reference' with the same weights: out and (if `grads`) the grads."
    torch.manual_seed(1)
    ours = SASA2d(C, C, ks, num_heads=N, masked=masked, backend=backend).to(device, dtype)
    gold = SASA2d(C, C, ks, num_heads=N, masked=masked, backend='reference').to(device, torch.float64)
    gold.load_state_dict(ours.state_dict())  # the same (rounded) weights, in float64
    x = torch.randn(B, C, H, W).to(device, dtype).requires_grad_(grads)
    xg = x.detach().double().requires_grad_(grads)
    with torch.set_grad_enabled(grads):
        o, r = ours(x), gold(xg)
    errs = [_rel_err(o, r)]
    if grads:
        g = torch.randn(o.shape, generator=torch.Generator().manual_seed(2)).to(device)
        (o.float() * g).sum().backward()
        (r * g.double()).sum().backward()
        pairs = [(x, xg)] + [(ours.get_parameter(n), gold.get_parameter(n)) for n in ('qkv.weight', 'rel_h', 'rel_w')]
        errs += [_rel_err(a.grad, b.grad) for a, b in pairs]
    return errs


def agreement(device, tiny):
    "Markdown rows (and whether all passed): each backend x shape x dtype x border mode."
    shapes = ([(1, 16, 2, 6, 5, 3)] if tiny else  # (B, C, heads, H, W, k)
              [(2, 64, 8, 20, 20, 7),  # head dim 8, as in the first stage of a SASA ResNet
               (2, 128, 8, 13, 17, 7),  # non-square, not a multiple of any block size
               (2, 256, 8, 10, 10, 7), (1, 64, 4, 5, 5, 7), (2, 64, 2, 9, 11, 3)])
    # FlexAttention has no backward on the CPU: there the dry run checks its forward, and the native kernel's grads
    backends = [('flex', device != 'cpu')] + ([('native', True)] if device == 'cpu' else [])
    rows, ok_all = [], True
    for backend, grads in backends:
        for B, C, N, H, W, ks in shapes:
            for dtype in (torch.float32, torch.bfloat16):
                for masked in (False, True):
                    name = (f'{backend} | B={B} C={C} heads={N} (d={C // N}) {H}x{W} k={ks} | {str(dtype)[6:]} | '
                            + ('masked' if masked else 'zero pad'))
                    tf, tg = TOL[dtype]
                    try:
                        errs = agree_one(backend, B, C, N, H, W, ks, masked, dtype, device, grads)
                        ok = errs[0] <= tf and all(e <= tg for e in errs[1:])
                        cells = ' '.join(f'{n} {e:.1e}' for n, e in zip(NAMES, errs))
                        rows.append(f"| {name} | {cells} | {tf:g} / {tg:g} | {'PASS' if ok else 'FAIL'} |")
                    except Exception as e:
                        ok = False
                        rows.append(f'| {name} | error: {type(e).__name__}: {str(e).splitlines()[0][:160]} | | FAIL |')
                    ok_all &= ok
                    print(rows[-1], file=sys.stderr, flush=True)
    head = ['| backend | shape | dtype | borders | relative error (max abs / max abs of gold) | tolerance fwd / grads | |',
            '|---|---|---|---|---|---|---|']
    # the name already holds four `|`-separated columns
    return head + rows, ok_all


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--device', default='cuda', choices=['cuda', 'cpu'], help='cuda (the real check) or cpu (dry run)')
    p.add_argument('--tiny', action='store_true', help='tiny shapes, few repeats: proves the script, measures nothing')
    p.add_argument('--out', default='gpu_check.md', help='markdown file to write (also printed to stdout)')
    p.add_argument('--batch', type=int, default=64, help='batch of the ResNet-50 throughput runs')
    p.add_argument('--layers', default='full', choices=['full', 'quick', 'none'],
                   help="layer table: every shape, only C=64 @ 40x40, or none")
    p.add_argument('--repeats', type=int, default=None, help='timed runs per case (default 10, or 2 with --tiny)')
    p.add_argument('--skip', nargs='*', default=[], choices=['agree', 'layers', 'models'], help='sections to leave out')
    a = p.parse_args()
    if a.device == 'cuda' and not torch.cuda.is_available():
        raise SystemExit('device=cuda is not valid here: torch sees no CUDA device (for a dry run: --device cpu --tiny)')
    repeats, warmup = a.repeats or (2 if a.tiny else 10), 1 if a.tiny else 3
    info = machine_info(a.device)
    md, failed = ['## sasa_fastai GPU check', '', f"`{' '.join(['python tools/gpu_check.py'] + sys.argv[1:])}`", '',
                  f"{machine_line(info)}; device {a.device}" + (' (dry run, tiny shapes)' if a.tiny else ''), ''], False
    if a.device == 'cuda':
        md += [f"GPU: {torch.cuda.get_device_name()}, CUDA {torch.version.cuda}, "
               f"'auto' backend on CUDA: {pick_backend('auto', torch.zeros(1, device='cuda'))}", '']
    t0 = time.time()

    if 'agree' not in a.skip:
        print('agreement ...', file=sys.stderr, flush=True)
        try:
            rows, ok = agreement(a.device, a.tiny)
            md += ['### Agreement with the reference backend', '', *rows, '',
                   f"Agreement: {'PASS' if ok else 'FAIL'}", '']
            failed |= not ok
        except Exception:
            md += ['### Agreement: error', '', '```', traceback.format_exc(), '```', '']; failed = True

    if 'layers' not in a.skip and a.layers != 'none':
        print(f'layer table ... ({time.time() - t0:.0f} s)', file=sys.stderr, flush=True)
        try:
            kw = (dict(shapes=[(16, 8)], batch=2, kernel_size=3, num_heads=2) if a.tiny else
                  dict(shapes=LAYER_SHAPES if a.layers == 'full' else LAYER_SHAPES[:1]))
            rep = benchmark(None, device=a.device, repeats=repeats, warmup=warmup, archs=(), **kw)
            md += ['### Layer table (fp32)', '', layer_markdown(rep['results']), '']
            errs = [f"- {r['spec']}: {r['error']}" for r in rep['results'] if 'error' in r]
            if errs: md += ['Failed cases:', *errs, '']; failed = True
        except Exception:
            md += ['### Layer table: error', '', '```', traceback.format_exc(), '```', '']; failed = True

    if 'models' not in a.skip:
        print(f'models ... ({time.time() - t0:.0f} s)', file=sys.stderr, flush=True)
        size, batch, n_out = (64, 2, 10) if a.tiny else (224, a.batch, 1000)
        res = {}
        for arch in ('resnet50', 'sasa_resnet50'):
            spec = model_case(arch, 'train', size=size, batch=batch, n_out=n_out, amp='bf16', channels_last=True)
            res[arch] = run_case(spec, a.device, warmup=warmup, repeats=repeats)
            r = res[arch]
            print(f"  {arch}: " + (r['error'] if 'error' in r else f"{r['images_per_s']:.1f} img/s, {r['peak_mib']:.0f} MiB"),
                  file=sys.stderr, flush=True)
        md += [f'### Training throughput ({size} px, batch {batch}, bf16 autocast, channels-last, SGD step)', '',
               '| model | step ms | images/s | peak MiB |', '|---|---:|---:|---:|']
        for arch, r in res.items():
            md.append(f'| {arch} | error: {r["error"]} | | |' if 'error' in r else
                      f"| {arch} | {r['time_ms']:.1f} | {r['images_per_s']:.1f} | {r['peak_mib']:.0f} |")
        if all('error' not in r for r in res.values()):
            ratio = res['sasa_resnet50']['images_per_s'] / res['resnet50']['images_per_s']
            md += ['', '```', f"{'PASS' if ratio >= 0.5 else 'MISS'}  sasa_resnet50 / resnet50 training throughput = "
                   f"{ratio:.2f}x (target >= 0.5x)" + (' [tiny dry run: not a measurement]' if a.tiny else ''), '```']
        else: failed = True
        md.append('')

    md.append(f'Total time: {time.time() - t0:.0f} s')
    text = '\n'.join(md)
    print(text)
    Path(a.out).write_text(text + '\n')
    print(f'wrote {a.out}', file=sys.stderr)
    return 1 if failed else 0


if __name__ == '__main__': sys.exit(main())
