"""Real logins and logouts through netfence.sessions (the hook's own open/close), run
inside a test's network namespace, with a sleeping process as the PAM application.

open_session/close_session write the session records and send the elements exactly as
the hook does; only the matching is left out: the caller names the profiles.
"""

import json
import marshal
import os
import sys

OPEN = r"""
import json, marshal, sys
from netfence import sessions
state_dir, run_dir, req = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
with open(state_dir + "/login.marshal", "rb") as handle:
    login = marshal.loads(handle.read())
info = {"user": req["user"], "uid": req["uid"], "service": "sshd", "rhost": "", "tty": "ssh"}
record = sessions.open_session(run_dir, login, info, req["user_profiles"],
                               req["session_profiles"], ppid=req["ppid"])
print(json.dumps({"key": record["key"]}))
"""

CLOSE = r"""
import sys
from netfence import sessions
print(sessions.close_session(sys.argv[1], sys.argv[2])["result"])
"""


def login(nf, uid, user_profiles=(), session_profiles=(), user="nobody", check=True,
          app_uid=None):
    """Open a session for uid with a fresh PAM application (run as app_uid, as su's
    real uid is the user's; default root); returns (key, process) or, with
    check=False, the CompletedProcess of a failed attempt."""
    app = nf.spawn(["sleep", "infinity"], uid=app_uid)
    req = {"user": user, "uid": uid, "user_profiles": list(user_profiles),
           "session_profiles": list(session_profiles), "ppid": app.pid}
    out = nf.netns.run([sys.executable, "-c", OPEN, nf.state_dir, nf.run_dir,
                        json.dumps(req)], check=False)
    if out.returncode != 0:
        app.kill()
        if check:
            raise AssertionError(f"login failed: {out.stderr}")
        return out
    return json.loads(out.stdout)["key"], app


def logout(nf, key):
    return nf.netns.run([sys.executable, "-c", CLOSE, nf.run_dir, key]).stdout.strip()


def login_part(nf):
    with open(os.path.join(nf.state_dir, "login.marshal"), "rb") as handle:
        return marshal.loads(handle.read())
