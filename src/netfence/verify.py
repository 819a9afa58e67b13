"""`netfence verify USER|--session KEY`: prove from inside each live session's cgroup
that its restrictions bite.

For each session: the applied snapshot's profile chains (the rules the kernel runs,
interpreted by `evaluate`) pick a loopback TCP port one of the session's enforcing
profiles denies and one every profile allows; a forked probe enters the network
namespace of the session's PAM application, listens on both ports as root (outside
the session), and its child joins the session cgroup, drops to the session's uid and
connects to each. The denied one must be refused (reject) or dropped (deny), the
allowed one must connect. The probe lives for a second or two and leaves no process,
socket or file: the session itself is never signalled, moved or changed.
"""

import ctypes
import errno
import os
import socket
import struct

from . import cgroups, ir, liveness, records
from .errors import StateError
from .evaluate import first_match, parse_ip

CLONE_NEWNET = 0x40000000
LOOPBACK_IFINDEX = 1
# ports tried first for a denied or allowed one: the policy's usual ones, then the rest
CANDIDATE_PORTS = (80, 443, 22, 25, 53, 8080, 3306, 5432, *range(1, 1024))
QUIET_PORTS = tuple(range(47000, 47100))
PROBE_TIMEOUT_S = 1.0


def syn_headers(port):
    """The headers evaluate reads for a TCP SYN 127.0.0.1 -> 127.0.0.1:port."""
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0, 64, 6, 0,
                     bytes([127, 0, 0, 1]), bytes([127, 0, 0, 1]))
    tcp = struct.pack("!HHIIBBHHH", 40000, port, 0, 0, 0x50, 0x02, 65535, 0, 0)
    return parse_ip(ip + tcp)


def verdict(table, profile, port):
    """"allow", "deny" or "reject": what profile P's egress chain does to the SYN (its
    lookup maps followed to the deciding rule chain, as the kernel does)."""
    found = first_match(table.get("rules", []), f"out-{profile}", syn_headers(port),
                        outdev=LOOPBACK_IFINDEX, sets=table.get("sets", []))
    return "allow" if found is None else found[1]


def policy_ports(table, profiles):
    """The destination ports the profiles' egress lookup maps name (the ends of each
    element's port range): the first candidates."""
    prefixes = tuple(f"out-{p}." for p in profiles)
    found = []
    for set_def in table.get("sets", []):
        if set_def.get("data") != "verdict" or not set_def["name"].startswith(prefixes):
            continue
        fields = set_def.get("fields", [])
        spans = [span for (datatype, _), span in zip(fields, ir.field_spans(fields))
                 if datatype == "inet_service"]
        if not spans:
            continue
        start = spans[0][0]
        for key, key_end, _chain in set_def.get("elements", []):
            found += [int.from_bytes(bytes.fromhex(value)[start:start + 2], "big")
                      for value in (key, key_end)]
    return [p for p in dict.fromkeys(found) if 0 < p < 65536]


def pick_ports(applied, profiles):
    """(denied port, its verdict, allowed port) for a session with `profiles`; None
    for either when no candidate fits. Monitor-mode profiles deny nothing."""
    table = applied.get("table") or {}
    info = (applied.get("login") or {}).get("profiles", {})
    enforcing = [p for p in profiles if info.get(p, {}).get("mode", "enforce") != "monitor"]
    denied = allowed = None
    own = policy_ports(table, profiles)
    for port in dict.fromkeys([*own, *CANDIDATE_PORTS]):
        blocking = [v for v in (verdict(table, p, port) for p in enforcing) if v != "allow"]
        if blocking:
            denied = (port, blocking[0])
            break
    # high ports first: the probe should meet its own listener, not a real service
    for port in dict.fromkeys([*QUIET_PORTS, *own, *CANDIDATE_PORTS]):
        if all(verdict(table, p, port) == "allow" for p in profiles):
            allowed = port
            break
    return (denied[0] if denied else None, denied[1] if denied else None, allowed)


def select_sessions(run_dir, user=None, key=None):
    """The live session records of USER (name or uid) or the one with KEY."""
    sessions = [s for s in records.list_sessions(run_dir) if liveness.is_alive(s)]
    if key is not None:
        chosen = [s for s in sessions if s["key"] == key]
        if not chosen:
            raise StateError(f"no live session with key {key!r} (netfence status lists them)")
        return chosen
    chosen = [s for s in sessions if s.get("user") == user or str(s.get("uid")) == user]
    if not chosen:
        raise StateError(f"{user!r} has no live session (netfence status lists them)")
    return chosen


def _setns(path):
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")
    finally:
        os.close(fd)


def connect_result(port):
    """"ok", "refused", "dropped" or "error:NAME" for one TCP connect to loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(PROBE_TIMEOUT_S)
        try:
            sock.connect(("127.0.0.1", port))
            return "ok"
        except socket.timeout:
            return "dropped"
        except ConnectionRefusedError:
            return "refused"
        except PermissionError:
            return "dropped"
        except OSError as err:
            return f"error:{errno.errorcode.get(err.errno, err.errno)}"


def listen(port):
    """A root listener on 127.0.0.1:port, or None when one is there already (it then
    answers the probe: only what the fence does to the SYN matters)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            return None
        raise
    sock.listen(4)
    return sock


def probe(netns_path, cgroup_dir, uid, gid, ports):
    """{port: result} of connections from a process in cgroup_dir (absolute path under
    the cgroup2 mount) with uid/gid, in the network namespace at netns_path."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:                                     # the probe: never returns
        os.close(read_end)
        code = 1
        try:
            os.write(write_end, _probe_child(netns_path, cgroup_dir, uid, gid, ports))
            code = 0
        except BaseException as err:                 # report anything, then _exit
            os.write(write_end, f"error {type(err).__name__}: {err}".encode())
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as handle:
        text = handle.read().decode(errors="replace")
    os.waitpid(pid, 0)
    if text.startswith("error "):
        raise StateError(f"probe failed: {text[6:]}")
    return {int(k): v for k, v in (w.split("=", 1) for w in text.split())}


def _probe_child(netns_path, cgroup_dir, uid, gid, ports):
    _setns(netns_path)
    listeners = [listen(port) for port in ports]
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:                                     # joins the session, as its uid
        os.close(read_end)
        try:
            with open(os.path.join(cgroup_dir, "cgroup.procs"), "w") as handle:
                handle.write("0")
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            words = " ".join(f"{port}={connect_result(port)}" for port in ports)
            os.write(write_end, words.encode())
        except BaseException as err:             # said to the parent, then _exit
            os.write(write_end, f"error {err}".encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as handle:
        out = handle.read()
    os.waitpid(pid, 0)
    for sock in listeners:
        if sock is not None:
            sock.close()
    return out or b"error probe child said nothing"


def verify_session(record, applied, mount):
    """{"key", "user", "ok", "detail", "results"} for one live session."""
    profiles = list(dict.fromkeys(record.get("user_profiles", []) + record.get(
        "session_profiles", [])))
    out = {"key": record["key"], "user": record.get("user"), "profiles": profiles,
           "results": {}}
    denied, action, allowed = pick_ports(applied, profiles)
    if denied is None:
        return {**out, "ok": True, "detail": "no profile of it denies a loopback TCP "
                "port: nothing to prove"}
    ports = [denied] + ([allowed] if allowed is not None else [])
    gid = _gid_of(record)
    results = probe(f"/proc/{record['ppid']}/ns/net", mount + record["cgroup"],
                    record["uid"], gid, ports)
    out["results"] = {str(k): v for k, v in results.items()}
    problems = []
    if results[denied] not in ("refused", "dropped"):
        problems.append(f"port {denied} ({action} by policy) was {results[denied]}")
    if allowed is not None and results[allowed] != "ok":
        problems.append(f"port {allowed} (allowed) was {results[allowed]}")
    detail = "; ".join(problems) or (
        f"port {denied} {results[denied]}" + (f", port {allowed} ok" if allowed else ""))
    return {**out, "ok": not problems, "detail": detail}


def _gid_of(record):
    import pwd
    try:
        return pwd.getpwuid(record["uid"]).pw_gid
    except KeyError:
        return record["uid"]


def verify(paths, user=None, key=None):
    from .snapshot import read_snapshot
    applied = read_snapshot(paths.state_dir) or {}
    if not applied.get("table"):
        raise StateError("no policy applied: netfence reload")
    mount = cgroups.cgroup2_mount()
    results = []
    for record in select_sessions(paths.run_dir, user, key):
        try:
            results.append(verify_session(record, applied, mount))
        except (StateError, OSError) as err:     # one session's failure, not the others'
            results.append({"key": record["key"], "user": record.get("user"), "ok": False,
                            "detail": f"cannot probe it: {err}", "results": {}})
    return results


def format_text(results):
    return "".join(f"{'ok     ' if r['ok'] else 'problem'} session {r['key']} "
                   f"({r['user']}): {r['detail']}\n" for r in results)
