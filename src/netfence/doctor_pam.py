"""`netfence doctor`'s PAM checks: is the hook in the session stack of every service
that opens sessions, reachable, and safe against pam_env's user_readenv. Pure apart
from reading the PAM files.

A service's session stack is its file's `session` lines with `@include FILE`,
`session include FILE` and `session substack FILE` expanded in place (what libpam
does; a substack's `done`/`die` stay inside it, which only makes the skip check
below stricter than PAM for them).
"""

import os
import re
from dataclasses import dataclass

HOOK_NAME = "netfence-hook"
# Programs that call pam_open_session on Debian (others may be wired by hand, but a
# file such as chfn or passwd includes common-session without ever opening one).
SESSION_SERVICES = ("sshd", "login", "su", "su-l", "sudo", "sudo-i", "cron", "atd",
                    "runuser", "runuser-l", "systemd-user", "lightdm", "gdm-password",
                    "sddm", "xrdp-sesman")
# runuser's only auth module is pam_rootok: only root opens these sessions, and root
# is past netfence anyway (it can flush the table). Debian's runuser stack does not
# include common-session, so pam-auth-update does not wire it: said, not a problem.
ROOT_ONLY_SERVICES = ("runuser", "runuser-l")
MAX_DEPTH = 16                      # an include loop is a broken file, not a hang
_JUMP = re.compile(r"(\w+)=(\d+|done|die|ok|ignore|bad|reset)")


@dataclass(frozen=True)
class PamLine:
    where: str            # file:line
    control: str          # required, optional, [success=1 default=ignore], ...
    module: str           # pam_exec.so
    args: tuple
    index: int = 0        # position in its own file's session lines (for jumps)
    file: str = ""

    @property
    def is_hook(self):
        return os.path.basename(self.module) == "pam_exec.so" and any(
            os.path.basename(arg) == HOOK_NAME for arg in self.args)

    @property
    def hook_path(self):
        return next(arg for arg in self.args if os.path.basename(arg) == HOOK_NAME)

    @property
    def reads_user_env(self):
        return os.path.basename(self.module) == "pam_env.so" and "user_readenv=1" in self.args


def split_line(text):
    """(type, control, module, args) of one PAM line, or None for a blank/comment."""
    text = text.split("#", 1)[0].strip()
    if not text:
        return None
    if text.startswith("@include"):
        return "@include", "", text.split()[1] if len(text.split()) > 1 else "", ()
    # fields are separated by any whitespace: pam-auth-update writes tabs
    kind, rest = (text.split(None, 1) + [""])[:2]
    if rest.startswith("["):
        control, _, rest = rest[1:].partition("]")
        control = f"[{control.strip()}]"
    else:
        control, rest = (rest.split(None, 1) + [""])[:2]
    words = rest.split()
    return kind.lstrip("-"), control.strip(), words[0] if words else "", tuple(words[1:])


def session_stack(pam_dir, name, depth=0):
    """The expanded session lines of /etc/pam.d/NAME (or pam_dir); raises OSError when
    the file (or an included one) cannot be read, ValueError on an include loop."""
    if depth > MAX_DEPTH:
        raise ValueError(f"includes nested deeper than {MAX_DEPTH} at {name}")
    path = os.path.join(pam_dir, name)
    with open(path) as handle:
        text = handle.read()
    out, index = [], 0
    for number, raw in enumerate(text.splitlines(), 1):
        parts = split_line(raw)
        if parts is None:
            continue
        kind, control, module, args = parts
        if kind == "@include":
            out += session_stack(pam_dir, module, depth + 1)
        elif kind == "session" and control in ("include", "substack"):
            out += session_stack(pam_dir, module, depth + 1)
        elif kind == "session":
            out.append(PamLine(f"{path}:{number}", control, module, args, index, path))
            index += 1
    return out


def skipped_by(stack, hook):
    """The line that can make PAM skip `hook`: a `sufficient` or `[...=done]` line
    before it (success ends the stack), or a jump in the same file that lands past it."""
    for line in stack[:stack.index(hook)]:
        if line.control == "sufficient":
            return line
        for _value_name, action in _JUMP.findall(line.control):
            if action == "done":
                return line
            if action.isdigit() and line.file == hook.file and (
                    line.index < hook.index <= line.index + int(action)):
                return line
    return None


def check_service(stack, launcher):
    """Problems of one service's expanded session stack (a list of (text, fix)); []
    when the hook is wired once, `required`, with seteuid, unskippable, and pam_env's
    user_readenv cannot reach a hook without the launcher."""
    hooks = [line for line in stack if line.is_hook]
    if not hooks:
        return [("no netfence hook in its session stack: its logins are not fenced",
                 "pam-auth-update --package --enable netfence (or add `netfence "
                 "pam-line` at the end of its session section)")]
    problems = []
    if len(hooks) > 1:
        problems.append((f"the hook runs {len(hooks)} times per session ("
                         + ", ".join(h.where for h in hooks) + ")",
                         "wire it once: through common-session or by hand, not both"))
    hook = hooks[0]
    if hook.control != "required":
        problems.append((f"{hook.where}: control `{hook.control}`: a failed hook would "
                         "not refuse the login", "use `required` (netfence pam-line)"))
    if "seteuid" not in hook.args:
        problems.append((f"{hook.where}: no `seteuid`: under su the hook runs as the "
                         "user and cannot fence", "use the line `netfence pam-line` prints"))
    skipper = skipped_by(stack, hook)
    if skipper is not None:
        problems.append((f"{skipper.where} (`{skipper.control} {skipper.module}`) can "
                         f"skip the hook at {hook.where}",
                         "move the netfence line before it or change its control"))
    later = [line for line in stack[stack.index(hook):]
             if os.path.basename(line.module) == "pam_systemd.so"]
    if later:
        problems.append((f"{later[0].where}: pam_systemd runs after the hook: it moves "
                         "the session out of the cgroup the hook fenced",
                         "put the netfence line after pam_systemd (pam/README.md)"))
    readers = [line for line in stack if line.reads_user_env]
    if readers and not launcher:
        when = "open and close" if stack.index(readers[0]) < stack.index(hook) else "close"
        problems.append((f"{readers[0].where}: pam_env user_readenv=1 reaches the hook "
                         f"at {when}, and the hook has no static launcher (LD_PRELOAD)",
                         "netfence install-hook (built with the launcher) or drop "
                         "user_readenv=1"))
    return problems


def hook_files_problem(hook_path):
    """Why the hook a PAM line names cannot run, or None."""
    if not os.path.isabs(hook_path):
        return f"{hook_path}: not an absolute path"
    if not os.access(hook_path, os.X_OK):
        return f"{hook_path}: missing or not executable: every login of it fails"
    return None


def has_launcher(hook_path):
    """The hook is the static launcher when its Python program sits next to it."""
    return os.path.exists(hook_path + ".py")


def check_pam(pam_dir):
    """[(name, ok, detail, fix)] for each session-opening service present in pam_dir."""
    results = []
    present = [name for name in SESSION_SERVICES
               if os.path.isfile(os.path.join(pam_dir, name))]
    if not present:
        return [("pam", False, f"{pam_dir}: none of the session services "
                 f"({', '.join(SESSION_SERVICES[:6])}, ...) is there", "check --pam-dir")]
    for name in present:
        results.append(_check_one(pam_dir, name))
    return results


def _check_one(pam_dir, name):
    label = f"pam {name}"
    try:
        stack = session_stack(pam_dir, name)
    except (OSError, ValueError) as err:
        return label, False, f"cannot read its stack: {err}", "fix the PAM file"
    hooks = [line for line in stack if line.is_hook]
    launcher = bool(hooks) and has_launcher(hooks[0].hook_path)
    problems = check_service(stack, launcher)
    if hooks:
        missing = hook_files_problem(hooks[0].hook_path)
        if missing:
            problems.append((missing, "netfence install-hook " + hooks[0].hook_path))
    if not hooks and name in ROOT_ONLY_SERVICES:
        return (label, True, "not wired: only root opens its sessions (pam/README.md)",
                "optional: add `netfence pam-line` to its session section to fence "
                "what root starts with it")
    if problems:
        return (label, False, "; ".join(p for p, _ in problems),
                "; ".join(dict.fromkeys(f for _, f in problems)))
    return label, True, f"hook at {hooks[0].where}", ""


def installed_line(pam_dir):
    """The hook line wired into a session service (a PamLine), preferring one whose
    hook can run, or None."""
    found = []
    for name in SESSION_SERVICES:
        try:
            found += [line for line in session_stack(pam_dir, name) if line.is_hook]
        except (OSError, ValueError):
            continue
    runnable = [line for line in found if hook_files_problem(line.hook_path) is None]
    return (runnable or found or [None])[0]
