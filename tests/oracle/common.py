"""Shared helpers of the oracle scripts: read genda's HDF5 case file, compare to tolerance."""
import sys

import h5py
import numpy as np

TOL = 1e-10


def load(path):
    f = h5py.File(path, "r")
    data = {k: np.array(f[k]) for k in f.keys()}
    attrs = {k: float(v) for k, v in f.attrs.items()}
    return data, attrs


def compare(pairs):
    """pairs: list of (name, genda, oracle). Exit 1 if any relative difference exceeds TOL."""
    worst = 0.0
    bad = []
    for name, g, o in pairs:
        g, o = np.asarray(g, float), np.asarray(o, float)
        if g.shape != o.shape:
            bad.append(f"{name}: shape {g.shape} vs oracle {o.shape}")
            continue
        scale = max(np.max(np.abs(o)), 1e-300)
        d = np.max(np.abs(g - o)) / scale
        worst = max(worst, d)
        if not d <= TOL:
            bad.append(f"{name}: relative difference {d:.3e}")
    print(f"max relative difference {worst:.3e} (tolerance {TOL:g})")
    if bad:
        print("\n".join(bad))
        sys.exit(1)
