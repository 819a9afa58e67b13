"""The one error hierarchy of netfence.

Every failure the project raises on purpose is a NetfenceError; the command line and the
PAM hook catch exactly this class, print or log its message, and exit non-zero.
Kept free of imports: the login hook loads it.
"""


class NetfenceError(Exception):
    """Base class: message is meant for the admin, as is."""


class PolicyError(NetfenceError):
    """A policy file is unreadable, insecure or invalid.

    `problems` holds one ("file", line, "message") tuple per problem, so that
    `netfence check` can report all of them as `file:line: message`.
    """

    def __init__(self, problems):
        self.problems = list(problems)
        super().__init__("\n".join(format_problem(*p) for p in self.problems))


def format_problem(path, line, message):
    if line:
        return f"{path}:{line}: {message}"
    return f"{path}: {message}"


class KernelError(NetfenceError):
    """The kernel refused a netlink request or a system call.

    `operation` names what was being done (e.g. "add element uid-web to set"),
    `errno` is the positive errno value.
    """

    def __init__(self, operation, errno, detail=""):
        self.operation = operation
        self.errno = errno
        import os  # only reached on failure; keeps the hook's import set minimal

        text = f"{operation}: {os.strerror(errno)} (errno {errno})"
        if detail:
            text += f": {detail}"
        super().__init__(text)


class GenerationChanged(KernelError):
    """The ruleset changed between our read and our write (NFNL_BATCH_GENID → ERESTART)."""


class CgroupError(NetfenceError):
    """A cgroup could not be found, created, joined or removed."""


class HookInputError(NetfenceError):
    """A PAM item (user, service, tty, rhost) failed validation."""


class StateError(NetfenceError):
    """A state file (compiled snapshot, session record) is missing or damaged."""


class UsageError(NetfenceError):
    """A command-line argument is invalid."""
