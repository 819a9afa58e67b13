"""Drive one PAM session with python-pam 2.1.0; used by login.PamSession.

    python login_driver.py SERVICE USER [--rhost H] [--tty T] [--ruser U]

Runs pam_start/authenticate/acct_mgmt/setcred (the service's auth and account stacks,
pam_permit in test services), sets PAM_RHOST/PAM_TTY/PAM_RUSER, installs a long-lived
conversation function, calls pam_open_session and prints one line
``open CODE PID REASON``. Then it reads commands from stdin, one per line:
``close`` (pam_close_session, prints ``closed CODE REASON``, then pam_end and exit) or
``env`` (prints ``env NAME=VALUE`` lines of the PAM environment, then ``env-end``).
EOF on stdin acts like ``close``. Messages that modules send through the conversation
are printed as ``msg STYLE TEXT``.

Run as a separate process so that it can be started inside a network namespace
(`nsenter --net=...`): pam_exec programs run in the namespace of the PAM application.

Why our own conversation: python-pam's conversation callback is a closure that is freed
when authenticate() returns; a session module that talks (pam_exec `stdout` or without
`quiet`, pam_motd, ...) would then call freed memory and crash the process.
"""

import argparse
import os
import sys
from ctypes import POINTER, addressof, c_char, c_char_p, c_void_p, cast, memmove, sizeof

import pam
from pam import __internals as pi


def _print(*words):
    sys.stdout.write(" ".join(str(w) for w in words) + "\n")
    sys.stdout.flush()


def _conversation(n_messages, messages, p_response, app_data):
    calloc = pi.PamAuthenticator.calloc
    addr = calloc(n_messages, sizeof(pi.PamResponse))
    if not addr:
        return pi.PAM_BUF_ERR
    response = cast(addr, POINTER(pi.PamResponse))
    for i in range(n_messages):
        msg = messages[i].contents
        text = (msg.msg or b"").decode("utf-8", "replace")
        _print("msg", msg.msg_style, text.replace("\n", "\\n"))
        if msg.msg_style in (pi.PAM_PROMPT_ECHO_OFF, pi.PAM_PROMPT_ECHO_ON):
            empty = calloc(1, sizeof(c_char))     # PAM frees the answer
            memmove(empty, b"\0", 1)
            response[i].resp = empty
        response[i].resp_retcode = 0
    p_response[0] = response
    return pi.PAM_SUCCESS


# module level: alive as long as the process
CONV_FUNC = pi.conv_func(_conversation)
CONV = pi.PamConv(CONV_FUNC, c_void_p(0))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("service")
    parser.add_argument("user")
    parser.add_argument("--rhost", default="")
    parser.add_argument("--tty", default="")
    parser.add_argument("--ruser", default="")
    args = parser.parse_args()

    p = pam.pam()
    if not p.authenticate(args.user, "", service=args.service, call_end=False):
        _print("open", p.code if p.code else pi.PAM_SYSTEM_ERR, os.getpid(),
               f"authenticate: {p.reason}")
        if p.handle:
            p.end()
        return 1
    h = p.handle
    rc = p.pam_set_item(h, pi.PAM_CONV, addressof(CONV))   # PAM copies the struct
    for item, value in ((pi.PAM_RHOST, args.rhost), (pi.PAM_TTY, args.tty),
                        (pi.PAM_RUSER, args.ruser)):
        if value and rc == pi.PAM_SUCCESS:
            rc = p.pam_set_item(h, item, c_char_p(value.encode()))   # PAM copies the string
    if rc != pi.PAM_SUCCESS:
        _print("open", rc, os.getpid(), "pam_set_item failed")
        p.end()
        return 1

    rc = p.open_session()
    _print("open", rc, os.getpid(), p.reason)
    if rc != pi.PAM_SUCCESS:
        p.end()
        return 1

    while True:
        line = sys.stdin.readline()
        cmd = line.strip()
        if cmd == "env":
            for key, value in sorted((p.getenvlist() or {}).items()):
                _print("env", f"{key}={value}")
            _print("env-end")
            continue
        if cmd in ("close", "") or not line:
            rc = p.close_session()
            _print("closed", rc, p.reason)
            p.end()
            return 0 if rc == pi.PAM_SUCCESS else 1
        _print("error", f"unknown command {cmd!r}")


if __name__ == "__main__":
    sys.exit(main())
