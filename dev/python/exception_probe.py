"""Whether mambacpp's errors reach Python intact in this environment, with and without torch imported
first (torch loads the shared libstdc++ into the global scope: CMakeLists.txt's --exclude-libs says why
that matters): each case runs in a child process, so that a crash kills only it, and prints the child's
exit and last line.
    usage: PYTHONPATH=<build>/python python3 dev/python/exception_probe.py [segv.so]
With segv.so (dev/python/segv_backtrace.c built), a case that crashes runs again with it preloaded and its
native frames are printed, those of shared libraries resolved by addr2line."""

import os
import re
import subprocess
import sys

# Each case: what it imports, then the call that must raise mambacpp.Error.
SCAN_300 = "_core._scan_forward(False, 2, 5, 4, 300, 0, *([256] * 6), 0, 0, 0, False, 0, 256, 0, 0)"
DROP_IN_300 = ("selective_scan_fn(torch.randn(2, 4, 5), torch.rand(2, 4, 5), -torch.ones(4, 300), "
               "torch.randn(2, 300, 5), torch.randn(2, 300, 5))")
CASES = {
    "error from C++, no torch": ("import mambacpp", "mambacpp.Model('/nonexistent')"),
    "error from C++ after import torch": ("import torch, mambacpp", "mambacpp.Model('/nonexistent')"),
    "scan check, no torch": ("import mambacpp\nfrom mambacpp import _core", SCAN_300),
    "scan check after import torch": ("import torch, mambacpp\nfrom mambacpp import _core", SCAN_300),
    "drop-in, d_state 300": ("import torch, mambacpp\nfrom mambacpp.torch import selective_scan_fn", DROP_IN_300),
}
CASES = {k: f"{imports}\ntry:\n    {call}\nexcept mambacpp.Error as e:\n    print('raised:', e)"
         for k, (imports, call) in CASES.items()}

for name, code in CASES.items():
    r = subprocess.run([sys.executable, "-X", "faulthandler", "-c", code], capture_output=True, text=True, timeout=120)
    last = (r.stdout.strip().splitlines() or r.stderr.strip().splitlines() or [""])[-1]
    print(f"{name}: exit {r.returncode}: {last[:160]}")
    if r.returncode < 0 and len(sys.argv) > 1:
        env = dict(os.environ, LD_PRELOAD=sys.argv[1])
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
        for line in r.stderr.splitlines():
            m = re.match(r"(\S+)\((?:[^)+]*)?\+(0x[0-9a-f]+)\)", line)
            where = ""
            if m and os.path.exists(m.group(1)):
                a2l = subprocess.run(["addr2line", "-f", "-C", "-e", m.group(1), m.group(2)], capture_output=True,
                                     text=True)
                where = " ".join(a2l.stdout.split())[:200]
            print("   ", line[:160], "->", where)
