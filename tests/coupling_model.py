#!/usr/bin/env python3
"""An external Lorenz-96 ensemble model coupled to `genda couple` through NetCDF files only.

Independent of genda's code: its own RK4 in numpy, its own netCDF4 I/O. For cycle k it waits
for cycle_<k-1>/analysis.ready, reads `analysis` (member, x), integrates every member
`steps` RK4 steps, writes cycle_<k>/forecast.nc and cycle_<k>/obs.nc (the observations of
cycle k, taken from a `genda truth` file), then the marker cycle_<k>/forecast.ready.

usage: coupling_model.py DIR CYCLES TRUTH_NC FORCING DT STEPS
"""
import os
import sys
import time

import netCDF4
import numpy as np


def tendency(x, forcing):
    return (np.roll(x, -1, axis=-1) - np.roll(x, 2, axis=-1)) * np.roll(x, 1, axis=-1) - x + forcing


def rk4(x, dt, forcing):
    k1 = tendency(x, forcing)
    k2 = tendency(x + 0.5 * dt * k1, forcing)
    k3 = tendency(x + 0.5 * dt * k2, forcing)
    k4 = tendency(x + dt * k3, forcing)
    return x + dt / 6.0 * (k1 + 2.0 * (k2 + k3) + k4)


def wait(path, timeout=120.0):
    t0 = time.time()
    while not os.path.exists(path):
        if time.time() - t0 > timeout:
            sys.exit(f"model: timed out waiting for {path}")
        time.sleep(0.01)


def main():
    d, cycles, truth_nc, forcing, dt, steps = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
    with netCDF4.Dataset(truth_nc) as t:
        obs_all = np.array(t["observations"][:])
    for k in range(1, cycles + 1):
        prev = os.path.join(d, f"cycle_{k - 1:06d}")
        wait(os.path.join(prev, "analysis.ready"))
        with netCDF4.Dataset(os.path.join(prev, "analysis.nc")) as a:
            ens = np.array(a["analysis"][:])
        for _ in range(steps):
            ens = rk4(ens, dt, forcing)
        cur = os.path.join(d, f"cycle_{k:06d}")
        os.makedirs(cur, exist_ok=True)
        with netCDF4.Dataset(os.path.join(cur, "forecast.nc"), "w") as f:
            f.createDimension("member", ens.shape[0])
            f.createDimension("x", ens.shape[1])
            v = f.createVariable("forecast", "f8", ("member", "x"))
            v[:] = ens
        with netCDF4.Dataset(os.path.join(cur, "obs.nc"), "w") as f:
            f.createDimension("obs", obs_all.shape[1])
            v = f.createVariable("observations", "f8", ("obs",))
            v[:] = obs_all[k - 1]
        with open(os.path.join(cur, "forecast.ready.tmp"), "w") as m:
            m.write(f"{k}\n")
        os.rename(os.path.join(cur, "forecast.ready.tmp"), os.path.join(cur, "forecast.ready"))


if __name__ == "__main__":
    main()
