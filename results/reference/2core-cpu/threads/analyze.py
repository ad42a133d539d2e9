"""The A/As of this folder: each pair's median log B/A, and the spread of those about zero against what each pair's
round noise predicts (docs/comparing.md, \"Threads\"). Run from the repository root."""
import math, statistics, sys
from pathlib import Path
HERE = Path(__file__).parent
from devicebench.results import load_run
res={}
for cfg in ['pinned','free','pinned2','free2','onethread','free3','onethread2','free4']:
    try:
        A=load_run(HERE / f'{cfg}-A.json',quiet=True); B=load_run(HERE / f'{cfg}-B.json',quiet=True)
    except Exception: continue
    if A is None or B is None: continue
    for r in A.rows:
        o=next(x for x in B.rows if x.identity==r.identity)
        ks=sorted(r.pairs.keys()&o.pairs.keys()); est=[];pred=[]
        for k in ks:
            lr=[math.log(b)-math.log(a) for a,b in zip(r.pairs[k],o.pairs[k])]
            est.append(statistics.median(lr)); pred.append(math.pi/2*statistics.variance(lr)/len(lr))
        res.setdefault(cfg.rstrip('234'),[]).extend(zip(est,pred))
        print(cfg, r.test, 'rounds', [len(r.pairs[k]) for k in ks], ' '.join(f'{100*e:+.1f}' for e in est), 'median round', round(statistics.median(r.all_seconds),3))
for cfg,v in res.items():
    e=[x for x,_ in v]; rms=math.sqrt(statistics.fmean([x*x for x in e])); pr=math.sqrt(statistics.fmean([p for _,p in v]))
    print(cfg, 'pairs', len(e), f'spread about zero {rms:.4f}, from round noise {pr:.4f}, per-process {math.sqrt(max(0,rms*rms-pr*pr)):.4f}')
