"""`netfence doctor`'s last check: one real login through PAM.

A throwaway system user, a temporary PAM service (/etc/pam.d/netfence-doctor-TAG:
pam_permit for auth and account, then the hook line installed in the services, with
state_dir= and run_dir= of a temporary directory) and a temporary policy that rejects
one loopback TCP port for that user. In a network namespace of its own (so the host's
table and ruleset are never touched), a child process reloads that policy, opens the
session with python-pam (the hook runs through pam_exec exactly as at a real login),
probes from inside the session cgroup as the user (the denied port must be refused,
another one must connect), closes the session and checks that the hook left no
record, cgroup or set element. Then the user, the service, the directory and the
cgroup base are removed and their absence checked.
"""

import importlib.util
import json
import os
import pwd
import secrets
import shutil
import subprocess
import sys

from . import doctor_pam
from .fsutil import remove_quietly
from .doctor import SYSTEM_PAM_DIR     # doctor imports this module only when it runs

POLICY = """[settings]
cgroup_base = "{base}"

[profile.doctor-probe]
egress = [ {{ action = "reject", proto = "tcp", ports = [{port}], to = ["loopback"] }} ]

[[rule]]
users = ["{user}"]
profiles = ["doctor-probe"]
scope = "session"
"""
DENIED_PORT, ALLOWED_PORT = 47391, 47392


def service_text(line, state_dir, run_dir, user):
    """The temporary PAM service: the installed hook line, pointed at our dirs. It
    lets in the throwaway user alone (pam_succeed_if before pam_permit): for the
    second it exists, it is no password-less door for any other account."""
    args = [a for a in line.args if not a.startswith(("state_dir=", "run_dir="))]
    hook = " ".join(["session", line.control, line.module, *args,
                     f"state_dir={state_dir}", f"run_dir={run_dir}"])
    only = f"pam_succeed_if.so quiet user = {user}"
    return ("# netfence doctor: a temporary service, removed when the check ends\n"
            f"auth     requisite {only}\nauth     required pam_permit.so\n"
            f"account  requisite {only}\naccount  required pam_permit.so\n"
            f"password required pam_deny.so\n{hook}\n")


def check_login(pam_dir):
    """[(name, ok, detail, fix)] of the real login check."""
    line = doctor_pam.installed_line(pam_dir)
    if line is None:
        return [("login", False, "no hook line in any session service to log in with",
                 "wire the hook (see the pam lines above), then run doctor again")]
    if importlib.util.find_spec("pam") is None:        # python-pam drives the login
        return [("login", False, "python-pam is not installed in netfence's Python",
                 "pip install python-pam==2.1.0 into netfence's venv, or --no-login")]
    tag = secrets.token_hex(4)
    names = {"user": f"nfdoctor{tag}", "service": f"netfence-doctor-{tag}",
             "root": f"/run/netfence-doctor-{tag}", "base": f"netfence-doctor-{tag}",
             "made": []}
    try:
        result = _run(line, names)
    except (OSError, subprocess.CalledProcessError) as err:
        result = {"ok": False, "detail": f"cannot set the login up: {err}",
                  "fix": "run netfence doctor as root (or with --no-login)"}
    finally:
        left = _clean(names)
    ok = result.get("ok", False) and not left
    detail = result.get("detail", "") + (f"; left behind: {', '.join(left)}" if left else "")
    return [("login", ok, detail, "" if ok else result.get("fix", "see docs/doctor.md"))]


def _run(line, names):
    """Create the user, the directory and the service (each noted in names["made"]
    once it exists, so that cleaning never removes what someone else had), then run
    the child in a new network namespace; its JSON verdict."""
    root, made = names["root"], names["made"]
    os.mkdir(root, 0o755)                    # fails on an existing one: not ours
    made.append("root")
    for sub in ("/etc", "/etc/netfence.d", "/state", "/run"):
        os.mkdir(root + sub, 0o755)
    os.chmod(root, 0o755)
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                    "/usr/sbin/nologin", names["user"]], check=True, capture_output=True)
    made.append("user")
    with open(f"{root}/etc/netfence.toml", "w") as handle:
        handle.write(POLICY.format(base=names["base"], port=DENIED_PORT, user=names["user"]))
    fd = os.open(os.path.join(SYSTEM_PAM_DIR, names["service"]),
                 os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    made.append("service")
    with os.fdopen(fd, "w") as handle:
        handle.write(service_text(line, f"{root}/state", f"{root}/run", names["user"]))
    request = {"root": root, "service": names["service"], "user": names["user"],
               "base": names["base"]}
    made.append("base")                      # the hook makes it, under our unique name
    try:
        proc = subprocess.run(["unshare", "--net", "--", sys.executable, "-m",
                               "netfence.doctor_login", json.dumps(request)],
                              capture_output=True, text=True, timeout=90)
    except subprocess.TimeoutExpired:
        return {"ok": False, "detail": "the login did not finish in 90 s",
                "fix": "look at the hook's log lines (journalctl -t netfence / dmesg)"}
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"ok": False, "detail": f"the login child failed: {proc.stderr.strip()[-300:]}",
                "fix": "see docs/doctor.md"}


def _clean(names):
    """Remove what the check made; the names of what could not be removed."""
    made = names["made"]
    service = os.path.join(SYSTEM_PAM_DIR, names["service"])
    if "service" in made:
        remove_quietly(service)      # one that stays is named below
    if "user" in made and not _no_user(names["user"]):
        # no process of it should be left (the probe exits); if one is, userdel
        # refuses and the user is named as left behind
        subprocess.run(["userdel", names["user"]], capture_output=True)
    if "root" in made:
        shutil.rmtree(names["root"], ignore_errors=True)
    from .cgroups import cgroup2_mount
    base = os.path.join(cgroup2_mount(), names["base"])
    if "base" in made:
        for path in sorted((d for d, _, _ in os.walk(base)), key=len, reverse=True):
            try:
                os.rmdir(path)
            except OSError:
                pass
    checks = (("user", f"user {names['user']}", lambda: _no_user(names["user"])),
              ("service", service, lambda: not os.path.exists(service)),
              ("root", names["root"], lambda: not os.path.exists(names["root"])),
              ("base", f"cgroup {base}", lambda: not os.path.exists(base)))
    return [what for kind, what, gone in checks if kind in made and not gone()]


def _no_user(name):
    try:
        pwd.getpwnam(name)
        return False
    except KeyError:
        return True


if __name__ == "__main__":
    from .doctor_login_child import main
    sys.exit(main(json.loads(sys.argv[1])))
