"""Decode what the kernel dumps of a table: sets, chains, rules, elements, counters.

Pure: every function takes the reply messages of one dump (raw bytes, or pyroute2
messages decoded by nftnl_msg.decode) and returns ir objects or plain data, so the
same code reads a live ruleset (nftnl.Ruleset) and the stored kernel dumps under
tests/fixtures/nftables. Replies of other tables are skipped (a dump filtered by table
name may still carry them on old kernels).

Most readers parse raw attributes (nftnl_wire.parse_attrs): gc and status read every
live element and counter every minute, and pyroute2's decoding took 16 s for 20,000
rules. `table_of` decodes with pyroute2 because it returns whole expressions.
"""

from . import ir, nftnl_maps, nftnl_wire as m, setkinds
from . import nfconst as nf
from .nftnl_batch import HOOKS, MARKER_TYPE, POLICIES
from .nftnl_expr import decode_expr

HOOK_NAMES = {number: name for name, number in HOOKS.items()}
POLICY_NAMES = {number: name for name, number in POLICIES.items()}
KEY_TYPE_NAMES = {type_id: name for name, (type_id, _len) in setkinds.KEY_TYPES.items()}


def cstr(data):
    return data.rstrip(b"\0").decode("utf-8", "replace") if data is not None else None


def _be32(data):
    return int.from_bytes(data, nf.NETWORK_ORDER) if data is not None else None


def _be64(data):
    return int.from_bytes(data, nf.NETWORK_ORDER) if data is not None else 0


def _be32s(data):
    return int.from_bytes(data, nf.NETWORK_ORDER, signed=True) if data is not None else None


def decode_comment(udata):
    if not udata:
        return ""
    raw = m.parse_udata(udata).get(nf.NFTNL_UDATA_RULE_COMMENT, b"")
    return raw.rstrip(b"\0").decode("utf-8", "replace")


# ---- pyroute2-decoded dumps -> ir -------------------------------------------------

def table_of(table, set_msgs, chain_msgs, rule_msgs):
    """The table as an ir.TableDef from its GETSET, GETCHAIN and GETRULE dumps.

    The kernel dumps rules chain by chain, in chain order: ir's rule order."""
    sets = tuple(_decode_set(msg) for msg in set_msgs
                 if m.attr(msg, 'NFTA_SET_TABLE') == table)
    chains = tuple(_decode_chain(msg) for msg in chain_msgs
                   if m.attr(msg, 'NFTA_CHAIN_TABLE') == table)
    rules = tuple(_decode_rule(msg) for msg in rule_msgs
                  if m.attr(msg, 'NFTA_RULE_TABLE') == table)
    return ir.TableDef(sets=sets, chains=chains, rules=rules, family="inet", name=table)


def _decode_set(msg):
    key_type = m.attr(msg, 'NFTA_SET_KEY_TYPE')
    key = KEY_TYPE_NAMES.get(key_type, f"type-{key_type}")
    flags = m.attr(msg, 'NFTA_SET_FLAGS') or 0
    if flags & nftnl_maps.NFT_SET_MAP:
        return _decode_map(msg, key_type, flags)
    exprs = [m.attr(msg, 'NFTA_SET_EXPR')] + list(m.attr(msg, 'NFTA_SET_EXPRESSIONS') or ())
    return ir.SetDef(name=m.attr(msg, 'NFTA_SET_NAME'), key=key,
                     interval=bool(flags & nf.NFT_SET_INTERVAL),
                     timeout=bool(flags & nf.NFT_SET_TIMEOUT),
                     counter=any(e is not None and m.attr(e, 'NFTA_EXPR_NAME') == "counter"
                                 for e in exprs))


def _decode_map(msg, key_type, flags):
    """A verdict map over a concatenation: its fields from the key type alone (each
    datatype has one length; pyroute2 0.9.7 loops decoding NFTA_SET_DESC_CONCAT).
    Its static elements are not read here: Ruleset.summary compares them."""
    return ir.SetDef(name=m.attr(msg, 'NFTA_SET_NAME'), key="concat",
                     interval=bool(flags & nf.NFT_SET_INTERVAL),
                     fields=nftnl_maps.split_concat_type(key_type),
                     data="verdict" if m.attr(msg, 'NFTA_SET_DATA_TYPE') ==
                     nftnl_maps.NFT_DATA_VERDICT else "")


def _decode_chain(msg):
    name = m.attr(msg, 'NFTA_CHAIN_NAME')
    hook = m.attr(msg, 'NFTA_CHAIN_HOOK')
    if hook is None:
        return ir.ChainDef(name=name)
    return ir.ChainDef(name=name, hook=HOOK_NAMES.get(m.attr(hook, 'NFTA_HOOK_HOOKNUM'), "?"),
                       priority=m.attr(hook, 'NFTA_HOOK_PRIORITY'),
                       policy=POLICY_NAMES.get(m.attr(msg, 'NFTA_CHAIN_POLICY'), "?"))


def _decode_rule(msg):
    exprs = m.attr(msg, 'NFTA_RULE_EXPRESSIONS') or ()
    return ir.RuleDef(chain=m.attr(msg, 'NFTA_RULE_CHAIN'),
                      exprs=tuple(decode_expr(e, m.attr) for e in exprs),
                      comment=decode_comment(m.attr(msg, 'NFTA_RULE_USERDATA')))


# ---- raw dumps ----------------------------------------------------------------------

def set_names(table, raw_sets, maps=True):
    """The names of the table's sets, from a raw GETSET dump; maps=False leaves out the
    profiles' lookup maps (static: the compiler's, never a login's)."""
    names = []
    for raw in raw_sets:
        attrs = m.parse_attrs(raw)
        if cstr(attrs.get(nf.NFTA_SET_TABLE)) != table:
            continue
        if maps or not nftnl_maps.is_map_attrs(attrs):
            names.append(cstr(attrs.get(nf.NFTA_SET_NAME)))
    return names


def _element_attrs(raw_elements):
    """(key hex, {attribute type: bytes}) of every element of a raw GETSETELEM dump."""
    for attrs in m.iter_elements(raw_elements):
        key = attrs.get(nf.NFTA_SET_ELEM_KEY)
        value = m.parse_attrs(key, 0).get(nf.NFTA_DATA_VALUE) if key else None
        if value is not None:
            yield value.hex(), attrs


def set_keys(raw_elements, with_flags=False):
    """[hex key] of one set, from its raw GETSETELEM dump; with_flags: [(hex key,
    is_end)], for interval sets (NFT_SET_ELEM_INTERVAL_END)."""
    if not with_flags:
        return [key for key, _attrs in _element_attrs(raw_elements)]
    return [(key, bool(_be32(attrs.get(nf.NFTA_SET_ELEM_FLAGS, bytes(4)))
                       & nf.NFT_SET_ELEM_INTERVAL_END))
            for key, attrs in _element_attrs(raw_elements)]


def set_expiries(raw_elements):
    """{hex key: ms until the kernel removes it} of one timed set, from its raw
    GETSETELEM dump (NFTA_SET_ELEM_EXPIRATION: the time left, not the timeout it was
    added with); None for an element without a timeout (added by hand: never ours)."""
    out = {}
    for key, attrs in _element_attrs(raw_elements):
        left = attrs.get(nf.NFTA_SET_ELEM_EXPIRATION)
        out[key] = _be64(left) if left is not None else None
    return out


def rule_attrs(table, raw_rules):
    """The attributes of every rule of the table, from a raw GETRULE dump."""
    for raw in raw_rules:
        attrs = m.parse_attrs(raw)
        if cstr(attrs.get(nf.NFTA_RULE_TABLE)) == table:
            yield attrs


def counters_of(table, raw_rules):
    """[(chain, rule comment, packets, bytes)] for every rule with a counter."""
    out = []
    for attrs in rule_attrs(table, raw_rules):
        chain = cstr(attrs.get(nf.NFTA_RULE_CHAIN))
        comment = decode_comment(attrs.get(nf.NFTA_RULE_USERDATA))
        for kind, item in m.iter_attrs(attrs.get(nf.NFTA_RULE_EXPRESSIONS, b"")):
            expr = m.parse_attrs(item, 0)
            if kind != nf.NFTA_LIST_ELEM or cstr(expr.get(nf.NFTA_EXPR_NAME)) != "counter":
                continue
            data = m.parse_attrs(expr.get(nf.NFTA_EXPR_DATA, b""), 0)
            out.append((chain, comment, _be64(data.get(nf.NFTA_COUNTER_PACKETS)),
                        _be64(data.get(nf.NFTA_COUNTER_BYTES))))
    return out


def summary_of(table, raw_table, raw_sets, raw_chains, raw_rules, map_elements=None):
    """What the table looks like (see nftnl.Ruleset.summary), from raw dumps.
    map_elements(name): the raw GETSETELEM dump of a verdict map (their static
    elements are part of the table's shape); without it maps are left out of "maps"."""
    udata = m.parse_attrs(raw_table).get(nf.NFTA_TABLE_USERDATA, b"")
    marker = m.parse_udata(udata).get(MARKER_TYPE)
    out = {"marker": marker.decode("utf-8", "replace") if marker is not None else None,
           "sets": {}, "maps": {}, "chains": {}, "rules": {}}
    for raw in raw_sets:
        attrs = m.parse_attrs(raw)
        if cstr(attrs.get(nf.NFTA_SET_TABLE)) == table:
            name = cstr(attrs.get(nf.NFTA_SET_NAME))
            out["sets"][name] = (_be32(attrs.get(nf.NFTA_SET_KEY_TYPE)), set_counts(attrs))
            if map_elements is not None and nftnl_maps.is_map_attrs(attrs):
                out["maps"][name] = nftnl_maps.map_summary(attrs, map_elements(name))
    for raw in raw_chains:
        attrs = m.parse_attrs(raw)
        if cstr(attrs.get(nf.NFTA_CHAIN_TABLE)) == table:
            name = cstr(attrs.get(nf.NFTA_CHAIN_NAME))
            out["chains"][name] = _base_chain(attrs)
            out["rules"].setdefault(name, [])
    for attrs in rule_attrs(table, raw_rules):
        comment = decode_comment(attrs.get(nf.NFTA_RULE_USERDATA))
        exprs = tuple(item for kind, item
                      in m.iter_attrs(attrs.get(nf.NFTA_RULE_EXPRESSIONS, b""))
                      if kind == nf.NFTA_LIST_ELEM)
        out["rules"].setdefault(cstr(attrs.get(nf.NFTA_RULE_CHAIN)), []).append(
            (comment, exprs))
    return out


def set_counts(attrs):
    """Whether a set (its raw attributes) gives each element a counter: NFTA_SET_EXPR
    is a counter, or NFTA_SET_EXPRESSIONS lists one."""
    single = attrs.get(nf.NFTA_SET_EXPR)
    exprs = [single] if single is not None else [
        item for kind, item in m.iter_attrs(attrs.get(nf.NFTA_SET_EXPRESSIONS, b""))
        if kind == nf.NFTA_LIST_ELEM]
    return any(cstr(m.parse_attrs(e, 0).get(nf.NFTA_EXPR_NAME)) == "counter" for e in exprs)


def _base_chain(attrs):
    """(hook number, priority, policy) of a base chain, None for a regular one."""
    hook = attrs.get(nf.NFTA_CHAIN_HOOK)
    if hook is None:
        return None
    hook_attrs = m.parse_attrs(hook, 0)
    return (_be32(hook_attrs.get(nf.NFTA_HOOK_HOOKNUM)),
            _be32s(hook_attrs.get(nf.NFTA_HOOK_PRIORITY)),
            _be32(attrs.get(nf.NFTA_CHAIN_POLICY)))
