"""The reload-side netlink layer: write and read the `inet netfence` table.

Encodes an ir.TableDef with pyroute2's nf_tables message classes (nftnl_msg, patched
where pyroute2 drops attributes), sends it as one batch with an ack on every message,
and reads tables, set elements and counters back (nftnl_expr decodes expressions into
ir tuples). Everything happens in the caller's network namespace.

Element keys are hex strings of the exact key bytes, in the host byte order the kernel
compares them in: uid `struct.pack("=I", uid).hex()`, cgroup id
`struct.pack("=Q", os.stat(dir).st_ino).hex()`.

The login hook never imports this module (pyroute2 costs ~200 ms to import).
"""

import errno
import itertools

from . import ir, nftnl_msg as m
from .errors import GenerationChanged, KernelError
from .fastpath_py import element_list_message
from .nftnl_expr import counter_values, decode_expr, encode_expr, expr_bytes, rule_body
from .nftnl_sock import AcksLost, Connection, DumpInterrupted

TABLE_NAME = ir.TABLE_NAME
HOOKS = {"prerouting": 0, "input": 1, "forward": 2, "output": 3, "postrouting": 4}
POLICIES = {"drop": 0, "accept": 1}
ELEMENTS_PER_MESSAGE = 256      # keeps each message far below netlink's size limits
DUMP_RETRIES = 5
KEYBYTEORDER_HOST = m.udata_tlvs(
    [(m.NFTNL_UDATA_SET_KEYBYTEORDER, m.NFT_BYTEORDER_HOST.to_bytes(4, "little"))])


def _check_family(table):
    if table.family != "inet":        # every message is sent with NFPROTO_INET
        raise ValueError(f"only inet tables are supported, not {table.family}")


# -- encoding ------------------------------------------------------------------------

class _Batch:
    """Collects (operation, bytes, seq) from BEGIN to END."""

    def __init__(self, next_seq, begin=True):
        self.next_seq = next_seq
        self.messages = []
        if begin:
            seq = next_seq()
            self.messages.append(("begin transaction", m.batch_control(
                m.NFNL_MSG_BATCH_BEGIN, seq), seq))

    def add(self, operation, cls, msg_type, attrs, flags=m.NLM_F_CREATE | m.NLM_F_EXCL):
        """Queue one message. The default flags create and refuse an existing object:
        the table was just removed, so a duplicate chain or set name is a bug (EEXIST)."""
        seq = self.next_seq()
        data = m.build(cls, msg_type, attrs, seq, flags=m.NLM_F_REQUEST | m.NLM_F_ACK | flags)
        self.messages.append((operation, data, seq))

    def finish(self):
        seq = self.next_seq()
        self.messages.append(("end transaction", m.batch_control(m.NFNL_MSG_BATCH_END, seq), seq))
        return self.messages


def encode_batch(table, elements, genid=None, seq_start=1, delete="destroy"):
    """The replace_table transaction as [(operation, bytes, seq)], BEGIN to END.

    delete: "destroy" (DESTROYTABLE, no error when absent), "delete" (DELTABLE: the
    table must exist) or None (nothing to remove).
    """
    return PreparedTable(table, None, seq_start).messages(elements, genid, delete)


MARKER_TYPE = 0xA5      # private nftnl userdata type: nft ignores it (it prints type 0,
                        # the comment, only), so `nft list` output is unchanged


def marker_udata(marker):
    return m.udata_tlvs([(MARKER_TYPE, marker.encode())])


class PreparedTable:
    """The messages that create a table (table, sets, chains, rules), encoded once.

    reload encodes them before it takes any lock, and may send them more than once
    (a refused transaction is retried with fresh elements and generation). Sequence
    numbers: BEGIN = seq_base, the removal of the old table seq_base + 1, then these,
    then the elements and END.

    marker: a string stored in the table's userdata (MARKER_TYPE), read back with
    Ruleset.summary(): which snapshot the table came from, and whether a batch whose
    answers were lost was committed.
    """

    SEQ_BASE = 1 << 24          # far above a Connection's own request numbers

    def __init__(self, table, marker=None, seq_base=SEQ_BASE):
        _check_family(table)
        self.table, self.marker, self.seq_base = table, marker, seq_base
        body = _Batch(itertools.count(seq_base + 2).__next__, begin=False)
        name = table.name
        attrs = [('NFTA_TABLE_NAME', name), ('NFTA_TABLE_FLAGS', 0)]
        if marker:
            attrs.append(('NFTA_TABLE_USERDATA', marker_udata(marker)))
        body.add(f"add table inet {name}", m.TableMsg, m.NFT_MSG_NEWTABLE, attrs)
        for set_id, set_def in enumerate(table.sets, 1):
            body.add(f"add set {set_def.name}", m.SetMsg, m.NFT_MSG_NEWSET,
                     _set_attrs(name, set_def, set_id))
        # Regular chains first (stable order otherwise): the kernel keeps creation order,
        # which is what `nft list` and read_table() show. Every chain exists before the
        # first rule, so jumps resolve either way; base chains only see packets after commit.
        for chain in sorted(table.chains, key=lambda c: bool(c.hook)):
            body.add(f"add chain {chain.name}", m.ChainMsg, m.NFT_MSG_NEWCHAIN,
                     _chain_attrs(name, chain))
        _add_rules(body, table)
        self.body = body.messages
        self.next_seq = seq_base + 2 + len(self.body)

    def messages(self, elements, genid=None, delete="destroy"):
        """The whole transaction, BEGIN to END, with `elements` in the new sets."""
        name = self.table.name
        begin = self.seq_base
        out = [("begin transaction",
                m.batch_control(m.NFNL_MSG_BATCH_BEGIN, begin, genid), begin)]
        if delete in ("destroy", "delete"):
            msg_type = m.NFT_MSG_DESTROYTABLE if delete == "destroy" else m.NFT_MSG_DELTABLE
            out.append((f"{delete} table inet {name}",
                        m.build(m.TableMsg, msg_type, [('NFTA_TABLE_NAME', name)], begin + 1,
                                flags=m.NLM_F_REQUEST | m.NLM_F_ACK), begin + 1))
        out += self.body
        tail = _Batch(itertools.count(self.next_seq).__next__, begin=False)
        wanted = {s.name for s in self.table.sets}
        _add_element_messages(tail, name, {k: v for k, v in elements.items() if k in wanted},
                              m.NFT_MSG_NEWSETELEM, "add")
        return out + tail.finish()


def _set_attrs(table_name, set_def, set_id):
    _nft_name, key_type, key_len = ir.SET_KEY_TYPES[set_def.key]
    # NFTA_SET_ID (unique within the transaction) is mandatory for NEWSET: EINVAL
    # without it. KEYBYTEORDER=host: without it `nft list` prints keys byte-swapped.
    return [('NFTA_SET_TABLE', table_name), ('NFTA_SET_NAME', set_def.name),
            ('NFTA_SET_FLAGS', 0), ('NFTA_SET_KEY_TYPE', key_type),
            ('NFTA_SET_KEY_LEN', key_len), ('NFTA_SET_ID', set_id),
            ('NFTA_SET_USERDATA', KEYBYTEORDER_HOST)]


def _chain_attrs(table_name, chain):
    attrs = [('NFTA_CHAIN_TABLE', table_name), ('NFTA_CHAIN_NAME', chain.name)]
    if chain.hook:
        attrs += [('NFTA_CHAIN_HOOK', {'attrs': [('NFTA_HOOK_HOOKNUM', HOOKS[chain.hook]),
                                                 ('NFTA_HOOK_PRIORITY', chain.priority)]}),
                  ('NFTA_CHAIN_POLICY', POLICIES[chain.policy]),
                  ('NFTA_CHAIN_TYPE', 'filter')]
    return attrs


def _add_rules(batch, table):
    counts = {}
    flags = m.NLM_F_REQUEST | m.NLM_F_ACK | m.NLM_F_CREATE | m.NLM_F_APPEND
    for rule in table.rules:
        counts[rule.chain] = counts.get(rule.chain, 0) + 1
        udata = _comment_udata(rule.comment) if rule.comment else None
        seq = batch.next_seq()
        data = m.raw_message(m.NFT_MSG_NEWRULE, flags, seq,
                             rule_body(table.name, rule.chain, rule.exprs, udata))
        _check_rule_shape(table.name, rule, udata, data, seq, flags)
        batch.messages.append((f"add rule #{counts[rule.chain]} to chain {rule.chain}",
                               data, seq))


# Rule messages are written directly (nftnl_expr.rule_body, ~100x faster than pyroute2);
# the first rule of every shape is also encoded by pyroute2 and must come out identical.
_RULE_SHAPES = set()


def _rule_shape(rule, udata):
    return (bool(udata),) + tuple(
        (e[0], e[1], len(e)) if e and e[0] in ("verdict", "reject", "meta", "socket", "ct")
        else (e[0] if e else None, len(e)) for e in rule.exprs)


def _check_rule_shape(table_name, rule, udata, data, seq, flags):
    shape = _rule_shape(rule, udata)
    if shape in _RULE_SHAPES:
        return
    attrs = [('NFTA_RULE_TABLE', table_name),
             ('NFTA_RULE_CHAIN', rule.chain),
             ('NFTA_RULE_EXPRESSIONS', [encode_expr(e) for e in rule.exprs])]
    if udata:
        attrs.append(('NFTA_RULE_USERDATA', udata))
    reference = m.build(m.RuleMsg, m.NFT_MSG_NEWRULE, attrs, seq, flags=flags)
    if reference != data:
        raise m.EncodingError(f"rule encoding differs from pyroute2's for {rule!r}")
    _RULE_SHAPES.add(shape)


MAX_COMMENT = 253      # the kernel caps rule userdata at 256 bytes: 2-byte TLV header + NUL


def _comment_udata(comment):
    """As nft writes it: one NFTNL_UDATA_RULE_COMMENT TLV, NUL-terminated.

    A longer comment is cut (at a character boundary) rather than failing the reload:
    it only documents where a rule comes from.
    """
    raw = comment.encode()
    if len(raw) > MAX_COMMENT:
        raw = raw[:MAX_COMMENT].decode("utf-8", "ignore").encode()
    return m.udata_tlvs([(m.NFTNL_UDATA_RULE_COMMENT, raw + b"\0")])


def _add_element_messages(batch, table_name, elements, msg_type, verb):
    for set_name, keys in elements.items():
        keys = list(keys)
        for start in range(0, len(keys), ELEMENTS_PER_MESSAGE):
            chunk = keys[start:start + ELEMENTS_PER_MESSAGE]
            # NLM_F_CREATE without EXCL: adding an element that exists is not an error
            flags = m.NLM_F_CREATE if msg_type == m.NFT_MSG_NEWSETELEM else 0
            seq = batch.next_seq()
            # The login path's encoder: byte-identical to pyroute2's for these messages
            # (tests/unit/test_nftnl_encode.py) and two orders of magnitude faster.
            data = element_list_message(msg_type, m.NLM_F_REQUEST | m.NLM_F_ACK | flags,
                                        seq, table_name, set_name,
                                        [bytes.fromhex(k) for k in chunk])
            batch.messages.append((f"{verb} {len(chunk)} element(s) of set {set_name}",
                                   data, seq))


# -- drift ---------------------------------------------------------------------------

def expected_summary(table):
    """What Ruleset.summary() reads back after `table` was sent (marker aside): the
    expressions as we encode them (NFTA_LIST_ELEM payloads)."""
    rules = {c.name: [] for c in table.chains}
    for rule in table.rules:
        udata = _comment_udata(rule.comment) if rule.comment else None
        rules.setdefault(rule.chain, []).append(
            (_decode_comment(udata), tuple(expr_bytes(e)[4:] for e in rule.exprs)))
    return {"marker": None,
            "sets": {s.name: ir.SET_KEY_TYPES[s.key][1] for s in table.sets},
            "chains": {c.name: ((HOOKS[c.hook], c.priority, POLICIES[c.policy])
                                if c.hook else None) for c in table.chains},
            "rules": rules}


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


_NESTED = {("immediate", 2), ("immediate", 2, 2), ("cmp", 3), ("range", 3), ("range", 4),
           ("bitwise", 4), ("bitwise", 5)}


def _attrs_within(want, have, depth, path=()):
    """Every attribute of `want` is in `have` with the same payload; nested ones (the
    expression's data, data values, verdicts) compared the same way."""
    want_attrs = m.parse_attrs(want, 0)
    have_attrs = m.parse_attrs(have, 0)
    if not path:                                    # an NFTA_LIST_ELEM item
        name = want_attrs.get(m.NFTA_EXPR_NAME)
        if name != have_attrs.get(m.NFTA_EXPR_NAME):
            return False
        return _attrs_within(want_attrs.get(m.NFTA_EXPR_DATA, b""),
                             have_attrs.get(m.NFTA_EXPR_DATA, b""), depth,
                             (_cstr(name),))
    for kind, value in want_attrs.items():
        got = have_attrs.get(kind)
        if got is None:
            return False
        if value != got and not (path + (kind,) in _NESTED
                                 and _attrs_within(value, got, depth, path + (kind,))):
            return False
    return True


# -- the connection --------------------------------------------------------------------

class Ruleset:
    """One netlink connection to nf_tables in the current network namespace.

    The socket is bound to the namespace of the thread that creates the Ruleset.
    """

    def __init__(self):
        self._conn = Connection()
        self._destroy_supported = None

    def close(self):
        self._conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- reads --

    def generation(self):
        (reply,) = self._conn.request(m.GenMsg, m.NFT_MSG_GETGEN, [], "read ruleset generation",
                                      family=m.NFPROTO_UNSPEC)
        return m.attr(reply, 'NFTA_GEN_ID')

    def table_exists(self, table=TABLE_NAME):
        try:
            self._conn.request(m.TableMsg, m.NFT_MSG_GETTABLE, [('NFTA_TABLE_NAME', table)],
                               f"read table inet {table}")
        except KernelError as exc:
            if exc.errno == errno.ENOENT:
                return False
            raise
        return True

    def read_elements(self, table=TABLE_NAME):
        """set name -> [key hex] for every set of the table ({} when there is none)."""
        return self._consistent(lambda: self._elements(table))

    def read_table(self, table=TABLE_NAME):
        """The table as an ir.TableDef (rules grouped by chain, in kernel order), or None."""
        return self._consistent(lambda: self._table(table))

    def read_counters(self, table=TABLE_NAME):
        """[(chain, rule comment, packets, bytes)] for every rule with a counter."""
        return self._consistent(lambda: self._counters(table))

    def summary(self, table=TABLE_NAME):
        """What the table looks like, cheaply (raw dumps, no pyroute2 decoding), or
        None when there is none: {"marker": str or None, "sets": {name: key type},
        "chains": {name: (hook number, priority, policy) or None},
        "rules": {chain: [(comment, (expression bytes, ...)), ...]}}. For drift
        detection (gc, status); see differences()."""
        return self._consistent(lambda: self._summary(table))

    def _summary(self, table):
        try:
            (raw_table,) = self._conn.request(
                m.TableMsg, m.NFT_MSG_GETTABLE, [('NFTA_TABLE_NAME', table)],
                f"read table inet {table}", raw=True)
        except KernelError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise
        udata = m.parse_attrs(raw_table).get(m.NFTA_TABLE_USERDATA, b"")
        marker = m.parse_udata(udata).get(MARKER_TYPE)
        out = {"marker": marker.decode("utf-8", "replace") if marker is not None else None,
               "sets": {}, "chains": {}, "rules": {}}
        for raw in self._raw_dump(m.SetMsg, m.NFT_MSG_GETSET, [('NFTA_SET_TABLE', table)],
                                  f"list sets of table inet {table}"):
            attrs = m.parse_attrs(raw)
            if _cstr(attrs.get(m.NFTA_SET_TABLE)) == table:
                out["sets"][_cstr(attrs.get(m.NFTA_SET_NAME))] = _be32(
                    attrs.get(m.NFTA_SET_KEY_TYPE))
        for raw in self._raw_dump(m.ChainMsg, m.NFT_MSG_GETCHAIN,
                                  [('NFTA_CHAIN_TABLE', table)],
                                  f"list chains of table inet {table}"):
            attrs = m.parse_attrs(raw)
            if _cstr(attrs.get(m.NFTA_CHAIN_TABLE)) != table:
                continue
            hook = attrs.get(m.NFTA_CHAIN_HOOK)
            base = None
            if hook is not None:
                hook_attrs = m.parse_attrs(hook, 0)
                base = (_be32(hook_attrs.get(m.NFTA_HOOK_HOOKNUM)),
                        _be32s(hook_attrs.get(m.NFTA_HOOK_PRIORITY)),
                        _be32(attrs.get(m.NFTA_CHAIN_POLICY)))
            name = _cstr(attrs.get(m.NFTA_CHAIN_NAME))
            out["chains"][name] = base
            out["rules"].setdefault(name, [])
        for attrs in self._rule_attrs(table):
            comment = _decode_comment(attrs.get(m.NFTA_RULE_USERDATA))
            exprs = tuple(item for kind, item
                          in m.iter_attrs(attrs.get(m.NFTA_RULE_EXPRESSIONS, b""))
                          if kind == m.NFTA_LIST_ELEM)
            out["rules"].setdefault(_cstr(attrs.get(m.NFTA_RULE_CHAIN)), []).append(
                (comment, exprs))
        return out

    def _rule_attrs(self, table):
        """The attributes of every rule of the table, parsed from the raw dump."""
        for raw in self._raw_dump(m.RuleMsg, m.NFT_MSG_GETRULE, [('NFTA_RULE_TABLE', table)],
                                  f"list rules of table inet {table}"):
            attrs = m.parse_attrs(raw)
            if _cstr(attrs.get(m.NFTA_RULE_TABLE)) == table:
                yield attrs

    def _raw_dump(self, cls, msg_type, attrs, what):
        try:
            return self._conn.request(cls, msg_type, attrs, what, dump=True, raw=True)
        except KernelError as exc:
            if exc.errno == errno.ENOENT:
                raise DumpInterrupted() from None
            raise

    def _consistent(self, read):
        """Run a multi-dump read until no ruleset change happened in between."""
        for _ in range(DUMP_RETRIES):
            before = self.generation()
            try:
                result = read()
            except DumpInterrupted:
                continue
            if self.generation() == before:
                return result
        raise KernelError("read a consistent ruleset", errno.EAGAIN,
                          "it kept changing while being read")

    def _dump(self, cls, msg_type, attrs, what):
        try:
            return self._conn.request(cls, msg_type, attrs, what, dump=True)
        except KernelError as exc:
            if exc.errno == errno.ENOENT:       # the table vanished meanwhile
                raise DumpInterrupted() from None
            raise

    def _sets(self, table):
        msgs = self._dump(m.SetMsg, m.NFT_MSG_GETSET, [('NFTA_SET_TABLE', table)],
                          f"list sets of table inet {table}")
        return [msg for msg in msgs if m.attr(msg, 'NFTA_SET_TABLE') == table]

    def _elements(self, table):
        if not self.table_exists(table):
            return {}
        result = {}
        for raw in self._raw_dump(m.SetMsg, m.NFT_MSG_GETSET, [('NFTA_SET_TABLE', table)],
                                  f"list sets of table inet {table}"):
            attrs = m.parse_attrs(raw)
            if _cstr(attrs.get(m.NFTA_SET_TABLE)) == table:
                name = _cstr(attrs.get(m.NFTA_SET_NAME))
                result[name] = self._set_keys(table, name)
        return result

    def _set_keys(self, table, name):
        # Raw parsing (no pyroute2 decoding): gc and status read every live element
        # every minute.
        msgs = self._raw_dump(m.SetElemMsg, m.NFT_MSG_GETSETELEM,
                              [('NFTA_SET_ELEM_LIST_TABLE', table),
                               ('NFTA_SET_ELEM_LIST_SET', name)],
                              f"list elements of set {name}")
        keys = []
        for raw in msgs:
            for kind, items in m.iter_attrs(raw, 20):
                if kind != m.NFTA_SET_ELEM_LIST_ELEMENTS:
                    continue
                for item_kind, item in m.iter_attrs(items):
                    if item_kind != m.NFTA_LIST_ELEM:
                        continue
                    key = m.parse_attrs(item, 0).get(m.NFTA_SET_ELEM_KEY)
                    if key is not None:
                        value = m.parse_attrs(key, 0).get(m.NFTA_DATA_VALUE)
                        if value is not None:
                            keys.append(value.hex())
        return keys

    def _table(self, table):
        if not self.table_exists(table):
            return None
        sets = tuple(_decode_set(msg) for msg in self._sets(table))
        chains = tuple(_decode_chain(msg) for msg in self._dump(
            m.ChainMsg, m.NFT_MSG_GETCHAIN, [('NFTA_CHAIN_TABLE', table)],
            f"list chains of table inet {table}")
            if m.attr(msg, 'NFTA_CHAIN_TABLE') == table)
        # The kernel dumps rules chain by chain, in chain order: ir's rule order.
        rules = tuple(rule for rule, _counters in self._rules(table))
        return ir.TableDef(sets=sets, chains=chains, rules=rules, family="inet", name=table)

    def _rules(self, table):
        """[(RuleDef, [(packets, bytes)...])] in dump order."""
        msgs = self._dump(m.RuleMsg, m.NFT_MSG_GETRULE, [('NFTA_RULE_TABLE', table)],
                          f"list rules of table inet {table}")
        out = []
        for msg in msgs:
            if m.attr(msg, 'NFTA_RULE_TABLE') != table:
                continue
            exprs = m.attr(msg, 'NFTA_RULE_EXPRESSIONS') or ()
            rule = ir.RuleDef(chain=m.attr(msg, 'NFTA_RULE_CHAIN'),
                              exprs=tuple(decode_expr(e, m.attr) for e in exprs),
                              comment=_decode_comment(m.attr(msg, 'NFTA_RULE_USERDATA')))
            counters = [c for c in (counter_values(e, m.attr) for e in exprs) if c is not None]
            out.append((rule, counters))
        return out

    def _counters(self, table):
        # Raw parsing: decoding every rule with pyroute2 took 16 s for 20,000 rules.
        if not self.table_exists(table):
            return []
        out = []
        for attrs in self._rule_attrs(table):
            chain = _cstr(attrs.get(m.NFTA_RULE_CHAIN))
            comment = _decode_comment(attrs.get(m.NFTA_RULE_USERDATA))
            for kind, item in m.iter_attrs(attrs.get(m.NFTA_RULE_EXPRESSIONS, b"")):
                expr = m.parse_attrs(item, 0)
                if kind != m.NFTA_LIST_ELEM or _cstr(expr.get(m.NFTA_EXPR_NAME)) != "counter":
                    continue
                data = m.parse_attrs(expr.get(m.NFTA_EXPR_DATA, b""), 0)
                out.append((chain, comment, _be64(data.get(m.NFTA_COUNTER_PACKETS)),
                            _be64(data.get(m.NFTA_COUNTER_BYTES))))
        return out

    # -- writes --

    def replace_table(self, table, elements, genid=None, prepared=None):
        """Replace the whole table (and put `elements` in its sets) in one transaction.

        With `genid`, the kernel refuses the transaction if the ruleset changed since
        that generation was read: GenerationChanged. `prepared`: a PreparedTable of
        `table` (with the table's marker), else one without a marker.

        When the kernel's answers are lost (AcksLost), the outcome is read from the
        ruleset: a table carrying this transaction's marker means it was committed
        (success); otherwise it was not (GenerationChanged when the generation moved
        on, else AcksLost).
        """
        if prepared is None:
            prepared = PreparedTable(table)
        if self._supports_destroy():
            delete = "destroy"
        else:
            delete = "delete" if self.table_exists(prepared.table.name) else None
        messages = prepared.messages(elements, genid, delete)
        try:
            self._conn.batch(f"replace table inet {prepared.table.name}", messages)
        except AcksLost:
            summary = self.summary(prepared.table.name)
            if prepared.marker and summary and summary["marker"] == prepared.marker:
                return
            if genid is not None and self.generation() != genid:
                raise GenerationChanged(f"replace table inet {prepared.table.name}",
                                        errno.ERESTART, "the ruleset changed since it was read")
            raise

    def add_elements(self, elements, table=TABLE_NAME):
        self._element_batch(elements, table, m.NFT_MSG_NEWSETELEM, "add")

    def destroy_elements(self, elements, table=TABLE_NAME):
        """Remove elements; absent ones are not an error (NFT_MSG_DESTROYSETELEM)."""
        self._element_batch(elements, table, m.NFT_MSG_DESTROYSETELEM, "destroy")

    def _element_batch(self, elements, table, msg_type, verb):
        batch = _Batch(self._conn.next_seq)
        _add_element_messages(batch, table, elements, msg_type, verb)
        messages = batch.finish()
        if len(messages) > 2:
            self._conn.batch(f"{verb} elements in table inet {table}", messages)

    def delete_table(self, table=TABLE_NAME):
        """Delete the table; False when there was none."""
        batch = _Batch(self._conn.next_seq)
        batch.add(f"delete table inet {table}", m.TableMsg, m.NFT_MSG_DELTABLE,
                  [('NFTA_TABLE_NAME', table)], flags=0)
        try:
            self._conn.batch(f"delete table inet {table}", batch.finish())
        except KernelError as exc:
            if exc.errno == errno.ENOENT:
                return False
            raise
        return True

    def _supports_destroy(self):
        """NFT_MSG_DESTROY* exist from Linux 6.3; older kernels answer EINVAL (unknown
        message type). Probed with a batch that destroys a table that cannot exist: a
        transaction without changes does not bump the generation."""
        if self._destroy_supported is None:
            batch = _Batch(self._conn.next_seq)
            batch.add("probe NFT_MSG_DESTROYTABLE", m.TableMsg, m.NFT_MSG_DESTROYTABLE,
                      [('NFTA_TABLE_NAME', "netfence-probe-absent")], flags=0)
            try:
                self._conn.batch("probe NFT_MSG_DESTROYTABLE", batch.finish())
                self._destroy_supported = True
            except KernelError as exc:
                if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                    raise
                self._destroy_supported = False
        return self._destroy_supported


def _decode_set(msg):
    key_type = m.attr(msg, 'NFTA_SET_KEY_TYPE')
    for name, (_nft_name, type_id, _length) in ir.SET_KEY_TYPES.items():
        if type_id == key_type:
            return ir.SetDef(name=m.attr(msg, 'NFTA_SET_NAME'), key=name)
    return ir.SetDef(name=m.attr(msg, 'NFTA_SET_NAME'), key=f"type-{key_type}")


def _decode_chain(msg):
    name = m.attr(msg, 'NFTA_CHAIN_NAME')
    hook = m.attr(msg, 'NFTA_CHAIN_HOOK')
    if hook is None:
        return ir.ChainDef(name=name)
    hooks = {v: k for k, v in HOOKS.items()}
    policies = {v: k for k, v in POLICIES.items()}
    return ir.ChainDef(name=name, hook=hooks.get(m.attr(hook, 'NFTA_HOOK_HOOKNUM'), "?"),
                       priority=m.attr(hook, 'NFTA_HOOK_PRIORITY'),
                       policy=policies.get(m.attr(msg, 'NFTA_CHAIN_POLICY'), "?"))


def _cstr(data):
    return data.rstrip(b"\0").decode("utf-8", "replace") if data is not None else None


def _be32(data):
    return int.from_bytes(data, "big") if data is not None else None


def _be64(data):
    return int.from_bytes(data, "big") if data is not None else 0


def _be32s(data):
    return int.from_bytes(data, "big", signed=True) if data is not None else None


def _decode_comment(udata):
    if not udata:
        return ""
    raw = m.parse_udata(udata).get(m.NFTNL_UDATA_RULE_COMMENT, b"")
    return raw.rstrip(b"\0").decode("utf-8", "replace")
