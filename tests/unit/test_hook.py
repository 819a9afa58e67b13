"""The PAM hook's input handling, without root: arguments, PAM items, the environment
block, the snapshot loader, log lines, and the hook program text."""

import marshal
import os
import stat

import pytest

from netfence import accounts, formats, hook, hooklog, hookstub, pamitems
from netfence.errors import HookInputError, StateError, UsageError


@pytest.fixture(autouse=True)
def keep_test_environment(monkeypatch):
    """hook.main() empties its process environment of everything but PAM_* (tested in
    a subprocess below): not pytest's."""
    monkeypatch.setattr(hook, "_clean_environment", lambda: None)


# ---- arguments --------------------------------------------------------------------

def test_defaults():
    opts, warnings = hook.parse_args([])
    assert opts == {"state_dir": "/var/lib/netfence", "run_dir": "/run/netfence",
                    "on_error": None, "timeout_ms": None, "debug": False, "fastpath": "c"}
    assert warnings == []


def test_known_arguments():
    opts, warnings = hook.parse_args(["state_dir=/s/", "run_dir=/r", "on_error=allow",
                                      "timeout_ms=150", "debug", "fastpath=python"])
    assert warnings == []
    assert opts == {"state_dir": "/s", "run_dir": "/r", "on_error": "allow",
                    "timeout_ms": 150, "debug": True, "fastpath": "python"}


@pytest.mark.parametrize("arg", [
    "state_dir=relative", "run_dir=", "on_error=maybe", "timeout_ms=0", "timeout_ms=-5",
    "timeout_ms=1e3", "timeout_ms=99999999", "timeout_ms=١٢", "fastpath=rust", "verbose",
    "state_dir=/a\nb", "=", "",
])
def test_bad_arguments_are_ignored_with_a_warning(arg):
    opts, warnings = hook.parse_args([arg])
    defaults, _ = hook.parse_args([])
    assert opts == defaults
    assert len(warnings) == 1 and "\n" not in warnings[0]


# ---- PAM items --------------------------------------------------------------------

GOOD = {"user": "alice", "service": "sshd", "tty": "/dev/pts/3", "rhost": "192.0.2.7"}


@pytest.mark.parametrize("field,value", [
    ("user", "alice.smith@EXAMPLE.org"), ("user", "a_b-c"), ("user", "u" * 256),
    ("service", "su-l"), ("service", "cron"), ("tty", ""), ("tty", "ssh"), ("tty", ":0"),
    ("rhost", ""), ("rhost", "host-1.example.org"), ("rhost", "fe80::1%eth0"),
    ("rhost", "[2001:db8::1]"), ("rhost", "::ffff:10.0.0.1"),
])
def test_valid_items(field, value):
    pamitems.validate_items(**dict(GOOD, **{field: value}))


HOSTILE = ["x'; drop", 'a"b', "a;b", "a\nb", "a b", "a\tb", "a\0b", "\x1b[31m", "é",
           "$(id)", "`id`", "a\\b"]


@pytest.mark.parametrize("field,value", [
    ("user", ""), ("user", "u" * 257), ("user", "é" * 129), ("user", "a" * 4096),
    ("service", ""), ("service", "s" * 65), ("service", "a/b"),
    ("tty", "t" * 65), ("rhost", "h" * 256), ("rhost", "[]"), ("rhost", "a/b"),
    ("rhost", "[::1"), ("rhost", "a[::1]"),
] + [(f, v) for f in ("service", "rhost") for v in HOSTILE]
  + [("user", v) for v in ("a\nb", "a\tb", "a\0b", "\x1b[31m", "a\x7fb", "a\x85b", "\n")]
  # a tty may hold $ ( ) ` is refused: PAM items are data, never shell or rule text
  + [("tty", v) for v in HOSTILE if v != "$(id)"])
def test_invalid_items_are_refused(field, value):
    with pytest.raises(HookInputError) as info:
        pamitems.validate_items(**dict(GOOD, **{field: value}))
    message = str(info.value)
    assert "\n" not in message and len(message) < 160


@pytest.mark.parametrize("name", [
    "rtuser5$", "DOMAIN\\user", "a+b", "-rf", "--help", "é", "x'; drop", 'a"b', "a;b",
    "a b", "$(id)", "`id`", "u" * 256, "é" * 128, "user@EXAMPLE.ORG",
])
def test_any_name_nss_could_resolve_passes_validation(name):
    """PAM_USER only ever reaches getpwnam: refused is only what cannot be a name."""
    pamitems.validate_items(**dict(GOOD, user=name))


@pytest.mark.parametrize("name", ["nf-no-such-account$", "NOSUCHDOM\\nobody9"])
def test_a_name_nss_does_not_know_is_invalid_input(name):
    with pytest.raises(HookInputError, match="no such account"):
        accounts.lookup_account(name)
    assert accounts.lookup_account("root").pw_uid == 0


# ---- the environment block --------------------------------------------------------

def env(*pairs):
    return [f"{k}={v}".encode() for k, v in pairs]


def test_pam_exec_items_are_taken_from_the_trailing_block():
    entries = env(("LANG", "C"), ("PAM_SERVICE", "sshd"), ("PAM_USER", "alice"),
                  ("PAM_TTY", "ssh"), ("PAM_RHOST", "192.0.2.1"), ("PAM_TYPE", "open_session"))
    items, ignored = pamitems.pam_items(entries)
    assert items == {"PAM_TYPE": "open_session", "PAM_SERVICE": "sshd", "PAM_USER": "alice",
                     "PAM_TTY": "ssh", "PAM_RHOST": "192.0.2.1"}
    assert ignored == []


def test_lookalikes_from_the_pam_environment_are_ignored():
    """pam_env (user_readenv=1) can put PAM_* names into the PAM environment, which
    pam_exec places before its own items; os.environ would keep the first copy."""
    entries = env(("PAM_RHOST", "10.0.0.1"), ("PAM_USER", "root"), ("PAM_TYPE", "x"),
                  ("PAM_SERVICE", "su-l"), ("PAM_USER", "alice"), ("PAM_TTY", "/dev/pts/1"),
                  ("PAM_RUSER", "bob"), ("PAM_TYPE", "open_session"))
    items, ignored = pamitems.pam_items(entries)
    assert items["PAM_USER"] == "alice" and items["PAM_TYPE"] == "open_session"
    assert "PAM_RHOST" not in items                      # su sets none: not 10.0.0.1
    assert ignored == ["PAM_RHOST", "PAM_TYPE", "PAM_USER"]


def test_block_walk_stops_at_an_out_of_order_name():
    entries = env(("PAM_USER", "evil"), ("PAM_SERVICE", "sshd"), ("PAM_TYPE", "open_session"))
    items, _ = pamitems.pam_items(entries)
    assert "PAM_USER" not in items                       # would come after SERVICE


def test_no_pam_type_means_nothing():
    assert pamitems.pam_items(env(("PAM_USER", "a"))) == ({}, [])


def run_main(monkeypatch, entries, argv=("state_dir=/nonexistent", "on_error=allow")):
    lines = []
    monkeypatch.setattr(hooklog, "syslog", lambda prio, text: lines.append((prio, text)))
    monkeypatch.setattr(pamitems, "read_environment", lambda: entries)
    return hook.main(list(argv)), lines


@pytest.mark.parametrize("entries,problem", [
    (env(("PAM_SERVICE", "sshd"), ("PAM_USER", "a"), ("PAM_TYPE", "auth")), "PAM_TYPE 'auth'"),
    (env(("PAM_SERVICE", "sshd"), ("PAM_USER", "a")), "no PAM_TYPE"),
    ([], "no PAM_TYPE"),
    (None, "cannot read the environment"),
    # a PAM_TYPE that is not the last entry: the block was cut or rearranged
    (env(("PAM_SERVICE", "sshd"), ("PAM_USER", "a"), ("PAM_TYPE", "open_session"),
         ("PAM_X1", "1")), "does not end with pam_exec's PAM_TYPE"),
])
def test_main_never_exits_0_for_a_session_it_did_not_act_on(monkeypatch, entries, problem):
    """Whatever on_error says: no session this hook can act on is a failure."""
    code, lines = run_main(monkeypatch, entries)
    assert code == 1
    ((prio, text),) = lines
    assert prio == hooklog.LOG_ERR and "result=invalid" in text and problem in text, text


def test_flooded_environment_keeps_pam_exec_items_and_bounds_the_warnings():
    flood = [(f"PAM_X{i}", "1") for i in range(500)] + [("PAM_USER", "root")]
    entries = env(*flood, ("PAM_SERVICE", "su-l"), ("PAM_USER", "alice"),
                  ("PAM_TYPE", "open_session"))
    items, ignored = pamitems.pam_items(entries)
    assert items == {"PAM_TYPE": "open_session", "PAM_SERVICE": "su-l", "PAM_USER": "alice"}
    assert len(ignored) == 501
    warnings = pamitems.ignored_warnings(ignored)
    assert len(warnings) == pamitems.MAX_IGNORED_LINES + 1
    assert warnings[-1] == "PAM environment sets 493 more PAM_* names: ignored"
    assert pamitems.environment_problem(entries, items["PAM_TYPE"]) is None


def test_main_refuses_hostile_items_whatever_on_error(monkeypatch):
    lines = []
    monkeypatch.setattr(hooklog, "syslog", lambda prio, text: lines.append((prio, text)))
    monkeypatch.setattr(pamitems, "read_environment",
                        lambda: env(("PAM_SERVICE", "sshd"), ("PAM_USER", "a;reboot"),
                                    ("PAM_TYPE", "open_session")))
    assert hook.main(["on_error=allow", "state_dir=/nonexistent"]) == 1
    assert len(lines) == 1 and "result=invalid" in lines[0][1]
    assert "reboot" in lines[0][1] and "\n" not in lines[0][1]


def test_missing_snapshot_follows_on_error(monkeypatch, tmp_path):
    lines = []
    monkeypatch.setattr(hooklog, "syslog", lambda prio, text: lines.append(text))
    monkeypatch.setattr(pamitems, "read_environment",
                        lambda: env(("PAM_SERVICE", "sshd"), ("PAM_USER", "nobody"),
                                    ("PAM_TYPE", "open_session")))
    assert hook.main([f"state_dir={tmp_path}"]) == 1
    assert hook.main([f"state_dir={tmp_path}", "on_error=allow"]) == 0
    assert "result=refused" in lines[0] and "result=allowed-after-error" in lines[1]


def test_log_fields_cannot_break_the_line():
    assert hooklog.field("") == "-"
    assert hooklog.field("a b") == "'a b'"
    assert "\n" not in hooklog.field("a\nb=c")
    assert hooklog.field("user:a,b") == "user:a,b"


def test_syslog_without_dev_log_falls_back_to_the_kernel_log(tmp_path, monkeypatch):
    """No /dev/log (no syslog daemon), or one that refuses: the line goes to the kernel
    log, with its priority; nowhere at all only when /dev/kmsg cannot be written."""
    import socket
    kmsg = tmp_path / "kmsg"
    kmsg.write_bytes(b"")
    monkeypatch.setattr(hooklog, "SYSLOG_SOCKET", str(tmp_path / "no-such-socket"))
    monkeypatch.setattr(hooklog, "KMSG", str(kmsg))
    assert hooklog.syslog(hooklog.LOG_ERR, "event=open result=refused") == "kmsg"
    assert kmsg.read_bytes() == f"<83>netfence[{os.getpid()}]: event=open result=refused\n".encode()

    refusing = tmp_path / "refusing"                      # bound, then closed: ECONNREFUSED
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(refusing))
    sock.close()
    monkeypatch.setattr(hooklog, "SYSLOG_SOCKET", str(refusing))
    assert hooklog.syslog(hooklog.LOG_INFO, "event=close " + "x" * 5000) == "kmsg"
    last = kmsg.read_bytes().splitlines()[-1]
    assert last.startswith(b"<86>netfence[") and len(last) < 1024

    monkeypatch.setattr(hooklog, "KMSG", str(tmp_path / "no-such-kmsg"))
    assert hooklog.syslog(6, "event=test") is None           # nowhere: no exception


def test_log_line_reaches_the_kernel_log_through_main(tmp_path, monkeypatch):
    kmsg = tmp_path / "kmsg"
    kmsg.write_bytes(b"")
    monkeypatch.setattr(hooklog, "SYSLOG_SOCKET", str(tmp_path / "no-such-socket"))
    monkeypatch.setattr(hooklog, "KMSG", str(kmsg))
    monkeypatch.setattr(pamitems, "read_environment", lambda: env(("PAM_USER", "a")))
    assert hook.main([]) == 1
    text = kmsg.read_text()
    assert text.startswith("<83>netfence[") and "result=invalid" in text


def test_syslog_line_format(tmp_path, monkeypatch):
    import socket
    path = str(tmp_path / "log")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    monkeypatch.setattr(hooklog, "SYSLOG_SOCKET", path)
    try:
        hooklog.syslog(hooklog.LOG_ERR, "event=open result=ok")
        data = server.recv(4096).decode()
    finally:
        server.close()
    assert data.startswith("<83>")                       # authpriv.err
    assert f" netfence[{os.getpid()}]: event=open result=ok" in data


# ---- the time bound ---------------------------------------------------------------

ALARM_SCRIPT = """
import signal, sys, time
sys.path.insert(0, {path!r})
signal.signal(signal.SIGALRM, signal.SIG_IGN)          # what a login program can leave
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM])
from netfence import hook
if {own!r}:
    hook._own_alarm()
budget = hook._Budget(time.monotonic())
budget.arm(200)
start = time.monotonic()
try:
    time.sleep(3)
    print("slept", round(time.monotonic() - start, 2))
except hook.HookTimeout:
    print("timeout", round(time.monotonic() - start, 2))
"""


@pytest.mark.parametrize("own", [True, False])
def test_inherited_blocked_sigalrm_is_undone(own):
    """The hook unblocks SIGALRM and takes it back from SIG_IGN (installs without the
    launcher rely on it); without that, the budget is not kept (the control)."""
    import subprocess
    import sys
    import netfence
    path = os.path.dirname(os.path.dirname(netfence.__file__))
    out = subprocess.run([sys.executable, "-I", "-S", "-c",
                          ALARM_SCRIPT.format(path=path, own=own)],
                         capture_output=True, text=True, timeout=30, env={})
    word, seconds = out.stdout.split()
    if own:
        assert word == "timeout" and float(seconds) < 1.0, out
    else:
        assert word == "slept", out


CLEAN_SCRIPT = """
import ctypes, sys, time
sys.path.insert(0, {path!r})
from netfence import hook
before = time.localtime().tm_gmtoff
hook._clean_environment()
getenv = ctypes.CDLL(None).getenv
getenv.restype = ctypes.c_char_p
print(before, time.localtime().tm_gmtoff, getenv(b"TZ"), getenv(b"LDAPRC"),
      getenv(b"PAM_USER"), sorted(__import__("posix").environ))
"""


def test_only_pam_variables_are_left_in_the_process_environment():
    """Without the launcher the whole PAM environment reaches the hook: TZ (a rule's
    time window), LDAPRC (an in-process LDAP lookup) and the like are dropped before
    libc or an NSS module can read them."""
    import subprocess
    import sys
    import netfence
    path = os.path.dirname(os.path.dirname(netfence.__file__))
    out = subprocess.run([sys.executable, "-I", "-S", "-c", CLEAN_SCRIPT.format(path=path)],
                         capture_output=True, text=True, timeout=30, check=True,
                         env={"TZ": "NFT-13", "LDAPRC": "/home/u/ldaprc", "PAM_USER": "a"})
    before, after, tz, ldaprc, user, names = out.stdout.split(" ", 5)
    assert before == str(13 * 3600) and after != before
    assert (tz, ldaprc, user) == ("None", "None", "b'a'")
    assert names.strip() == "[b'PAM_USER']"


def test_launcher_pipe_is_taken_only_when_last_and_a_pipe(tmp_path):
    read_end, write_end = os.pipe()
    regular = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    try:
        argv, fd = hook.launcher_pipe(["debug", f"launcher_fd={write_end}"])
        assert (argv, fd) == (["debug"], write_end)
        assert hook.launcher_pipe(["debug", f"launcher_fd={regular}"]) == (["debug"], -1)
        assert hook.launcher_pipe(["launcher_fd=99999", "debug"])[1] == -1
        assert hook.launcher_pipe(["launcher_fd=1"]) == ([], -1)
        assert hook.launcher_pipe([]) == ([], -1)
        assert hook.tell_launcher(write_end, 350, "allow") == -1
        assert os.read(read_end, 100) == b"timeout_ms=350 on_error=allow\n"
        assert os.read(read_end, 100) == b""            # closed after the one report
    finally:
        os.close(read_end)
        os.close(regular)


# ---- the snapshot -----------------------------------------------------------------

def login_part():
    return {"format": formats.LOGIN, "policy_id": "x", "settings": {}, "profiles": {}, "rules": []}


def test_load_login(tmp_path):
    (tmp_path / "login.marshal").write_bytes(marshal.dumps(login_part()))
    if os.geteuid() != 0:
        pytest.skip("the snapshot must be root's: only root can make one")
    assert hook.load_login(str(tmp_path))["policy_id"] == "x"


@pytest.mark.parametrize("content", [b"", b"garbage", marshal.dumps([1, 2]),
                                     marshal.dumps({"format": 2}),
                                     marshal.dumps(dict(login_part(), rules={}))])
def test_damaged_snapshots_are_refused(tmp_path, content):
    (tmp_path / "login.marshal").write_bytes(content)
    with pytest.raises(StateError):
        hook.load_login(str(tmp_path))


def test_snapshot_writable_by_others_is_refused(tmp_path):
    path = tmp_path / "login.marshal"
    path.write_bytes(marshal.dumps(login_part()))
    path.chmod(0o666)
    with pytest.raises(StateError, match="writable only by root"):
        hook.load_login(str(tmp_path))


def test_snapshot_fifo_does_not_block(tmp_path):
    os.mkfifo(tmp_path / "login.marshal")
    with pytest.raises(StateError, match="regular file"):
        hook.load_login(str(tmp_path))


def test_snapshot_symlink_is_refused(tmp_path):
    (tmp_path / "real").write_bytes(marshal.dumps(login_part()))
    (tmp_path / "login.marshal").symlink_to(tmp_path / "real")
    with pytest.raises(StateError):
        hook.load_login(str(tmp_path))


def test_groups_are_looked_up_lazily():
    import pwd
    root = pwd.getpwuid(0)
    groups = accounts.Groups(root.pw_name, root.pw_gid)
    assert groups._names is None
    assert "root" in groups and groups._names is not None


# ---- the hook program -------------------------------------------------------------

def test_script_shebang_is_one_argument():
    text = hookstub.script_text("/usr/bin/python3", ["/opt/netfence/lib"])
    first = text.splitlines()[0]
    assert first == "#!/usr/bin/python3 -IS"
    assert "sys.path[:0] = ['/opt/netfence/lib']" in text
    assert text.rstrip().endswith("from netfence.hook import run\nrun(sys.argv[1:])")
    compile(text, "hook", "exec")


def test_unusable_interpreter_paths():
    with pytest.raises(UsageError):
        hookstub.script_text("/opt/my python/bin/python3", [])
    with pytest.raises(UsageError):
        hookstub.script_text("/" + "p" * 300, [])


def test_write_hook_without_launcher(tmp_path, monkeypatch):
    # the interpreter and package may be a user's here (tests run without root too)
    monkeypatch.setattr(hookstub, "check_trusted", lambda path: None)
    path = tmp_path / "hook"
    written = hookstub.write_hook(str(path), launcher=False)
    assert written == [str(path)]
    mode = path.stat().st_mode
    assert stat.S_IMODE(mode) == 0o755
    assert path.read_text().startswith("#!")


def test_untrusted_directories_are_refused(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root-owned directories to compare with")
    shared = tmp_path / "shared"
    shared.mkdir()
    hookstub.check_trusted(str(shared))
    shared.chmod(0o777)
    with pytest.raises(UsageError, match="writable by others"):
        hookstub.check_trusted(str(shared))
    shared.chmod(0o755)
    os.chown(shared, 65534, 65534)
    with pytest.raises(UsageError, match="not root's"):
        hookstub.check_trusted(str(shared))
