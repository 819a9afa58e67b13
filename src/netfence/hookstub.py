"""Write the hook program that pam_exec runs (`netfence install-hook`).

    PATH      the static launcher (c_ext/hook_launcher.c) when the build produced one:
              keeps every PAM_* variable (in order, no limit) and nothing else, so
              LD_PRELOAD and friends from the PAM environment never reach a dynamic
              loader; resets the signal state and runs PATH.py in a child it kills at
              the deadline (timeout_ms + 200 ms), applying on_error
    PATH.py   the Python hook program (PATH itself when there is no launcher):

        #!<python> -IS
        import sys
        sys.path[:0] = [<dir holding the netfence package>, <dir of _cffi_backend>]
        from netfence.hook import run
        run(sys.argv[1:])

`-IS` is one argument, as the kernel passes everything after the interpreter path as
a single argument: -I ignores PYTHON* variables and the user site, -S skips `site`
(which costs ~70 ms here through .pth files), so the package directory is written in
explicitly, computed now from the package being installed. Every directory on that
path, and the interpreter, must be root's and not writable by others: the hook runs
as root.
"""

import os
import sys

from . import __version__, fsutil
from .errors import UsageError

LAUNCHER_NAME = "_hook_launcher"
SHEBANG_MAX = 255               # BINPRM_BUF_SIZE 256, with the newline


def launcher_path():
    """The prebuilt static launcher shipped next to the package, or None."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), LAUNCHER_NAME)
    return path if os.access(path, os.X_OK) else None


def search_path():
    """Directories the hook needs on sys.path: netfence's and _cffi_backend's."""
    dirs = [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
    try:
        import _cffi_backend
    except ImportError:
        pass
    else:
        backend_dir = os.path.dirname(os.path.abspath(_cffi_backend.__file__))
        if backend_dir not in dirs:
            dirs.append(backend_dir)
    return dirs


def script_text(python, dirs):
    shebang = f"#!{python} -IS"
    if len(shebang) > SHEBANG_MAX or " " in python or "\n" in python:
        raise UsageError(f"interpreter path unusable in a #! line: {python!r}")
    return (f"{shebang}\n"
            f"# netfence {__version__} PAM hook, written by `netfence install-hook`.\n"
            f"# Regenerate it after moving or upgrading netfence; do not edit.\n"
            f"import sys\n"
            f"sys.path[:0] = {dirs!r}\n"
            f"from netfence.hook import run\n"
            f"run(sys.argv[1:])\n")


def write_hook(path, python=None, launcher=True):
    """Write the hook program at path (root-owned, 0755). Returns the files written.

    launcher=False (or no launcher built) writes the Python program at path itself;
    the PAM environment's LD_PRELOAD then reaches the interpreter (docs/hook.md).
    """
    python = os.path.abspath(python or sys.executable)
    dirs = search_path()
    for trusted in [python] + dirs:
        check_trusted(trusted)
    text = script_text(python, dirs)
    binary = launcher_path() if launcher else None
    if not binary:
        _install(path, text.encode(), 0o755)
        return [path]
    _install(path + ".py", text.encode(), 0o755)        # before the launcher runs it
    with open(binary, "rb") as handle:
        _install(path, handle.read(), 0o755)
    return [path, path + ".py"]


def _install(path, data, mode):
    """Replace path whole (pam_exec may run it at any moment) and durably."""
    os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
    fsutil.write_atomic(path, data, mode, sync=True)


def check_trusted(path):
    """Refuse a file or directory that someone but root could change (it, or any
    directory above it), like sshd's StrictModes."""
    real = os.path.realpath(path)
    current = real
    while True:
        # A sticky directory above (like /tmp) is fine: others cannot replace our entry.
        problem = fsutil.owner_problem(os.stat(current), sticky_ok=current != real)
        if problem:
            raise UsageError(f"{current} (for {path}) is not root's or is writable by "
                             f"others: {problem}; a hook running as root must not load "
                             f"code from it")
        parent = os.path.dirname(current)
        if parent == current:
            return
        current = parent
