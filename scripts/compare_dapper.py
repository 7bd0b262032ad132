#!/usr/bin/env python3
"""Side by side: DAPPER and genda on every config in configs/dapper/, over seeds.

    scripts/compare_dapper.py [--seeds 1,2,3,4,5] [--out docs/dapper.md] [--only NAME ...]

DAPPER comes from PyPI into a scratch venv (default /tmp/genda-dapper-venv, `--venv`), never a
dependency of `make test`. For each config the script builds DAPPER's HMM of the same setup
(the module named in the config's header, or, for the arctan case, sakov2012's HMM with the
arctan observation operator and chronology), runs the DAPPER method named there with
`dpr.set_seed(seed)` (truth, observations and the DA draws from that seed, as `xpList.launch`
does), and runs `genda run <config> --seed <seed>`. Truths differ between the two (different
generators), so the comparison is over seeds: mean ± std of the time-averaged rmse.a and rmv.a
(spread.a), diverged runs (non-finite or failed) counted separately and never dropped, and the
wall time per cycle of both (DAPPER: `assimilate`; genda: forecast + analysis phases).
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Config stem -> (DAPPER HMM recipe, DAPPER method expression).
CASES = {
    "l96_sakov2008_etkf": ("sakov2008", "da.EnKF('Sqrt', N=24, infl=1.013, rot=True)"),
    "l96_sakov2008_letkf": ("sakov2008", "da.LETKF(N=10, infl=1.04, loc_rad=4)"),
    "l63_sakov2012_etkf": ("sakov2012", "da.EnKF('Sqrt', N=10, infl=1.02, rot=True)"),
    "l63_sakov2012_enkf": ("sakov2012", "da.EnKF('PertObs', N=10, infl=1.04)"),
    "l63_sakov2012_pf": ("sakov2012", "da.PartFilt(N=100, reg=2.4, NER=0.3)"),
    "l63_arctan_enkf": ("l63_arctan", "da.EnKF('PertObs', N=20, infl=1.02)"),
    "l63_arctan_etkf": ("l63_arctan", "da.EnKF('Sqrt', N=20, infl=1.02, rot=True)"),
    "l63_arctan_pf": ("l63_arctan", "da.PartFilt(N=50, reg=2.4, NER=0.3)"),
}

# Runs inside the DAPPER venv: one (case, seed) per call, JSON on stdout.
DAPPER_RUNNER = r'''
import json, sys, time, warnings
warnings.filterwarnings("ignore")
import numpy as np
import dapper as dpr
import dapper.da_methods as da
import dapper.mods as modelling
recipe, method, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
if recipe == "sakov2008":
    from dapper.mods.Lorenz96.sakov2008 import HMM
elif recipe == "sakov2012":
    from dapper.mods.Lorenz63.sakov2012 import HMM
elif recipe == "l63_arctan":
    from dapper.mods.Lorenz63.sakov2012 import HMM as base
    HMM = modelling.HiddenMarkovModel(
        base.Dyn,
        dict(M=3, model=np.arctan, noise=0.01),
        modelling.Chronology(0.01, dko=10, Ko=699, BurnIn=16),
        base.X0,
    )
else:
    raise SystemExit("unknown recipe " + recipe)
HMM = HMM.copy()
xp = eval(method)
dpr.set_seed(seed)
xx, yy = HMM.simulate()
t0 = time.perf_counter()
ok = True
try:
    xp.assimilate(HMM, xx, yy)
    xp.stats.average_in_time()
except Exception as e:  # a failed run counts as diverged
    ok = False
wall = time.perf_counter() - t0
out = dict(wall=wall, cycles=HMM.tseq.Ko + 1, ok=ok)
if ok:
    out["rmse"] = float(xp.avrgs.err.rms.a.val)
    out["spread"] = float(xp.avrgs.spread.rms.a.val)
print(json.dumps(out))
'''


def ensure_venv(venv):
    py = Path(venv) / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    ok = subprocess.run([str(py), "-c", "import dapper"], capture_output=True).returncode == 0
    if not ok:
        subprocess.run([str(py), "-m", "pip", "install", "--quiet", "dapper"], check=True)
    ver = subprocess.run(
        [str(py), "-c", "import warnings; warnings.filterwarnings('ignore'); import dapper; print(dapper.__version__)"],
        capture_output=True, text=True, check=True, env=dict(os.environ, MPLBACKEND="agg"),
    ).stdout.strip().splitlines()[-1]
    return str(py), ver


def run_dapper(py, recipe, method, seed):
    with tempfile.TemporaryDirectory() as d:
        # DAPPER writes its data dir under ~; one BLAS thread, as genda runs on one thread.
        env = dict(os.environ, MPLBACKEND="agg", HOME=d, OMP_NUM_THREADS="1",
                   OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
        p = subprocess.run([py, "-c", DAPPER_RUNNER, recipe, method, str(seed)],
                           capture_output=True, text=True, env=env)
    lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
    if p.returncode != 0 or not lines:
        return dict(ok=False, wall=float("nan"), cycles=0, err=p.stderr[-500:])
    return json.loads(lines[-1])


def run_genda(genda, cfg, seed):
    with tempfile.TemporaryDirectory() as d:
        tf = Path(d) / "t.toml"
        p = subprocess.run(
            [genda, "run", str(cfg), "--seed", str(seed), "--no-output", "--quiet",
             "--timing-file", str(tf)],
            capture_output=True, text=True,
            env=dict(os.environ, RAYON_NUM_THREADS="1", OMP_NUM_THREADS="1"),
        )
        out = dict(ok=p.returncode == 0)
        m = re.search(r"^analysis\s+(\S+)\s+(\S+)", p.stdout, re.M)
        if out["ok"] and m:
            out["rmse"], out["spread"] = float(m.group(1)), float(m.group(2))
        else:
            out["ok"] = False
        if tf.exists():
            t = dict(re.findall(r"^(\w+) = ([0-9.eE+-]+)$", tf.read_text(), re.M))
            out["wall"] = float(t["forecast_s"]) + float(t["analysis_s"])
            out["cycles"] = int(float(t["cycles"]))
        else:
            out["wall"], out["cycles"] = float("nan"), 0
    return out


def summarise(runs):
    good = [r for r in runs if r["ok"] and r["rmse"] == r["rmse"] and r["rmse"] < float("inf")]
    div = len(runs) - len(good)

    def ms(key):
        v = [r[key] for r in good]
        if not v:
            return "–"
        if len(v) == 1:
            return f"{v[0]:.4f}"
        return f"{statistics.mean(v):.4f} ± {statistics.stdev(v):.4f}"

    per = [r["wall"] / r["cycles"] for r in runs if r.get("cycles")]
    t = statistics.median(per) if per else float("nan")
    return ms("rmse"), ms("spread"), div, t


def fmt_time(s):
    if s != s:
        return "–"
    return f"{s * 1e6:.0f} µs" if s < 1e-3 else f"{s * 1e3:.2f} ms"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="1,2,3,4,5")
    ap.add_argument("--out", default=str(ROOT / "docs" / "dapper.md"))
    ap.add_argument("--venv", default="/tmp/genda-dapper-venv")
    ap.add_argument("--genda", default=str(ROOT / "target" / "release" / "genda"))
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--raw", help="also write every run as JSON lines here")
    a = ap.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    py, ver = ensure_venv(a.venv)
    rows, raw = [], []
    for cfg in sorted((ROOT / "configs" / "dapper").glob("*.toml")):
        name = cfg.stem
        if a.only and name not in a.only:
            continue
        if name not in CASES:
            sys.exit(f"{cfg}: no DAPPER recipe in scripts/compare_dapper.py")
        recipe, method = CASES[name]
        d_runs, g_runs = [], []
        for s in seeds:
            d_runs.append(run_dapper(py, recipe, method, s))
            g_runs.append(run_genda(a.genda, cfg, s))
            raw.append(dict(config=name, seed=s, dapper=d_runs[-1], genda=g_runs[-1]))
            print(f"{name} seed {s}: DAPPER {d_runs[-1].get('rmse')}  genda {g_runs[-1].get('rmse')}",
                  flush=True)
        rows.append((name, method, summarise(d_runs), summarise(g_runs)))
    lines = [
        "# genda against DAPPER on DAPPER's setups",
        "",
        f"Written by `scripts/compare_dapper.py --seeds {a.seeds}` (DAPPER {ver} from PyPI in a",
        "scratch venv). Each config in `configs/dapper/` names the DAPPER module and method it copies.",
        "Time-averaged analysis RMSE (`rmse.a`) and spread (`rmv.a`) over DAPPER's averaging window,",
        f"mean ± std over seeds {a.seeds} (the same seed numbers, different generators: the truths",
        "differ, the comparison is over seeds); diverged runs (failed or non-finite) are counted,",
        "not dropped. Time per cycle: median over seeds of DAPPER's `assimilate` and of genda's",
        "forecast + analysis phases, on this machine (2 cores; both pinned to one thread).",
        "",
        "| config | DAPPER method | rmse.a DAPPER | rmse.a genda | spread DAPPER | spread genda | diverged D / g | per cycle DAPPER | per cycle genda |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, method, d, g in rows:
        lines.append(
            f"| `{name}` | `{method.replace('da.', '')}` | {d[0]} | {g[0]} | {d[1]} | {g[1]} | "
            f"{d[2]} / {g[2]} | {fmt_time(d[3])} | {fmt_time(g[3])} |"
        )
    Path(a.out).write_text("\n".join(lines) + "\n")
    if a.raw:
        Path(a.raw).write_text("\n".join(json.dumps(r) for r in raw) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
