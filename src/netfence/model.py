"""The parsed policy, as plain immutable data.

`policy.py` builds these from TOML files; `compiler.py` turns them into a ruleset and
a login-time lookup structure. Nothing here touches the system.
"""

from dataclasses import dataclass, field

ACTIONS = ("allow", "deny", "reject")
MODES = ("enforce", "monitor")           # monitor: deny and reject log and count, then let through
PROTOS = ("tcp", "udp", "icmp")          # "any" is spelled as an empty tuple
SCOPES = ("user", "session", "always")
LOGIN_KEYS = ("services", "rhosts", "ttys", "time")   # conditions only a login has
MAX_ID = 4294967294                       # the highest uid/gid: (uid_t) -1 is no id
LOOPBACK = "loopback"                     # peer keyword: traffic through the lo interface


@dataclass(frozen=True)
class Location:
    path: str
    line: int = 0

    def __str__(self):
        return f"{self.path}:{self.line}" if self.line else self.path


@dataclass(frozen=True)
class Settings:
    on_error: str = "deny"             # "deny": refuse the login; "allow": let it in and log
    hook_timeout_ms: int = 2000        # the hook gives up after this long and follows on_error
    log_rate: int = 5                  # logged denials per second per profile (burst 2x)
    cgroup_base: str = "netfence"      # <cgroup2 mount>/<cgroup_base>/user-UID/session-KEY
    mode: str = "enforce"              # a profile's mode when it sets none (one of MODES)
    account: bool = False              # a profile's accounting when it sets none
    log_group: int = 5140              # the nflog group denials go to (watch listens)


@dataclass(frozen=True)
class NetRule:
    """One ordered rule of a profile direction; the first rule that matches decides."""

    action: str                                  # one of ACTIONS
    protos: tuple = ()                           # subset of PROTOS; () means any protocol
    ports: tuple = ()                            # ((lo, hi), ...) inclusive; () means any port
    peers: tuple = ()                            # normalized CIDR strings and/or LOOPBACK; () any
    where: Location = field(default=Location("<policy>"), compare=False)


@dataclass(frozen=True)
class Profile:
    name: str
    egress: tuple = ()                  # NetRule...; peers are destinations, ports dports
    egress_default: str = "allow"       # one of ACTIONS
    ingress: tuple = ()                 # NetRule...; peers are sources, ports local ports
    ingress_default: str = "allow"
    log: bool = False                   # log denied traffic (rate limited) with the identity
    mode: str = ""                      # one of MODES; "": the [settings] mode
    account: bool | None = None         # count bytes and denials; None: [settings] account
    where: Location = field(default=Location("<policy>"), compare=False)


def profile_mode(profile, settings):
    """The profile's mode: its own, else the [settings] one."""
    return profile.mode or settings.mode


def profile_accounts(profile, settings):
    """Whether logins that get the profile are counted (bytes each way, denials)."""
    return settings.account if profile.account is None else profile.account


def profile_logs(profile, settings):
    """Whether the profile's denials are logged: `log = true`, or monitor mode
    (whose point is to show what it would deny)."""
    return profile.log or profile_mode(profile, settings) == "monitor"


@dataclass(frozen=True)
class TimeWindow:
    """Days as a bitmask (Monday = bit 0 … Sunday = bit 6), minutes since midnight.

    start > end means the window crosses midnight (e.g. 22:00-06:00): it then covers
    [start, 24:00) on the listed days and [00:00, end) on the day after each.
    """

    days: int
    start: int
    end: int


@dataclass(frozen=True)
class Patterns:
    """A list field of a match rule: positive items and "!"-negated items.

    Matches when some positive item matches (or there is none) and no negated item does.
    An absent field is Patterns() and matches everything.
    """

    include: tuple = ()
    exclude: tuple = ()


@dataclass(frozen=True)
class MatchRule:
    index: int                          # position over all files, from 0
    users: Patterns = Patterns()        # names; "*" = every user except root
    uids: tuple = ()                    # ((low, high), ...) inclusive; always scope only
    groups: Patterns = Patterns()       # group names (NSS, supplementary included)
    services: Patterns = Patterns()     # PAM service names
    rhosts: Patterns = Patterns()       # CIDR strings, host names, ".domain" suffixes, "local"
    ttys: Patterns = Patterns()         # fnmatch globs on PAM_TTY ("" when none)
    time: tuple = ()                    # TimeWindow...; () means always
    scope: str = "session"              # one of SCOPES; "always": from reload on, no login
    profiles: tuple = ()                # profile names, each defined in the policy
    where: Location = field(default=Location("<policy>"), compare=False)


@dataclass(frozen=True)
class Policy:
    settings: Settings
    profiles: dict                      # name -> Profile, in definition order
    rules: tuple                        # MatchRule..., in file order
    files: tuple = ()                   # the files read, in order
