#!/usr/bin/env python
"""One command for a CUDA machine: does the GPU path of sasa_fastai compute the paper's layer, and is it fast enough?

    python tools/gpu_check.py                     # on a CUDA machine: everything (about 5 minutes on an H100)
    python tools/gpu_check.py --device cpu --tiny # dry run of the script's logic on a CPU, tiny shapes (a few minutes)

1. Agreement: `SASA2d` on 'triton' (the default on CUDA) and 'flex' against the same layer on 'reference' in float64:
   the output and the gradients of the input, the q/k/v projection and both relative tables, fp32 and bf16, zero-padded
   and masked borders, head sizes 8 and 32, square and non-square maps.
2. Layers (batch 64, k=7, 8 heads, bf16 autocast, channels-last, forward + backward), each in a fresh process:
   C=64 @ 56x56 (d=8) and C=256 @ 14x14 (d=32), ours against a 3x3 convolution of the same width.
   Target: C=64 @ 56x56 within 3x the convolution's time.
3. Training step of sasa_resnet50 and resnet50 at 224 px (batch 64, bf16 autocast, channels-last, SGD), each in a fresh
   process: throughput, peak memory and the first step's time (Triton compilation included).
   Targets: throughput >= 0.5x resnet50's, peak memory <= 1.5x, first step <= 10 s.
4. `train` (what `sasa_train` runs) on the digits on CUDA for 2 epochs, whose validation set ends in a partial batch:
   it must finish and print no recompilation warning.

Every section catches its own errors, so one failure does not hide the rest. Writes the markdown to --out and prints it.
Exit status 1 when an agreement check fails or a section errors, 0 otherwise (a missed target is reported as MISS).
"""
import argparse, os, subprocess, sys, tempfile, time, traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing; the measuring subprocesses need it too
os.environ['PYTHONPATH'] = os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get('PYTHONPATH')] if p])
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

import torch
from sasa_fastai.layers import SASA2d
from sasa_fastai.attention import pick_backend
from sasa_fastai.benchmark import run_case
from sasa_fastai.cases import layer_case, model_case
from sasa_fastai.report import machine_info, machine_line, target, targets_text

TOL = {torch.float32: (1e-4, 1e-3), torch.bfloat16: (3e-2, 6e-2)}  # (forward, gradients): error relative to max |gold|
NAMES = ('out', 'dx', 'dW_qkv', 'd rel_h', 'd rel_w')


def _rel_err(a, gold): return ((a.double() - gold).abs().max() / gold.abs().max().clamp_min(1e-30)).item()


def agree_one(backend, B, C, N, H, W, ks, masked, dtype, device, grads=True):
    "Errors of a `SASA2d` on `backend` against float64 'reference' with the same weights: out and (if `grads`) grads."
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
              [(2, 64, 8, 20, 20, 7),  # d=8, as in the first stage of a SASA ResNet
               (2, 128, 8, 13, 17, 7),  # non-square, not a multiple of any tile
               (2, 256, 8, 14, 14, 7),  # d=32
               (1, 64, 4, 5, 5, 7),  # map smaller than the window
               (2, 64, 2, 9, 11, 3)])
    # on the CPU (dry run) the Triton kernel runs through its interpreter; FlexAttention has no CPU backward
    backends = [('triton', True), ('flex', device != 'cpu')]
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
    head = ['| backend | shape | dtype | borders | relative error (max abs / max abs of gold) '
            '| tolerance fwd / grads | |',
            '|---|---|---|---|---|---|---|']
    return head + rows, ok_all


def _line(name, r, blanks=2):
    "One table row of a `run_case` result; an error fills the row with `blanks` empty cells after the message."
    if 'error' in r: return f'| {name} | error: {r["error"]} |' + ' |' * blanks
    return f"| {name} | {r['time_ms']:.2f} | {r['first_ms'] / 1e3:.1f} | {r['peak_mib']:.0f} |"




def layers(device, tiny, repeats, warmup):
    "The layer cases: markdown, targets, whether a case failed."
    B, k, shapes = (2, 3, [(16, 8, 2)]) if tiny else (64, 7, [(64, 56, 8), (256, 14, 8)])
    kw = dict(amp='bf16' if device == 'cuda' else None, channels_last=device == 'cuda')
    md = [f'| layer, fwd+bwd (batch {B}, k={k}, {"bf16, channels-last" if kw["amp"] else "fp32"}) | median ms | '
          'first call s | peak MiB |', '|---|---:|---:|---:|']
    res, failed = {}, False
    for C, H, N in shapes:
        for layer in ('sasa', 'conv'):
            spec = layer_case(layer, C, H, 'fwdbwd', batch=B, kernel_size=k, num_heads=N, **kw)
            r = res[C, layer] = run_case(spec, device, warmup=warmup, repeats=repeats)
            failed |= 'error' in r
            name = f"SASA2d ({r.get('backend', '?')}), d={C // N}" if layer == 'sasa' else 'conv 3x3'
            md.append(_line(f'{name}, C={C} @ {H}x{H}', r))
            print(md[-1], file=sys.stderr, flush=True)
    C = shapes[0][0]
    t = lambda i: res[C, i].get('time_ms')
    ratio = t('sasa') / t('conv') if t('sasa') and t('conv') else None
    label = f'layer C={C} @ {shapes[0][1]}x{shapes[0][1]} fwd+bwd time, ours / conv 3x3'
    return md, [target(label, ratio, '<=', 3)], failed


def models(device, tiny, repeats, warmup):
    "The training-step cases of sasa_resnet50 and resnet50."
    size, batch, n_out = (64, 2, 10) if tiny else (224, 64, 1000)
    kw = dict(amp='bf16' if device == 'cuda' else None, channels_last=device == 'cuda')
    res, failed = {}, False
    md = [f'| training step ({size} px, batch {batch}, {"bf16, channels-last" if kw["amp"] else "fp32"}, SGD) | '
          'median ms | first step s | peak MiB | images/s |', '|---|---:|---:|---:|---:|']
    for arch in ('resnet50', 'sasa_resnet50'):
        r = res[arch] = run_case(model_case(arch, 'train', size=size, batch=batch, n_out=n_out, **kw), device,
                                 warmup=warmup, repeats=repeats)
        failed |= 'error' in r
        md.append(_line(arch, r, blanks=3) + ('' if 'error' in r else f" {r['images_per_s']:.0f} |"))
        print(md[-1], file=sys.stderr, flush=True)
    get = lambda a, k: res[a].get(k)
    div = lambda a, b: a / b if a and b else None
    ratio = lambda k: div(get('sasa_resnet50', k), get('resnet50', k))
    return md, [target('sasa_resnet50 / resnet50 training throughput', ratio('images_per_s'), '>=', 0.5),
                target('sasa_resnet50 / resnet50 training peak memory', ratio('peak_mib'), '<=', 1.5),
                target('sasa_resnet50 first training step', div(get('sasa_resnet50', 'first_ms'), 1e3), '<=', 10, ' s')
                ], failed


def training_run(device, tiny):
    "`train` on the digits in a subprocess: (markdown, targets, failed)."
    with tempfile.TemporaryDirectory() as out:
        kw = dict(size=32, bs=16, epochs=1, kernel_size=3, num_heads=2) if tiny else dict(size=64, bs=64, epochs=2)
        code = (f"from sasa_fastai.learner import train; train(data='digits', out={out!r}, "
                + ', '.join(f'{k}={v!r}' for k, v in kw.items()) + ')')
        env = {**os.environ, **({'CUDA_VISIBLE_DEVICES': ''} if device == 'cpu' else {})}
        t = time.time()
        r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env, timeout=480)
        secs = time.time() - t
    log = (r.stdout + r.stderr).strip().splitlines()
    recompiles = [l for l in log if 'recompil' in l.lower()]
    md = ['```', f"$ python -c \"{code.replace(out, '<tmp>')}\"   # {secs:.0f} s, exit status {r.returncode}",
          *[l.replace(out, '<tmp>') for l in log[-8:]], '```']
    acc = next((l for l in log if l.startswith('final validation accuracy')), None)
    lines = [target(f"recompilation warnings of a training run on the digits ({kw['epochs']} epochs, partial last "
                    f"validation batch; exit status {r.returncode}{', ' + acc if acc else ''})",
                    len(recompiles) if r.returncode == 0 else None, '<=', 0, '')]
    return md, lines, r.returncode != 0


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--device', default='cuda', choices=['cuda', 'cpu'], help='cuda (the real check) or cpu (dry run)')
    p.add_argument('--tiny', action='store_true', help='tiny shapes, few repeats: proves the script, measures nothing')
    p.add_argument('--out', default='gpu_check.md', help='markdown file to write (also printed to stdout)')
    p.add_argument('--repeats', type=int, default=None, help='timed runs per case (default 10, or 2 with --tiny)')
    p.add_argument('--skip', nargs='*', default=[], choices=['agree', 'layers', 'models', 'train'],
                   help='sections to leave out')
    a = p.parse_args()
    if a.device == 'cuda' and not torch.cuda.is_available():
        raise SystemExit('gpu_check: error: device=cuda is not valid here: torch sees no CUDA device (for a dry run: '
                         '--device cpu --tiny)')
    repeats, warmup = a.repeats or (2 if a.tiny else 10), 1 if a.tiny else 3
    info = machine_info(a.device)
    md = ['## sasa_fastai GPU check', '', f"`{' '.join(['python tools/gpu_check.py'] + sys.argv[1:])}`", '',
          f"{machine_line(info)}; device {a.device}" + (' (dry run, tiny shapes: measures nothing)' if a.tiny else ''),
          '']
    if a.device == 'cuda':
        import triton
        md += [f"GPU: {torch.cuda.get_device_name()}, CUDA {torch.version.cuda}, triton {triton.__version__}; "
               f"'auto' backend on CUDA: {pick_backend('auto', torch.zeros(1, device='cuda'))}", '']
    failed, targets, t0 = False, [], time.time()
    sections = [('agree', 'Agreement with the reference backend', None),
                ('layers', 'Layers', layers), ('models', 'ResNet-50 training step', models),
                ('train', f'A sasa_train run on the digits ({a.device})', None)]
    for key, title, fn in sections:
        if key in a.skip: continue
        print(f'{title} ... ({time.time() - t0:.0f} s)', file=sys.stderr, flush=True)
        try:
            if key == 'agree':
                rows, ok = agreement(a.device, a.tiny)
                md += [f'### {title}', '', *rows, '', f"Agreement: {'PASS' if ok else 'FAIL'}", '']
                failed |= not ok
                continue
            part, lines, bad = (training_run(a.device, a.tiny) if key == 'train'
                                else fn(a.device, a.tiny, repeats, warmup))
            md += [f'### {title}', '', *part, '']
            targets += lines
            failed |= bad
        except Exception:
            md += [f'### {title}: error', '', '```', traceback.format_exc(), '```', '']
            failed = True
    if targets: md += ['### Targets', '', '```', targets_text(targets), '```', '']
    md.append(f'Total time: {time.time() - t0:.0f} s')
    text = '\n'.join(md)
    print(text)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(text + '\n')
    print(f'wrote {a.out}', file=sys.stderr)
    return 1 if failed else 0


if __name__ == '__main__': sys.exit(main())
