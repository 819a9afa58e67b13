"""Drift: does the table the kernel holds still say what we sent?

`expected_summary(table)` is what nftnl.Ruleset.summary() reads back after `table` was
sent; `differences` compares two summaries in short phrases (gc and status report
them, and gc repairs the table when there are any).
"""

from . import nftnl_maps, nftnl_wire as m, setkinds
from . import nfconst as nf
from .nftnl_batch import HOOKS, POLICIES, comment_udata
from .nftnl_dump import cstr, decode_comment
from .nftnl_expr import canonical_registers
from .nftnl_raw import expr_bytes


def expected_summary(table):
    """What Ruleset.summary() reads back after `table` was sent (marker aside): the
    expressions as we encode them (NFTA_LIST_ELEM payloads; a register the kernel
    dumps under another number that means the same storage, under that number), the
    verdict maps with their static elements."""
    rules = {c.name: [] for c in table.chains}
    for rule in table.rules:
        udata = comment_udata(rule.comment) if rule.comment else None
        rules.setdefault(rule.chain, []).append(
            (decode_comment(udata), tuple(expr_bytes(canonical_registers(e))[nf.NLA_HDRLEN:]
                                          for e in rule.exprs)))
    return {"marker": None,
            "sets": {s.name: (_key_type(s), s.counter) for s in table.sets},
            "maps": {s.name: nftnl_maps.expected_map(s) for s in table.sets
                     if nftnl_maps.is_map(s)},
            "chains": {c.name: ((HOOKS[c.hook], c.priority, POLICIES[c.policy])
                                if c.hook else None) for c in table.chains},
            "rules": rules}


def _key_type(set_def):
    if set_def.key == "concat":
        return nftnl_maps.concat_type(set_def.fields)
    return setkinds.KEY_TYPES[set_def.key][0]


def differences(expected, got):
    """What differs between two summaries, as short phrases (empty: the same)."""
    out = []
    for kind in ("sets", "chains"):
        missing = sorted(set(expected[kind]) - set(got[kind]))
        extra = sorted(set(got[kind]) - set(expected[kind]))
        changed = sorted(n for n in set(expected[kind]) & set(got[kind])
                         if expected[kind][n] != got[kind][n])
        noun = kind[:-1]
        out += [f"{noun} {n} missing" for n in missing]
        out += [f"foreign {noun} {n}" for n in extra]
        out += [f"{noun} {n} changed" for n in changed]
    out += nftnl_maps.map_differences(expected.get("maps", {}), got.get("maps", {}))
    for chain in sorted(set(expected["rules"]) & set(got["rules"])):
        want, have = expected["rules"][chain], got["rules"][chain]
        if len(want) != len(have):
            out.append(f"chain {chain} has {len(have)} rules instead of {len(want)}")
            continue
        changed = [i for i, (w, h) in enumerate(zip(want, have), 1) if not _same_rule(w, h)]
        if changed:
            out.append(f"chain {chain}: rule {changed[0]} changed"
                       + (f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""))
    return out


def _same_rule(want, have):
    """A dumped rule is ours when its comment is and each of its expressions carries,
    in order, every attribute we sent with the same value (the kernel adds some on
    dump, such as counter values and lookup flags)."""
    (want_comment, want_exprs), (have_comment, have_exprs) = want, have
    if want_comment != have_comment or len(want_exprs) != len(have_exprs):
        return False
    return all(w == h or _attrs_within(w, h, 2) for w, h in zip(want_exprs, have_exprs))


_NESTED = {  # (expression, attribute, ...) paths whose payload is itself attributes
    ("immediate", nf.NFTA_IMMEDIATE_DATA),
    ("immediate", nf.NFTA_IMMEDIATE_DATA, nf.NFTA_DATA_VERDICT),
    ("cmp", nf.NFTA_CMP_DATA),
    ("range", nf.NFTA_RANGE_FROM_DATA), ("range", nf.NFTA_RANGE_TO_DATA),
    ("bitwise", nf.NFTA_BITWISE_MASK), ("bitwise", nf.NFTA_BITWISE_XOR)}


def _attrs_within(want, have, depth, path=()):
    """Every attribute of `want` is in `have` with the same payload; nested ones (the
    expression's data, data values, verdicts) compared the same way."""
    want_attrs = m.parse_attrs(want, 0)
    have_attrs = m.parse_attrs(have, 0)
    if not path:                                    # an NFTA_LIST_ELEM item
        name = want_attrs.get(nf.NFTA_EXPR_NAME)
        if name != have_attrs.get(nf.NFTA_EXPR_NAME):
            return False
        return _attrs_within(want_attrs.get(nf.NFTA_EXPR_DATA, b""),
                             have_attrs.get(nf.NFTA_EXPR_DATA, b""), depth,
                             (cstr(name),))
    for kind, value in want_attrs.items():
        got = have_attrs.get(kind)
        if got is None:
            return False
        if value != got and not (path + (kind,) in _NESTED
                                 and _attrs_within(value, got, depth, path + (kind,))):
            return False
    return True
