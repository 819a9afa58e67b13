"""The checks of scope = "always" rules (docs/policy.md): no login conditions, uids
only at that scope, no ingress profiles. policy.py calls them; problems are reported
at the file and line of the key, as every policy problem is."""

from . import model
from .policy_values import ItemError, items_of, uid_range, unique


def scope_fits(doc, keys, context, item, fields):
    """An always rule holds without a login: login conditions cannot apply to it;
    uids only mean something there (a login has one uid, matched by users)."""
    ok = True
    scope = fields.get("scope", "session")
    if scope == "always":
        for key in model.LOGIN_KEYS:
            if key in item:
                doc.error(keys + (key,), f"{context}: {key} is a login condition: "
                          f'scope = "always" holds without a login; use scope "user" or '
                          f'"session" for a rule with {key}')
                ok = False
    elif "uids" in item and scope is not None:
        doc.error(keys + ("uids",), f'{context}: uids is for scope = "always" rules; '
                                    f"at login scopes name users or groups")
        ok = False
    return ok


def check_always(state):
    """Profiles of always rules may not restrict ingress: on the input hook a new
    inbound connection has no socket yet, so no owner to match (netfence matches
    ingress by the session or user cgroup of a login, or of `netfence run`)."""
    for rule, path, line in state.always:
        for name in rule.profiles:
            profile = state.profiles.get(name)
            if profile is not None and (profile.ingress or profile.ingress_default != "allow"):
                state.problems.append((path, line, (
                    f"rule {rule.index + 1}: profile {name!r} restricts ingress, which "
                    f'scope = "always" cannot enforce: an inbound connection has no '
                    f"socket owner on the input hook; use scope \"user\" or \"session\" "
                    f"for it, or `netfence run`, or split its ingress into another profile")))


def parse_uids(doc, keys, context, value):
    """uids = [1234, "1000-59999"] -> ((low, high), ...), or None (reported)."""
    try:
        items = items_of(value, "uids", (int, str),
                         empty='give at least one uid or range, e.g. uids = ["1000-59999"]')
    except ItemError as err:
        doc.error(keys, f"{context}: {err}")
        return None
    ranges = []
    for number, item in enumerate(items):
        try:
            ranges.append(uid_range(item, model.MAX_ID))
        except ItemError as err:
            doc.error(keys + (number,) if isinstance(value, list) else keys, f"{context}: {err}")
            return None
    return unique(ranges)
