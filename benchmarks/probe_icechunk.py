"""Icechunk probe for the transactional-cube issue: two concurrent appends along ``obs`` on local disk.

Not a speed benchmark: it prints what Icechunk does when two sessions append one
observation each to the same array, which decides how rtsflow must serialise
cube writers. Needs ``pip install icechunk`` (1.1.x on Python 3.11).

Usage::

    python benchmarks/probe_icechunk.py /tmp/probe-repo
"""

import shutil
import sys

import icechunk as ic
import numpy as np
import xarray as xr

root = sys.argv[1] if len(sys.argv) > 1 else "/tmp/probe-icechunk"
shutil.rmtree(root, ignore_errors=True)
st = ic.local_filesystem_storage(root)
repo = ic.Repository.create(st)
s = repo.writable_session("main")
ds = xr.Dataset(
    {"dem": (("obs", "y", "x"), np.zeros((1, 64, 64), "f4"))}, coords={"obs": np.array(["a"], dtype=object)}
)
ds.to_zarr(s.store, zarr_format=3, consolidated=False, encoding={"dem": {"chunks": (1, 32, 32)}})
print("c1", s.commit("first", metadata={"cmd": "ingest a"}))
# two concurrent sessions each append one obs
s1 = repo.writable_session("main")
s2 = repo.writable_session("main")
for s_, name in ((s1, "b"), (s2, "c")):
    obs = np.array([name], dtype=object)
    d = xr.Dataset({"dem": (("obs", "y", "x"), np.full((1, 64, 64), ord(name), "f4"))}, coords={"obs": obs})
    d.to_zarr(s_.store, append_dim="obs", consolidated=False)
print("c2", s1.commit("b"))
try:
    print("c3", s2.commit("c"))
except ic.ConflictError as e:
    print("conflict:", e)
    try:
        s2.rebase(ic.BasicConflictSolver())
        print("rebased", s2.commit("c"))
    except ic.RebaseFailedError as e:
        print("rebase failed:", [(c.conflict_type, c.path) for c in e.conflicts])
for snap in repo.ancestry(branch="main"):
    print(snap.id, snap.message, snap.metadata, snap.written_at)
print(xr.open_zarr(repo.readonly_session("main").store, consolidated=False).obs.values)
