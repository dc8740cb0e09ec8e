"""A smoke test of an installed pyrt (from a wheel, in a fresh environment): a container of the
host image and one of a busybox rootfs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

import pyrt

r = pyrt.run(pyrt.Image.host(), ["sh", "-c", "echo $$"], text=True, check=True)
assert r.stdout == "1\n", r.stdout
root = tempfile.mkdtemp()
try:
    os.makedirs(f"{root}/bin")
    shutil.copy("/bin/busybox", f"{root}/bin/busybox")
    for a in subprocess.run(
        ["/bin/busybox", "--list"], capture_output=True, text=True
    ).stdout.split():
        if a != "busybox":
            os.symlink("busybox", f"{root}/bin/{a}")
    r = pyrt.run(
        pyrt.Image.load(root), ["sh", "-c", "ls /bin | wc -l; hostname"], text=True, check=True
    )
    assert int(r.stdout.split()[0]) > 100
    # zstd layers are read by the core itself: no Python package for them in this venv.
    tar = subprocess.run(["tar", "-C", root, "-cf", "-", "."], capture_output=True, check=True)
    zst = subprocess.run(["zstd", "-q", "-c"], input=tar.stdout, capture_output=True, check=True)
    with open(f"{root}.tar.zst", "wb") as f:
        f.write(zst.stdout)
    r = pyrt.run(pyrt.Image.load(f"{root}.tar.zst"), ["echo", "zstd"], text=True, check=True)
    assert r.stdout == "zstd\n", r.stdout
    os.unlink(f"{root}.tar.zst")
finally:
    shutil.rmtree(root)
# pyrt-runc, the OCI runtime, comes with the wheel as a script beside the interpreter.
runc = os.path.join(os.path.dirname(sys.executable), "pyrt-runc")
features = subprocess.run([runc, "features"], capture_output=True, text=True, check=True)
assert '"ociVersionMin"' in features.stdout, features.stdout
print(f"smoke test passed: pyrt {pyrt.__version__} from {os.path.dirname(pyrt.__file__)}")
