"""Account lookups through NSS: the passwd entry of a login's user and the names of
its groups. Shared by the hook and `netfence explain`, so that both see the groups a
rule is matched against the same way.

Light on purpose (the hook imports it): `pwd` and `grp` are extension modules loaded
only when a lookup is made, and `grp` only when a rule names groups.
"""

import posix

from .errors import HookInputError
from .hooklog import show


def lookup_account(name):
    """The passwd entry of PAM_USER: the only use of the name as given. Everything
    after (matching, records, log) uses the entry's canonical pw_name and uid."""
    import pwd
    try:
        return pwd.getpwnam(name)
    except KeyError:
        # not an account (or NSS cannot answer, which pwd does not tell apart): no
        # login program gets this far for it, and there is no uid to fence
        raise HookInputError(f"invalid PAM_USER {show(name)}: no such account") from None


def group_names(user, gid):
    """Names of every group of the user (NSS, supplementary included); a gid without a
    name stands as its number."""
    import grp
    names = set()
    for group in posix.getgrouplist(user, gid):
        try:
            names.add(grp.getgrgid(group).gr_name)
        except KeyError:
            names.add(str(group))
    return frozenset(names)


class Groups:
    """The user's group names (NSS, supplementary included), looked up on first use:
    most policies never ask, and `grp` costs an extension module load."""

    __slots__ = ("_user", "_gid", "_names")

    def __init__(self, user, gid):
        self._user, self._gid, self._names = user, gid, None

    def _load(self):
        if self._names is None:
            self._names = group_names(self._user, self._gid)
        return self._names

    def __contains__(self, name):
        return name in self._load()
