"""The kinds of set a login fills: the one place that knows them.

Every profile P has one set of each kind, named <prefix>P, and each kind has one guard
set, the union of that kind's profile sets, which the base chains test first (so that
unrestricted traffic costs two lookups however many profiles there are). A profile
name cannot start a guard's name: guards are "any-*", profile sets "<kind>-*".

  kind  field    set    guard    key type (bytes)  scope    key: the id of ...
  uid   uid_set  uid-P  any-uid  uid (4)           user     the login's uid
                                                            (meta skuid, egress)
  ucg   ucg_set  ucg-P  any-ucg  cgroupsv2 (8)     user     the user cgroup, level 2
                                                            (socket cgroupv2, ingress)
  scg   scg_set  scg-P  any-scg  cgroupsv2 (8)     session  the session cgroup, level 3
                                                            (socket cgroupv2, both)
  auid  -        auid-P any-auid uid (4), ranges   always   a uid range (2 or more uids)
                                                            of an always rule (meta skuid)
  suid  -        suid-P any-suid uid (4)           always   a single uid of an always rule
                                                            (meta skuid)
  agid  -        agid-P any-agid gid (4), ranges   always   a group of an always rule
                                                            (meta skgid)

The last three are static: no login fills them.

Sets whose elements carry a kernel timeout (flags timeout; timed.py computes every
one of their elements, with its expiry, from the records, the grants and the clock):

  kind  field     set     guard     key (level)    scope    holds
  tuid  tuid_set  tuid-P  any-tuid  uid            user     a login matched by a rule
  tucg  tucg_set  tucg-P  any-tucg  cgroup (2)     user       with `time`, while its
  tscg  tscg_set  tscg-P  any-tscg  cgroup (3)     session    window is open (WINDOW_KINDS)
  guid  -         guid-P  -         uid            user     grants: exempt from P (the
  gucg  -         gucg-P  -         cgroup (2)     user       first rules of P's denial
  gscg  -         gscg-P  -         cgroup (3)     session    chains return) (GRANT_KINDS)
  ruid  -         ruid-P  any-ruid  uid            user     restrictions: P applied to
                                                            the uid's egress (RESTRICT_KINDS)

Login elements never carry a timeout and timed elements never go into a login set: a
kernel that re-adds an existing element with another timeout would otherwise turn a
permanent restriction into a timed one (or the reverse). Reload (and gc, when NSS changed) puts
in them the ranges resolve.py computes from the always rules, and only profiles used
at always scope have them. auid and agid are interval sets (an rbtree, O(log n) per
lookup): the kernel compares their keys as bytes, so the rule turns the host-order
uid/gid into network order first (a byteorder expression) and their keys are
big-endian (SetKind.key), as nft does. Single uids (named users, group members) go to
suid, a hash set like uid-P (O(1)), so that 10,000 of them cost what one does.

Levels are those of the cgroup v2 hierarchy ("/" is 0): netfence's own session cgroups
are /<base>/user-UID/session-KEY and logind's /user.slice/user-UID.slice/session-N.scope,
both at SESSION_LEVEL, with their user cgroup at USER_LEVEL. `cgroups` checks paths
against these levels; the compiler matches sockets at them.

Keys are hex strings of the kernel's bytes: the sets are declared with host byte order
(NFT_BYTEORDER_HOST), so a uid or cgroup id is its integer in BYTE_ORDER (nfconst's
HOST_ORDER). Light on purpose (the hook imports it): nfconst only, no dataclasses.
"""

from .nfconst import (HOST_ORDER as BYTE_ORDER, NETWORK_ORDER, NFT_DATATYPE_CGROUPV2,
                      NFT_DATATYPE_GID, NFT_DATATYPE_UID)

TABLE = "netfence"                  # the inet table every set lives in
USER_LEVEL = 2
SESSION_LEVEL = 3

# nftables key datatypes: name -> (datatype id, key length in bytes)
KEY_TYPES = {
    "uid": (NFT_DATATYPE_UID, 4),
    "cgroupsv2": (NFT_DATATYPE_CGROUPV2, 8),
    "gid": (NFT_DATATYPE_GID, 4),
}


class SetKind:
    __slots__ = ("name", "field", "prefix", "guard", "key_type", "key_len", "scope",
                 "level", "directions", "static", "meta_key", "interval", "timeout")

    def __init__(self, name, key_type, scope, level, directions, meta_key=None,
                 interval=False, timeout=False, guarded=True):
        self.name = name
        self.field = f"{name}_set"          # the key in a profile's login part
        self.prefix = f"{name}-"
        self.guard = f"any-{name}" if guarded else None
        self.key_type = key_type
        self.key_len = KEY_TYPES[key_type][1]
        self.scope = scope
        self.level = level                  # None: keyed by uid, not by a cgroup
        self.directions = directions
        self.static = scope == "always"    # filled by reload/gc from NSS, not by logins
        self.meta_key = meta_key            # the meta key a static kind matches
        self.interval = interval            # ranges: an rbtree with big-endian keys
        self.timeout = timeout              # flags timeout: every element expires

    def set_name(self, profile_name):
        return self.prefix + profile_name

    def key(self, number):
        """The hex key of a uid or cgroup id (big-endian in an interval set)."""
        order = NETWORK_ORDER if self.interval else BYTE_ORDER
        return number.to_bytes(self.key_len, order).hex()

    def __repr__(self):
        return f"SetKind({self.name!r})"


UID = SetKind("uid", "uid", "user", None, ("egress",))
UCG = SetKind("ucg", "cgroupsv2", "user", USER_LEVEL, ("ingress",))
SCG = SetKind("scg", "cgroupsv2", "session", SESSION_LEVEL, ("egress", "ingress"))
KINDS = (UID, UCG, SCG)                 # the kinds logins fill
AUID = SetKind("auid", "uid", "always", None, ("egress",), meta_key="skuid", interval=True)
SUID = SetKind("suid", "uid", "always", None, ("egress",), meta_key="skuid")
AGID = SetKind("agid", "gid", "always", None, ("egress",), meta_key="skgid", interval=True)
STATIC_KINDS = (AUID, SUID, AGID)       # the kinds reload fills (always rules)
# the scope of a timed kind is the record that owns its key: a user-scope key (uid,
# user cgroup) lives with the user record, a session-scope key with the session
TUID = SetKind("tuid", "uid", "user", None, ("egress",), timeout=True)
TUCG = SetKind("tucg", "cgroupsv2", "user", USER_LEVEL, ("ingress",), timeout=True)
TSCG = SetKind("tscg", "cgroupsv2", "session", SESSION_LEVEL, ("egress", "ingress"),
               timeout=True)
WINDOW_KINDS = (TUID, TUCG, TSCG)       # logins matched by rules with `time`
GUID = SetKind("guid", "uid", "user", None, ("egress",), timeout=True, guarded=False)
GUCG = SetKind("gucg", "cgroupsv2", "user", USER_LEVEL, ("ingress",), timeout=True,
               guarded=False)
GSCG = SetKind("gscg", "cgroupsv2", "session", SESSION_LEVEL, ("egress", "ingress"),
               timeout=True, guarded=False)
GRANT_KINDS = (GUID, GUCG, GSCG)        # `netfence grant`: exempt from a profile
RUID = SetKind("ruid", "uid", "user", None, ("egress",), timeout=True)
RESTRICT_KINDS = (RUID,)                # `netfence restrict`: a profile on a uid's egress
TIMED_KINDS = WINDOW_KINDS + GRANT_KINDS + RESTRICT_KINDS


# Accounting (docs/accounting.md): sets of cgroup ids whose elements each carry a
# counter (the set's NFTA_SET_EXPR), which a lookup updates. A login that gets a
# profile with accounting puts its session cgroup id (session element) and its user
# cgroup id (user element) in ACCT_OUT and ACCT_IN, tested by the first rules of the
# base chains for every packet (socket cgroupv2 at SESSION_LEVEL, then USER_LEVEL),
# and in DENIED_PREFIX + P for each such profile P, tested by P's deny-P / reject-P
# chains: bytes and packets each way, and denials per profile, per session and per
# user, kept in the kernel (one hash lookup each, however many sessions).
ACCT_OUT = "acct-out"
ACCT_IN = "acct-in"
DENIED_PREFIX = "denied-"
ACCT_FIELDS = {"out": ACCT_OUT, "in": ACCT_IN}     # the login part's "account" names
LOG_PREFIX = "netfence"     # nflog prefix: "netfence P" (cgroup id in the mark) or
NO_CGROUP = "nocg"          # "netfence P nocg" (no socket, or one outside our levels)


def denied_set(profile_name):
    return DENIED_PREFIX + profile_name


def is_counted(set_name):
    """Whether a set's elements carry counters (accounting sets)."""
    return set_name in (ACCT_OUT, ACCT_IN) or set_name.startswith(DENIED_PREFIX)


def profile_sets(profile_name):
    """{field: set name} of one profile, as the login part stores it."""
    return {kind.field: kind.set_name(profile_name) for kind in KINDS}


def guards():
    """{field: guard set name}, as the login part stores it."""
    return {kind.field: kind.guard for kind in KINDS}


def window_sets(profile_name):
    """{field: set name} of a profile's time-window sets (only profiles that a rule
    with `time` names have them; the login part stores these too)."""
    return {kind.field: kind.set_name(profile_name) for kind in WINDOW_KINDS}


def is_timed(set_name):
    """Whether a set of our table holds elements with a kernel timeout (time windows,
    grants, restrictions): timed.py, not the records' element lists, says what is in
    it."""
    return any(set_name.startswith(kind.prefix) or set_name == kind.guard
               for kind in TIMED_KINDS)


def key_number(hex_key):
    """The uid or cgroup id a hex key holds."""
    return int.from_bytes(bytes.fromhex(hex_key), BYTE_ORDER)


def is_static(set_name):
    """Whether a set of our table is one of an always rule (filled by reload, not by
    logins): its name has a static kind's prefix ("any-" names are guards, and a
    profile set's prefix is its kind's)."""
    return any(set_name.startswith(kind.prefix) or set_name == kind.guard
               for kind in STATIC_KINDS)
