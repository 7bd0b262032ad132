#!/usr/bin/env python3
"""EnSF on its authors' two setups (configs/ensf/), over seeds, with the authors' windows.

    scripts/ensf_reference.py [--seeds 1,...,10] [--cases NAME ...] [--raw FILE]

Each case runs `genda run <config> --seed S --set ...` once per seed, writes the run file, and
averages its `rmse_analysis` series over the windows the authors report (all analyses, the
last 50 of the published setup / the last 100 of the legacy script). Diverged runs (genda
exits non-zero, or a non-finite RMSE) are counted, never dropped. Needs numpy + netCDF4
(the venv of scripts/setup.sh).
"""
import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import netCDF4
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
PUB = "configs/ensf/l96_published.toml"
LEG = "configs/ensf/l96_legacy.toml"
# name -> (config, --set overrides, windows as (label, first analysis index))
CASES = {
    # The authors' fine-tuning runs: d = 100, Nt_SDE = 200 (their 0.2922 / 0.1928 over 10 seeds).
    "published_d100_nt200": (PUB, ["model.dim=100", "filter.steps=200"], [("all 150", 0), ("last 50", 100)]),
    "published_d40": (PUB, ["model.dim=40"], [("all 150", 0), ("last 50", 100)]),
    "published_d1000": (PUB, ["model.dim=1000"], [("all 150", 0), ("last 50", 100)]),
    "legacy_d40": (LEG, ["model.dim=40"], [("all 600", 0), ("last 100", 500)]),
    "legacy_d1000": (LEG, ["model.dim=1000"], [("all 600", 0), ("last 100", 500)]),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="1,2,3,4,5")
    ap.add_argument("--cases", nargs="*", default=list(CASES))
    ap.add_argument("--genda", default=str(ROOT / "target" / "release" / "genda"))
    ap.add_argument("--raw", help="append one line per run here")
    a = ap.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    for name in a.cases:
        cfg, sets, windows = CASES[name]
        per = {w: [] for w, _ in windows}
        spread = []
        diverged = 0
        for s in seeds:
            with tempfile.TemporaryDirectory() as d:
                out = Path(d) / "run.nc"
                cmd = [a.genda, "run", cfg, "--seed", str(s), "--quiet", "-o", str(out), "--burn-in", "0"]
                for kv in sets:
                    cmd += ["--set", kv]
                p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
                if p.returncode != 0 or not out.exists():
                    diverged += 1
                    line = f"{name} seed {s}: failed: {p.stderr.strip().splitlines()[-1:]}"
                else:
                    with netCDF4.Dataset(out) as f:
                        r = np.array(f["rmse_analysis"][:], float)
                        sp = np.array(f["analysis_spread"][:], float)
                    if not np.all(np.isfinite(r)):
                        diverged += 1
                        line = f"{name} seed {s}: non-finite RMSE"
                    else:
                        vals = {w: float(r[i0:].mean()) for w, i0 in windows}
                        for w, v in vals.items():
                            per[w].append(v)
                        spread.append(float(np.sqrt((sp[windows[-1][1]:] ** 2).mean())))
                        line = f"{name} seed {s}: " + ", ".join(f"{w} {v:.4f}" for w, v in vals.items())
            print(line, flush=True)
            if a.raw:
                with open(a.raw, "a") as f:
                    f.write(line + "\n")

        def ms(v):
            if not v:
                return "–"
            return f"{statistics.mean(v):.4f} ± {statistics.stdev(v):.4f}" if len(v) > 1 else f"{v[0]:.4f}"

        cols = " | ".join(f"{w}: {ms(v)}" for w, v in per.items())
        print(f"| {name} | {' '.join(sets)} | {cols} | spread ({windows[-1][0]}) {ms(spread)} | "
              f"{len(seeds) - diverged}/{len(seeds)} seeds, {diverged} diverged |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
