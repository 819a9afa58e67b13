"""cffi build script for netfence._fastpath (API mode), in the style of pyca/cryptography.

Run by setuptools through `cffi_modules=["c_ext/build_fastpath.py:ffibuilder"]`, or by
hand for an in-place development build:

    python3 c_ext/build_fastpath.py          # writes src/netfence/_fastpath*.so

The script is executed as a file: it puts its own directory on sys.path and imports
nothing from the netfence package. The package version is read from
src/netfence/__init__.py as text and compiled into the module; fastpath.py compares
it at import, so a stale build is never used (see docs/hook.md).
"""

import os
import sys

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

# The C interface as data: every function returns 0 (or a length) or -errno.
FUNCTIONS = """
const char *nf_version(void);
long nf_fill(uint8_t *out, size_t cap, const uint8_t *tmpl, size_t tlen,
             uint32_t seq, const uint8_t *key, size_t key_off, size_t key_len);
int nf_batch(const uint8_t *buf, size_t len, uint32_t first_seq, uint32_t nmsgs,
             int32_t *errors, int timeout_ms, int flags);
#define NF_DETACH_CLOSE ...
int cg_mkdir(const char *path, unsigned int mode);
int cg_rmdir(const char *path);
int cg_move(const char *procs, int pid);
int cg_id(const char *path, uint64_t *id);
"""


def package_version(root=ROOT):
    """`__version__` of src/netfence/__init__.py, read as text (no import)."""
    path = os.path.join(root, "src", "netfence", "__init__.py")
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("__version__"):
                return line.split("=", 1)[1].strip().strip("\"'")
    raise RuntimeError(f"{path}: no __version__ line")


def _c_string(text):
    if not all(c.isalnum() or c in ".+-_" for c in text):
        raise RuntimeError(f"unexpected characters in version {text!r}")
    return f'"{text}"'


ffibuilder = FFI()
ffibuilder.cdef(FUNCTIONS)
ffibuilder.set_source(
    "netfence._fastpath",
    '#include "fastpath.c"\n',
    include_dirs=[HERE],
    define_macros=[("NETFENCE_VERSION", _c_string(package_version()))],
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
)


LAUNCHER_SOURCE = os.path.join(HERE, "hook_launcher.c")
LAUNCHER_NAME = "_hook_launcher"          # hookstub.LAUNCHER_NAME


def build_launcher(out, cc=None):
    """Compile the static hook launcher; returns False (with a warning) when this
    machine cannot link statically (no libc.a): the hook then works without it."""
    import shutil
    import subprocess
    cc = cc or os.environ.get("CC", "").split(" ")[0] or shutil.which("cc") or "gcc"
    cmd = [cc, "-static", "-O2", "-s", "-Wall", "-Wextra", "-o", out, LAUNCHER_SOURCE]
    try:
        subprocess.run(cmd, check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as err:
        detail = getattr(err, "stderr", "") or str(err)
        print(f"warning: static hook launcher not built ({' '.join(cmd)}): {detail}",
              file=sys.stderr)
        return False
    return True


if __name__ == "__main__":
    # In-place build: the generated _fastpath.c, .o and .so land in src/netfence/
    # (ignored by git), next to the Python sources PYTHONPATH=src imports; so does
    # the static launcher (src/netfence/_hook_launcher).
    out = ffibuilder.compile(tmpdir=os.path.join(ROOT, "src"), verbose=False)
    print(out)
    launcher = os.path.join(ROOT, "src", "netfence", LAUNCHER_NAME)
    if build_launcher(launcher):
        print(launcher)
