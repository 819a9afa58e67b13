"""The hook program end to end, as pam_exec runs it (root, throwaway network namespace).

A small helper process plays the PAM application: it lives in the namespace, runs the
hook program (written by hookstub.write_hook into a temporary directory) with an
environment built entry by entry like pam_exec's, and stays alive between open and
close, so that its pid and start time name the session, as sshd's monitor or su do.
Cgroups go under a random <cgroup2>/nftest-<hex> that the fixture always removes.
"""

import json
import marshal
import os
import secrets
import signal
import subprocess
import sys
import time

import pytest

from netfence import cgroups, formats, hookstub, records
from netfence.nfencode import build_templates

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: netns, cgroups, nftables")

USER, UID = "nobody", 65534

TABLE = """
table inet netfence {
  set uid-web { type uid; }
  set ucg-web { type cgroupsv2; }
  set scg-web { type cgroupsv2; }
  set uid-srv { type uid; }
  set ucg-srv { type cgroupsv2; }
  set scg-srv { type cgroupsv2; }
}
"""

PARENT = r"""
import ctypes, json, os, subprocess, sys
libc = ctypes.CDLL(None, use_errno=True)

def cstrs(items):
    arr = (ctypes.c_char_p * (len(items) + 1))()
    for i, item in enumerate(items):
        arr[i] = item.encode()
    arr[len(items)] = None
    return arr

children = {}
for line in sys.stdin:
    req = json.loads(line)
    if req["cmd"] == "run":                 # exactly this environment, duplicates kept
        argv, envp = req["argv"], req["env"]
        pid = os.fork()
        if pid == 0:
            try:
                libc.execve(argv[0].encode(), cstrs(argv), cstrs(envp))
            finally:
                os._exit(127)
        _, status = os.waitpid(pid, 0)
        out = {"rc": os.waitstatus_to_exitcode(status)}
    elif req["cmd"] == "cgroup":
        text = open("/proc/self/cgroup").read()
        out = {"cgroup": [l[3:] for l in text.splitlines() if l.startswith("0::")][0]}
    elif req["cmd"] == "spawn":
        child = subprocess.Popen(req["argv"], stdin=subprocess.DEVNULL)
        children[child.pid] = child
        out = {"pid": child.pid}
    elif req["cmd"] == "reap":
        child = children.pop(req["pid"])
        child.kill()
        child.wait()
        out = {}
    print(json.dumps(out), flush=True)
"""


def rule(index, scope, profiles, users):
    return {"index": index, "where": f"test.toml:{index}", "scope": scope,
            "profiles": profiles, "users": [users, []], "groups": [[], []],
            "services": [[], []], "ttys": [[], []], "rhosts": [[], []], "time": []}


def login_part(base, on_error="deny", rules=None):
    profiles = {
        "web": {"egress": True, "ingress": True, "uid_set": "uid-web", "ucg_set": "ucg-web",
                "scg_set": "scg-web"},
        "srv": {"egress": True, "ingress": False, "uid_set": "uid-srv", "ucg_set": "ucg-srv",
                "scg_set": "scg-srv"},
    }
    login = {"format": formats.LOGIN, "policy_id": "test-policy",
             "settings": {"on_error": on_error, "hook_timeout_ms": 2000, "log_rate": 5,
                          "cgroup_base": base},
             "profiles": profiles,
             "rules": rules if rules is not None else [
                 rule(1, "user", ["web"], [USER]), rule(2, "session", ["srv"], [USER])]}
    login["templates"] = build_templates(login)
    return login


class Parent:
    """The PAM application: runs the hook, stays alive in between."""

    def __init__(self, world):
        self.world = world
        self.stderr = open(world.tmp / f"parent-{secrets.token_hex(3)}.log", "w")
        self.proc = world.ns.popen([sys.executable, "-c", PARENT], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=self.stderr, text=True)

    @property
    def pid(self):
        return self.proc.pid                 # nsenter execs: same pid as the python

    def ask(self, **req):
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"helper died; stderr in {self.stderr.name}"
        return json.loads(line)

    def hook(self, pam_type, user=USER, service="sshd", tty="ssh", rhost="192.0.2.10",
             args=(), before=(), program=None):
        env = [f"{k}={v}" for k, v in before]            # the PAM environment
        env += [f"PAM_SERVICE={service}", f"PAM_USER={user}", f"PAM_TTY={tty}"]
        if rhost is not None:
            env.append(f"PAM_RHOST={rhost}")
        env.append(f"PAM_TYPE={pam_type}")
        argv = [program or self.world.hook, *self.world.args, *args]
        return self.ask(cmd="run", argv=argv, env=env)["rc"]

    def open(self, **kw):
        return self.hook("open_session", **kw)

    def close(self, **kw):
        return self.hook("close_session", **kw)

    def cgroup(self):
        return self.ask(cmd="cgroup")["cgroup"]

    def key(self):
        from netfence.liveness import proc_starttime
        return f"{self.pid}-{proc_starttime(self.pid)}"

    def stop(self, sig=signal.SIGTERM):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)
        self.stderr.close()


class World:
    def __init__(self, ns, tmp, mount):
        self.ns, self.tmp, self.mount = ns, tmp, mount
        self.base = f"nftest-{secrets.token_hex(4)}"
        self.state = tmp / "state"
        self.run_dir = tmp / "run"
        self.state.mkdir()
        self.write_login(login_part(self.base))
        table = tmp / "table.nft"
        table.write_text(TABLE)
        ns.nft("-f", str(table))
        self.hook = hookstub.write_hook(str(tmp / "bin" / "netfence-hook"))[0]
        self.args = [f"state_dir={self.state}", f"run_dir={self.run_dir}"]
        self.parents = []

    def write_login(self, login):
        (self.state / "login.marshal").write_bytes(marshal.dumps(login))

    def parent(self):
        parent = Parent(self)
        self.parents.append(parent)
        return parent

    def elements(self, set_name):
        out = self.ns.nft("-j", "list", "set", "inet", "netfence", set_name).stdout
        for item in json.loads(out)["nftables"]:
            if "set" in item:
                return item["set"].get("elem", [])
        return []

    def all_elements(self):
        return {s: self.elements(s) for s in ("uid-web", "ucg-web", "scg-web",
                                              "uid-srv", "ucg-srv", "scg-srv")}

    def gc(self):
        code = (f"import sys; sys.path[:0] = {hookstub.search_path()!r}; "
                f"from netfence.collect import gc; "
                f"print(gc({str(self.run_dir)!r}, cgroup_base={self.base!r}))")
        return self.ns.run([sys.executable, "-c", code]).stdout

    def cleanup(self):
        for parent in self.parents:
            parent.stop(signal.SIGKILL)
        top = f"{self.mount}/{self.base}"
        for root, dirs, _ in sorted(os.walk(top), key=lambda w: -w[0].count("/")):
            try:
                with open(f"{root}/cgroup.procs") as handle:
                    pids = handle.read().split()
                for pid in pids:
                    try:
                        with open(f"{self.mount}/cgroup.procs", "w") as out:
                            out.write(pid)
                    except OSError:
                        pass
                os.rmdir(root)
            except OSError:
                pass
        assert not os.path.exists(top), f"could not remove {top}"


@pytest.fixture
def world(netns, tmp_path):
    try:
        mount = cgroups.cgroup2_mount()
    except Exception as err:                  # noqa: BLE001
        pytest.skip(f"no cgroup v2: {err}")
    world = World(netns, tmp_path, mount)
    try:
        yield world
    finally:
        world.cleanup()


# ---- the round trip ------------------------------------------------------------------

@pytest.mark.parametrize("impl", ["c", "python"])
def test_open_then_close(world, impl):
    parent = world.parent()
    origin = parent.cgroup()
    assert parent.open(args=[f"fastpath={impl}", "debug"]) == 0

    key = parent.key()
    record = records.read_session(str(world.run_dir), key)
    assert record["user"] == USER and record["uid"] == UID and record["created"] is True
    assert record["cgroup"] == f"/{world.base}/user-{UID}/session-{key}"
    assert record["origin"] == origin and record["policy_id"] == "test-policy"
    assert parent.cgroup() == record["cgroup"]
    assert os.stat(world.mount + record["cgroup"]).st_ino == record["cgroup_id"]

    found = world.all_elements()
    assert found["uid-web"] == [UID] and found["uid-srv"] == []
    assert len(found["ucg-web"]) == 1 and len(found["scg-srv"]) == 1
    assert found["scg-web"] == [] and found["ucg-srv"] == []
    user = records.read_user(str(world.run_dir), UID)
    assert user["sessions"] == [key] and "uid-web" in user["elements"]

    assert parent.close(args=[f"fastpath={impl}"]) == 0
    assert all(v == [] for v in world.all_elements().values())
    assert parent.cgroup() == origin
    assert not os.path.exists(world.mount + record["cgroup"])
    assert not os.path.exists(world.mount + f"/{world.base}/user-{UID}")
    assert records.list_sessions(str(world.run_dir)) == []
    assert records.list_users(str(world.run_dir)) == []

    assert parent.close() == 0                           # again: nothing to do
    assert all(v == [] for v in world.all_elements().values())


def test_both_implementations_get_the_same_acks(world):
    code = f"""
import json, sys
sys.path[:0] = {hookstub.search_path()!r}
from netfence import fastpath, nfencode
login = {{"profiles": {{"web": {{"uid_set": "uid-web", "ucg_set": "ucg-web", "scg_set": "scg-web"}},
                     "gone": {{"uid_set": "uid-gone", "ucg_set": "ucg-gone", "scg_set": "scg-gone"}}}}}}
t = nfencode.build_templates(login)
out = {{}}
for name in ("c", "python"):
    impl = fastpath._load(name)
    if impl.name != name:
        continue
    res = []
    for kind, els in (("new", {{"uid-web": ["01000000"], "scg-web": ["02" * 8]}}),
                      ("new", {{"uid-web": ["03000000"], "uid-gone": ["04000000"]}}),
                      ("destroy", {{"uid-web": ["01000000", "03000000"]}}),
                      ("destroy", {{"uid-gone": ["01000000"]}})):
        msgs, ops = fastpath.messages(t, kind, els)
        res.append(impl.send(impl.batch(msgs, 1), 1, len(ops), 1000))
    out[name] = res
print(json.dumps(out))
"""
    results = json.loads(world.ns.run([sys.executable, "-c", code]).stdout)
    if "c" not in results:
        pytest.skip("C fast path not built")
    assert results["c"] == results["python"]
    assert results["c"][0] == [0, [0, 0]]
    assert results["c"][1][0] == 0 and sorted(results["c"][1][1]) == [-2, 0]
    assert results["c"][3] == [0, [-2]]


def test_no_matching_rule_touches_nothing(world):
    parent = world.parent()
    origin = parent.cgroup()
    assert parent.open(user="root") == 0                  # wildcards never match root
    assert parent.cgroup() == origin
    assert all(v == [] for v in world.all_elements().values())
    assert not world.run_dir.exists()
    assert not os.path.exists(f"{world.mount}/{world.base}")


def test_user_scope_only_login_gets_a_cgroup_too(world):
    """Even an egress-only user-scope login gets a session cgroup: the user cgroup above
    it is what keeps the user's elements alive after logout (docs/security.md)."""
    login = login_part(world.base, rules=[rule(1, "user", ["srv"], [USER])])
    world.write_login(login)
    parent = world.parent()
    origin = parent.cgroup()
    assert parent.open() == 0
    assert world.elements("uid-srv") == [UID]
    record = records.read_session(str(world.run_dir), parent.key())
    assert parent.cgroup() == record["cgroup"] != origin
    assert records.read_user(str(world.run_dir), UID)["live_cgroups"] == [
        record["user_cgroup"]]
    assert parent.close() == 0
    assert world.elements("uid-srv") == []
    assert parent.cgroup() == origin
    assert not os.path.exists(world.mount + record["cgroup"])


# ---- failures --------------------------------------------------------------------

def test_refused_batch_follows_on_error(world):
    world.ns.nft("delete", "table", "inet", "netfence")
    parent = world.parent()
    origin = parent.cgroup()
    assert parent.open() == 1                            # snapshot says deny
    assert parent.cgroup() == origin                     # the move was undone
    assert records.list_sessions(str(world.run_dir)) == []
    assert records.list_users(str(world.run_dir)) == []
    _, session_dirs = cgroups.own_dirs(world.mount, world.base)
    assert session_dirs == []                            # the created cgroup was removed

    assert parent.open(args=["on_error=allow"]) == 0     # the argument wins
    assert parent.cgroup() == origin
    assert records.list_sessions(str(world.run_dir)) == []


def test_a_login_racing_a_reload_that_renamed_its_profile_is_matched_again(world):
    """The hook read login.marshal, then a reload renamed the profile (its old sets are
    gone from the kernel, a new snapshot is in place) before the hook's batch: the
    batch gets ENOENT, and the hook matches the login again against the new snapshot
    instead of refusing it."""
    import threading
    old = login_part(world.base, rules=[rule(1, "user", ["web"], [USER])])
    old["policy_id"] = "before-rename"
    old["profiles"]["web"].update(uid_set="uid-old", ucg_set="ucg-old", scg_set="scg-old")
    old["templates"] = build_templates(old)
    for name, kind in (("uid-old", "uid"), ("ucg-old", "cgroupsv2"), ("scg-old", "cgroupsv2")):
        world.ns.nft("add", "set", "inet", "netfence", name, f"{{ type {kind}; }}")
    world.write_login(old)
    parent = world.parent()
    records.ensure_dirs(str(world.run_dir))
    result = {}
    with records.Lock(str(world.run_dir)):                # the hook waits here ...
        opener = threading.Thread(target=lambda: result.update(rc=parent.open()))
        opener.start()
        time.sleep(1.0)                                  # ... after reading the snapshot
        for name in ("uid-old", "ucg-old", "scg-old"):   # the reload's commit
            world.ns.nft("delete", "set", "inet", "netfence", name)
        world.write_login(login_part(world.base, rules=[rule(1, "user", ["web"], [USER])]))
    opener.join(30)
    assert result == {"rc": 0}
    assert world.elements("uid-web") == [UID]
    (record,) = records.list_sessions(str(world.run_dir))
    assert record["policy_id"] == "test-policy"
    assert parent.close() == 0
    assert all(v == [] for v in world.all_elements().values())


def test_missing_snapshot_follows_on_error(world):
    (world.state / "login.marshal").unlink()
    parent = world.parent()
    assert parent.open() == 1                            # default deny
    assert parent.open(args=["on_error=allow"]) == 0
    assert all(v == [] for v in world.all_elements().values())


def test_timeout(world):
    records.ensure_dirs(str(world.run_dir))
    parent = world.parent()
    with records.Lock(str(world.run_dir)):               # a hung gc holds the lock
        start = time.monotonic()
        assert parent.open(args=["timeout_ms=300"]) == 1
        assert parent.open(args=["timeout_ms=300", "on_error=allow"]) == 0
        assert time.monotonic() - start < 5
    assert all(v == [] for v in world.all_elements().values())
    assert records.list_sessions(str(world.run_dir)) == []


@pytest.mark.parametrize("item,value", [
    ("user", "nobody'; nft flush ruleset; '"), ("user", "-nobody"), ("user", "x" * 4096),
    ("user", "nobody\nevent=open result=ok"), ("rhost", "1.2.3.4; reboot"),
    ("rhost", "a" * 4096), ("tty", "pts/1\nx"), ("service", "sshd;id"), ("tty", 'a"b'),
])
def test_hostile_items_change_nothing(world, item, value):
    parent = world.parent()
    assert parent.open(args=["on_error=allow"], **{item: value}) == 1
    assert all(v == [] for v in world.all_elements().values())
    assert not world.run_dir.exists()


# ---- environment --------------------------------------------------------------------

def test_environment_cannot_inject_code(world, tmp_path):
    """PYTHONPATH and LD_PRELOAD in the PAM environment (pam_env user_readenv=1) must
    not run anything; PAM_* look-alikes must not replace pam_exec's own items."""
    marker = tmp_path / "injected"
    evil = tmp_path / "evil"
    (evil / "netfence").mkdir(parents=True)
    payload = f"open({str(marker)!r}, 'a').write('python\\n')\n"
    (evil / "netfence" / "__init__.py").write_text(payload)
    (evil / "netfence" / "hook.py").write_text(payload + "def main(a): return 0\n")
    (evil / "sitecustomize.py").write_text(payload)
    before = [("PYTHONPATH", str(evil)), ("PYTHONSTARTUP", str(evil / "sitecustomize.py")),
              ("PYTHONHOME", str(evil)), ("PAM_USER", "root"), ("PAM_RHOST", "10.0.0.1")]
    library = None
    if os.path.exists(world.hook + ".py"):               # the static launcher is in use
        source = tmp_path / "evil.c"
        source.write_text('#include <stdio.h>\n__attribute__((constructor)) static void f(void)'
                          f'{{ FILE *f = fopen("{marker}", "a"); if (f) {{ fputs("ld\\n", f); '
                          'fclose(f); } }\n')
        library = tmp_path / "evil.so"
        if subprocess.run(["cc", "-shared", "-fPIC", "-o", str(library), str(source)]).returncode:
            library = None
    if library:
        before += [("LD_PRELOAD", str(library)), ("LD_LIBRARY_PATH", str(evil))]
    parent = world.parent()
    assert parent.open(before=before) == 0
    assert not marker.exists(), marker.read_text()
    assert world.elements("uid-web") == [UID]            # the real PAM_USER, not root
    record = records.read_session(str(world.run_dir), parent.key())
    assert record["rhost"] == "192.0.2.10"
    assert parent.close(before=before) == 0
    assert not marker.exists()
    if library is None:
        pytest.skip("LD_PRELOAD part skipped: no static launcher built or no cc")


# ---- lifetimes ----------------------------------------------------------------------

def test_user_elements_stay_while_the_uid_has_processes(world):
    parent = world.parent()
    assert parent.open() == 0
    record = records.read_session(str(world.run_dir), parent.key())
    # nohup-like: a process of the user outlives the session, inside its cgroup
    sleeper = parent.ask(cmd="spawn", argv=["setpriv", f"--reuid={UID}", f"--regid={UID}",
                                            "--clear-groups", "sleep", "60"])["pid"]
    time.sleep(0.2)
    assert parent.close() == 0
    found = world.all_elements()
    assert found["scg-srv"] == []                        # session scope: gone at close
    assert found["uid-web"] == [UID] and len(found["ucg-web"]) == 1
    assert os.path.exists(world.mount + record["cgroup"])  # busy: left for gc
    assert records.read_user(str(world.run_dir), UID) is not None

    world.gc()
    assert world.elements("uid-web") == [UID]            # still running: kept
    parent.ask(cmd="reap", pid=sleeper)
    report = world.gc()
    assert "1 users released" in report
    assert all(v == [] for v in world.all_elements().values())
    assert not os.path.exists(world.mount + record["cgroup"])
    assert records.list_users(str(world.run_dir)) == []


def test_close_priming_leaves_liveness_records_and_elements_as_they_were(world):
    """The static launcher primes the close's cgroup migration with a child born in the
    root cgroup (docs/hook.md, "The migration's wait"). The close must still remove
    exactly what its session added, release the user when nothing of it is left, keep
    the user's elements while a process of the user is, and leave no cgroup, record or
    element behind: closes in a row (each one's child may still be waiting while the
    hook counts the user's tasks), then one with a process left."""
    if not os.path.exists(world.hook + ".py"):
        pytest.skip("no static launcher built: nothing primes the close")
    for _ in range(6):
        parent = world.parent()
        origin = parent.cgroup()
        assert parent.open() == 0
        record = records.read_session(str(world.run_dir), parent.key())
        assert parent.close() == 0
        assert all(v == [] for v in world.all_elements().values())
        assert parent.cgroup() == origin
        assert not os.path.exists(world.mount + record["user_cgroup"])
        assert records.list_sessions(str(world.run_dir)) == []
        assert records.list_users(str(world.run_dir)) == []
        parent.stop()

    first, second = world.parent(), world.parent()
    assert first.open() == 0 and second.open() == 0
    kept = records.read_session(str(world.run_dir), second.key())
    gone = records.read_session(str(world.run_dir), first.key())
    before = world.all_elements()
    sleeper = first.ask(cmd="spawn", argv=["setpriv", f"--reuid={UID}", f"--regid={UID}",
                                           "--clear-groups", "sleep", "60"])["pid"]
    time.sleep(0.2)
    assert first.close() == 0                            # a process left, a session live
    found = world.all_elements()
    assert len(before["scg-srv"]) == 2 and len(found["scg-srv"]) == 1
    assert set(found["scg-srv"]) < set(before["scg-srv"])
    assert {k: v for k, v in found.items() if k != "scg-srv"} == \
        {k: v for k, v in before.items() if k != "scg-srv"}    # the user's: all kept
    assert os.path.exists(world.mount + gone["cgroup"])  # busy: left for gc
    assert [r["key"] for r in records.list_sessions(str(world.run_dir))] == [kept["key"]]
    assert records.read_user(str(world.run_dir), UID)["sessions"] == [kept["key"]]

    first.ask(cmd="reap", pid=sleeper)                   # nothing of the user left
    assert second.close() == 0                           # but the closing application
    assert all(v == [] for v in world.all_elements().values())
    assert records.list_sessions(str(world.run_dir)) == []
    assert records.list_users(str(world.run_dir)) == []
    world.gc()                                           # the first one's empty cgroup
    assert not os.path.exists(world.mount + gone["user_cgroup"])


def test_gc_cleans_up_after_a_killed_pam_application(world):
    parent = world.parent()
    assert parent.open() == 0
    record = records.read_session(str(world.run_dir), parent.key())
    parent.stop(signal.SIGKILL)                          # sshd monitor SIGKILLed
    report = world.gc()
    assert "1 dead sessions closed" in report
    assert all(v == [] for v in world.all_elements().values())
    assert not os.path.exists(world.mount + record["cgroup"])
    assert records.list_sessions(str(world.run_dir)) == []


def test_nested_login_of_the_same_user_shares_the_session(world):
    """`su - $USER` from inside a session: the inner login joins the outer session
    cgroup (it cannot leave the outer restrictions) and its close keeps the outer's."""
    outer = world.parent()
    assert outer.open() == 0
    outer_record = records.read_session(str(world.run_dir), outer.key())
    inner = world.parent()
    with open(f"{world.mount}{outer_record['cgroup']}/cgroup.procs", "w") as handle:
        handle.write(str(inner.pid))
    assert inner.open(service="su-l", rhost=None) == 0
    inner_record = records.read_session(str(world.run_dir), inner.key())
    assert inner_record["cgroup"] == outer_record["cgroup"]
    assert inner_record["created"] is False

    assert inner.close(service="su-l", rhost=None) == 0
    found = world.all_elements()
    assert len(found["scg-srv"]) == 1 and found["uid-web"] == [UID]
    assert inner.cgroup() == outer_record["cgroup"]      # not moved: not its cgroup

    with open(f"{world.mount}/cgroup.procs", "w") as handle:
        handle.write(str(inner.pid))                     # as if su had exited
    assert outer.close() == 0
    assert all(v == [] for v in world.all_elements().values())
    assert not os.path.exists(world.mount + outer_record["cgroup"])


def test_two_sessions_of_one_user(world):
    first, second = world.parent(), world.parent()
    assert first.open() == 0 and second.open() == 0
    assert len(world.elements("scg-srv")) == 2
    assert first.close() == 0
    assert len(world.elements("scg-srv")) == 1
    assert world.elements("uid-web") == [UID]            # the other session is live
    assert second.close() == 0
    assert all(v == [] for v in world.all_elements().values())


def test_real_pam_exec_with_lookalikes_from_pam_env(world, tmp_path):
    """Through the real pam_exec (pamtester drives a throwaway PAM service): items
    that pam_env put in the PAM environment do not replace pam_exec's own."""
    import shutil
    if not shutil.which("pamtester"):
        pytest.skip("pamtester not installed (Debian package pamtester)")
    envfile = tmp_path / "pam-env"
    envfile.write_text("PAM_USER=root\nPAM_RHOST=10.9.9.9\n")
    service = f"nftest-{secrets.token_hex(4)}"
    pam_file = f"/etc/pam.d/{service}"
    with open(pam_file, "x") as handle:
        handle.write("auth required pam_permit.so\naccount required pam_permit.so\n"
                     f"session required pam_env.so envfile={envfile} conffile=/dev/null\n"
                     f"session required pam_exec.so seteuid quiet {world.hook} "
                     + " ".join(world.args) + "\n")
    try:
        proc = world.ns.popen(["pamtester", service, USER, "open_session"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out
        # pamtester exits after open: its session is now one whose application is gone
        assert world.elements("uid-web") == [UID]        # nobody's, not root's
        (record,) = records.list_sessions(str(world.run_dir))
        assert record["user"] == USER and record["rhost"] == "" and record["service"] == service
        assert "1 dead sessions closed" in world.gc()
        assert all(v == [] for v in world.all_elements().values())
    finally:
        os.unlink(pam_file)
