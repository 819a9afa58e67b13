"""The child of doctor's login check, run in a network namespace of its own (see
doctor_login): reload the temporary policy, open a session with python-pam, probe
from its cgroup, close it, and check that the hook left nothing. Prints one JSON
line {"ok", "detail", "fix"}."""

import fcntl
import json
import os
import pwd
import socket
import struct
from ctypes import c_void_p

from . import cgroups, records
from .apply import Paths, reload
from .doctor_login import ALLOWED_PORT, DENIED_PORT
from .errors import NetfenceError
from .verify import probe

SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
IFREQ = "16sH14x"                        # struct ifreq: name, ifr_flags, padding
HOOK_FIX = ("the hook refused or failed the login: read its log line (journalctl -t "
            "netfence, or dmesg) and `netfence pam-line`")


def _refuse_conversation():
    """A conversation that answers nothing: the temporary service never prompts, and
    python-pam's own one is freed after authenticate (tests/support/login_driver.py)."""
    from pam import __internals as pi

    def conversation(n_messages, messages, p_response, app_data):
        return pi.PAM_CONV_ERR
    callback = pi.conv_func(conversation)
    return callback, pi.PamConv(callback, c_void_p(0))


def loopback_up():
    """`ip link set lo up` without iproute2 (a minimal system may lack it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack(IFREQ, b"lo", 0)
        flags = struct.unpack(IFREQ, fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack(IFREQ, b"lo", flags | IFF_UP))


def main(request):
    try:
        result = _login(request)
    except (NetfenceError, OSError) as err:
        result = {"ok": False, "detail": f"{type(err).__name__}: {err}", "fix": HOOK_FIX}
    print(json.dumps(result))
    return 0


def _login(request):
    import pam
    from ctypes import addressof
    from pam import __internals as pi
    root = request["root"]
    paths = Paths(f"{root}/etc", f"{root}/state", f"{root}/run")
    loopback_up()
    reload(paths)
    session = pam.pam()
    if not session.authenticate(request["user"], "", service=request["service"],
                                call_end=False):
        return {"ok": False, "detail": f"authenticate: {session.reason}",
                "fix": "the temporary service's pam_permit failed: PAM is broken"}
    keep = _refuse_conversation()
    session.pam_set_item(session.handle, pi.PAM_CONV, addressof(keep[1]))
    code = session.open_session()
    if code != pi.PAM_SUCCESS:
        session.end()
        return {"ok": False, "detail": f"pam_open_session failed ({code}: "
                f"{session.reason})", "fix": HOOK_FIX}
    try:
        seen = _inside(request, paths)
    finally:
        code = session.close_session()
        session.end()
    if code != pi.PAM_SUCCESS:
        return {"ok": False, "detail": f"pam_close_session failed ({code})", "fix": HOOK_FIX}
    return _judge(seen, _leftovers(paths, request["base"]))


def _inside(request, paths):
    """What a process of the open session meets: its cgroup and the two probes."""
    mount = cgroups.cgroup2_mount()
    with open("/proc/self/cgroup") as handle:
        cgroup = cgroups.parse_proc_cgroup(handle.read())
    account = pwd.getpwnam(request["user"])
    fenced = cgroup.startswith(f"/{request['base']}/")
    results = probe(f"/proc/{os.getpid()}/ns/net", mount + cgroup, account.pw_uid,
                    account.pw_gid, [DENIED_PORT, ALLOWED_PORT]) if fenced else {}
    return {"cgroup": cgroup, "fenced": fenced, "results": results,
            "records": len(records.list_sessions(paths.run_dir))}


def _leftovers(paths, base):
    from .nftnl import Ruleset
    left = []
    if records.list_sessions(paths.run_dir) or records.list_users(paths.run_dir):
        left.append("session records")
    with Ruleset() as ruleset:
        elements = ruleset.read_elements() if ruleset.table_exists() else {}
    if any(elements.values()):
        left.append("set elements " + ", ".join(s for s, e in elements.items() if e))
    own = os.path.join(cgroups.cgroup2_mount(), base)
    if any(name.startswith("user-") for name in _listdir(own)):
        left.append(f"cgroups under {own}")
    return left


def _listdir(path):
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


def _judge(seen, left):
    if not seen["fenced"] or not seen["records"]:
        return {"ok": False, "detail": f"the session was not fenced (cgroup "
                f"{seen['cgroup']}, {seen['records']} records)", "fix": HOOK_FIX}
    denied, allowed = seen["results"][DENIED_PORT], seen["results"][ALLOWED_PORT]
    problems = []
    if denied != "refused":
        problems.append(f"the denied port {DENIED_PORT} was {denied}, not refused")
    if allowed != "ok":
        problems.append(f"the allowed port {ALLOWED_PORT} was {allowed}")
    if left:
        problems.append("after logout the hook left " + "; ".join(left))
    if problems:
        return {"ok": False, "detail": "; ".join(problems),
                "fix": "netfence gc; then report it (docs/doctor.md)"}
    return {"ok": True, "detail": f"a throwaway user's login was fenced (port {DENIED_PORT} "
            f"refused, {ALLOWED_PORT} connected) and left nothing", "fix": ""}
