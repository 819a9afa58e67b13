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

Levels are those of the cgroup v2 hierarchy ("/" is 0): netfence's own session cgroups
are /<base>/user-UID/session-KEY and logind's /user.slice/user-UID.slice/session-N.scope,
both at SESSION_LEVEL, with their user cgroup at USER_LEVEL. `cgroups` checks paths
against these levels; the compiler matches sockets at them.

Keys are hex strings of the kernel's bytes: the sets are declared with host byte order
(NFT_BYTEORDER_HOST), so a uid or cgroup id is its integer in BYTE_ORDER (nfconst's
HOST_ORDER). Light on purpose (the hook imports it): nfconst only, no dataclasses.
"""

from .nfconst import HOST_ORDER as BYTE_ORDER, NFT_DATATYPE_CGROUPV2, NFT_DATATYPE_UID

TABLE = "netfence"                  # the inet table every set lives in
USER_LEVEL = 2
SESSION_LEVEL = 3

# nftables key datatypes: name -> (datatype id, key length in bytes)
KEY_TYPES = {
    "uid": (NFT_DATATYPE_UID, 4),
    "cgroupsv2": (NFT_DATATYPE_CGROUPV2, 8),
}


class SetKind:
    __slots__ = ("name", "field", "prefix", "guard", "key_type", "key_len", "scope",
                 "level", "directions")

    def __init__(self, name, key_type, scope, level, directions):
        self.name = name
        self.field = f"{name}_set"          # the key in a profile's login part
        self.prefix = f"{name}-"
        self.guard = f"any-{name}"
        self.key_type = key_type
        self.key_len = KEY_TYPES[key_type][1]
        self.scope = scope
        self.level = level                  # None: keyed by uid, not by a cgroup
        self.directions = directions

    def set_name(self, profile_name):
        return self.prefix + profile_name

    def key(self, number):
        """The hex key of a uid or cgroup id."""
        return number.to_bytes(self.key_len, BYTE_ORDER).hex()

    def __repr__(self):
        return f"SetKind({self.name!r})"


UID = SetKind("uid", "uid", "user", None, ("egress",))
UCG = SetKind("ucg", "cgroupsv2", "user", USER_LEVEL, ("ingress",))
SCG = SetKind("scg", "cgroupsv2", "session", SESSION_LEVEL, ("egress", "ingress"))
KINDS = (UID, UCG, SCG)


def profile_sets(profile_name):
    """{field: set name} of one profile, as the login part stores it."""
    return {kind.field: kind.set_name(profile_name) for kind in KINDS}


def guards():
    """{field: guard set name}, as the login part stores it."""
    return {kind.field: kind.guard for kind in KINDS}


def key_number(hex_key):
    """The uid or cgroup id a hex key holds."""
    return int.from_bytes(bytes.fromhex(hex_key), BYTE_ORDER)
