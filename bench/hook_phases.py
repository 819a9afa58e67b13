"""The netfence hook with a stopwatch on its phases (bench/run.py --profile).

    python3 -I -S hook_phases.py --path=DIR:DIR --out=FILE HOOK-ARGS...

Run by the driver exactly like the hook (same environment, same parent), it imports
everything the hook would import lazily up front (timed as "import ..."), wraps the
functions that do the work with timers, runs netfence.hook.main(), and appends one line,
repr({phase: ms}), to FILE. Interpreter start-up is not included: it is the bare
interpreter baseline.
"""

import sys
import time

T0 = time.perf_counter()
PHASES = {}


def _arg(prefix):
    for arg in sys.argv[1:]:
        if arg.startswith(prefix):
            sys.argv.remove(arg)
            return arg[len(prefix):]
    raise SystemExit(f"missing {prefix}")


def _timed_import(name):
    started = time.perf_counter()
    module = __import__(name, fromlist=["_"])
    PHASES[f"import {name}"] = (time.perf_counter() - started) * 1000
    return module


def _wrap(module, name, label=None):
    original = getattr(module, name)
    label = label or f"{module.__name__.split('.')[-1]}.{name}"

    def timed(*args, **kwargs):
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            PHASES[label] = PHASES.get(label, 0.0) + (time.perf_counter() - started) * 1000

    setattr(module, name, timed)


def main():
    sys.path[:0] = _arg("--path=").split(":")
    out = _arg("--out=")
    hook = _timed_import("netfence.hook")
    for name in ("netfence.matcher", "netfence.fastpath", "netfence.sessions",
                 "netfence.cgroups", "netfence.records", "netfence._fastpath", "pwd", "grp"):
        try:
            _timed_import(name)
        except ImportError:
            pass
    import pwd

    from netfence import cgroups, fastpath, hooklog, matcher, pamitems, records, sessions
    fastpath.get()                                        # loads the C extension
    for module, names in ((fastpath, ("cg_move", "cg_mkdir", "cg_rmdir", "cg_id",
                                      "add_elements", "destroy_elements")),
                          (sessions, ("session_key", "_write_open", "_write_closing",
                                      "_live_sessions", "has_processes")),
                          (cgroups, ("cgroup2_mount", "proc_cgroup")),
                          (matcher, ("match_login",)),
                          (records, ("ensure_dirs",)),
                          (hook, ("load_login",)), (pamitems, ("read_environment",)),
                          (hooklog, ("syslog",))):
        for name in names:
            if hasattr(module, name):
                _wrap(module, name)
    _wrap(pwd, "getpwnam", "pwd.getpwnam")
    started = time.perf_counter()
    code = hook.main(sys.argv[1:])
    PHASES["main (total)"] = (time.perf_counter() - started) * 1000
    PHASES["wrapper (total)"] = (time.perf_counter() - T0) * 1000
    # no json: importing it (re, enum) would cost more than the hook's own imports
    with open(out, "a") as handle:
        handle.write(repr(PHASES) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
