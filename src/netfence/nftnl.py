"""The reload-side connection to nf_tables: write and read the `inet netfence` table.

`Ruleset` sends the transactions nftnl_batch encodes (one batch, an ack on every
message) and reads tables, set elements and counters back through nftnl_dump's
decoders. Everything happens in the caller's network namespace.

Element keys are hex strings of the exact key bytes, in the host byte order the kernel
compares them in (setkinds.SetKind.key).

No pyroute2 on this path (it costs ~100 ms to import): nftnl_wire encodes the
requests and splits the answers; only read_table decodes whole expressions with
pyroute2 (imported then). The login hook never imports this module. The encoder's
and the drift check's public names are importable from here too.
"""

import errno

from . import ir, nftnl_dump as dump, nftnl_wire as wire
from . import nfconst as nf
from .errors import GenerationChanged, KernelError
from .nftnl_batch import (Batch, PreparedTable, add_element_messages, add_static_replacement,
                          add_timed_messages, encode_batch)
from .nftnl_drift import differences, expected_summary
from .nftnl_sock import AcksLost, Connection, DumpInterrupted

__all__ = ["Ruleset", "PreparedTable", "encode_batch", "expected_summary", "differences"]

TABLE_NAME = ir.TABLE_NAME
DUMP_RETRIES = 5
GEN_ID = 1              # NFTA_GEN_ID


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
        (reply,) = self._conn.request(nf.NFT_MSG_GETGEN, [], "read ruleset generation",
                                      family=nf.NFPROTO_UNSPEC)
        return int.from_bytes(wire.parse_attrs(reply)[GEN_ID], nf.NETWORK_ORDER)

    def table_exists(self, table=TABLE_NAME):
        try:
            self._conn.request(nf.NFT_MSG_GETTABLE, [('NFTA_TABLE_NAME', table)],
                               f"read table inet {table}")
        except KernelError as exc:
            if exc.errno == errno.ENOENT:
                return False
            raise
        return True

    def read_elements(self, table=TABLE_NAME):
        """set name -> [key hex] for every set of the table but the lookup maps, whose
        elements are the compiled policy's, not live state ({} without a table)."""
        return self._consistent(lambda: self._elements(table))

    def read_table(self, table=TABLE_NAME):
        """The table as an ir.TableDef (rules grouped by chain, in kernel order), or None."""
        return self._consistent(lambda: self._table(table))

    def read_counters(self, table=TABLE_NAME):
        """[(chain, rule comment, packets, bytes)] for every rule with a counter."""
        return self._consistent(lambda: self._counters(table))

    def summary(self, table=TABLE_NAME):
        """What the table looks like, cheaply (raw dumps, no pyroute2 decoding), or
        None when there is none: {"marker": str or None, "sets": {name: (key type,
        counted)}, "maps": {name: (shape, elements)} (nftnl_maps.map_summary),
        "chains": {name: (hook number, priority, policy) or None},
        "rules": {chain: [(comment, (expression bytes, ...)), ...]}}. For drift
        detection (gc, status); see differences()."""
        return self._consistent(lambda: self._summary(table))

    def _summary(self, table):
        try:
            (raw_table,) = self._conn.request(
                nf.NFT_MSG_GETTABLE, [('NFTA_TABLE_NAME', table)],
                f"read table inet {table}")
        except KernelError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise
        return dump.summary_of(table, raw_table, self._raw_sets(table),
                               self._raw_chains(table), self._raw_rules(table),
                               lambda name: self._raw_elements(table, name))

    def _raw_sets(self, table):
        return self._dump(nf.NFT_MSG_GETSET, [('NFTA_SET_TABLE', table)],
                          f"list sets of table inet {table}")

    def _raw_chains(self, table):
        return self._dump(nf.NFT_MSG_GETCHAIN, [('NFTA_CHAIN_TABLE', table)],
                          f"list chains of table inet {table}")

    def _raw_rules(self, table):
        return self._dump(nf.NFT_MSG_GETRULE, [('NFTA_RULE_TABLE', table)],
                          f"list rules of table inet {table}")

    def _dump(self, msg_type, attrs, what, raw=True):
        try:
            return self._conn.request(msg_type, attrs, what, dump=True, raw=raw)
        except KernelError as exc:
            if exc.errno == errno.ENOENT:       # the table vanished meanwhile
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

    def _elements(self, table):
        if not self.table_exists(table):
            return {}
        return {name: self._set_keys(table, name)
                for name in dump.set_names(table, self._raw_sets(table), maps=False)}

    def read_intervals(self, names, table=TABLE_NAME):
        """set name -> {(hex key, is_end)} of the named sets (absent sets: left out);
        is_end is always False outside interval sets."""
        wanted = set(names)
        return self._consistent(lambda: {
            name: set(self._set_keys(table, name, True))
            for name in dump.set_names(table, self._raw_sets(table)) if name in wanted}
            if self.table_exists(table) else {})

    def read_expiries(self, names, table=TABLE_NAME):
        """set name -> {hex key: ms left} of the named timed sets (absent sets left
        out; a key without a timeout: None), read consistently; {} without a table."""
        wanted = set(names)
        return self._consistent(lambda: {
            name: dump.set_expiries(self._raw_elements(table, name))
            for name in dump.set_names(table, self._raw_sets(table)) if name in wanted}
            if self.table_exists(table) else {})

    def _set_keys(self, table, name, with_flags=False):
        return dump.set_keys(self._raw_elements(table, name), with_flags)

    def _raw_elements(self, table, name):
        return self._dump(
            nf.NFT_MSG_GETSETELEM,
            [('NFTA_SET_ELEM_LIST_TABLE', table), ('NFTA_SET_ELEM_LIST_SET', name)],
            f"list elements of set {name}")

    def _table(self, table):
        if not self.table_exists(table):
            return None
        # pyroute2-decoded (whole expressions): the one read that imports it
        sets = self._dump(nf.NFT_MSG_GETSET, [('NFTA_SET_TABLE', table)],
                          f"list sets of table inet {table}", raw=False)
        chains = self._dump(nf.NFT_MSG_GETCHAIN, [('NFTA_CHAIN_TABLE', table)],
                            f"list chains of table inet {table}", raw=False)
        rules = self._dump(nf.NFT_MSG_GETRULE, [('NFTA_RULE_TABLE', table)],
                           f"list rules of table inet {table}", raw=False)
        return dump.table_of(table, sets, chains, rules)

    def _counters(self, table):
        if not self.table_exists(table):
            return []
        return dump.counters_of(table, self._raw_rules(table))

    # -- writes --

    def replace_table(self, table, elements, genid=None, prepared=None, timed=None,
                      counts=None):
        """Replace the whole table (and put `elements` in its sets, `timed` ({set:
        {hex key: ms}}) in its timed sets, with `counts` ({set: {hex key: (packets,
        bytes)}}) the initial counters of counted sets' elements) in one transaction.

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
        messages = prepared.messages(elements, genid, delete, timed, counts)
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
        self._element_batch(elements, table, nf.NFT_MSG_NEWSETELEM, "add")

    def destroy_elements(self, elements, table=TABLE_NAME):
        """Remove elements; absent ones are not an error (NFT_MSG_DESTROYSETELEM)."""
        self._element_batch(elements, table, nf.NFT_MSG_DESTROYSETELEM, "destroy")

    def set_timed(self, destroy, add, table=TABLE_NAME):
        """One transaction: destroy `destroy` ({set: [hex key]}; absent keys are no
        error), then add `add` ({set: {hex key: timeout ms}}). A key in both gets
        exactly its new timeout (a NEWSETELEM alone may keep a longer one); a packet
        sees the old element or the new one, never none."""
        batch = Batch(self._conn.next_seq)
        add_element_messages(batch, table, destroy, nf.NFT_MSG_DESTROYSETELEM, "destroy")
        add_timed_messages(batch, table, add)
        messages = batch.finish()
        if len(messages) > 2:
            self._conn.batch(f"set timed elements in table inet {table}", messages)

    def replace_static(self, contents, table=TABLE_NAME):
        """One transaction: each static set of `contents` ({set: [(key bytes,
        is_end)]}) flushed and filled with its new elements, so a packet sees the old
        ranges or the new ones, never a mix, and never a moment without the fence."""
        batch = Batch(self._conn.next_seq)
        add_static_replacement(batch, table, contents)
        messages = batch.finish()
        if len(messages) > 2:
            self._conn.batch(f"replace ranges in table inet {table}", messages)

    def _element_batch(self, elements, table, msg_type, verb):
        batch = Batch(self._conn.next_seq)
        add_element_messages(batch, table, elements, msg_type, verb)
        messages = batch.finish()
        if len(messages) > 2:
            self._conn.batch(f"{verb} elements in table inet {table}", messages)

    def delete_table(self, table=TABLE_NAME):
        """Delete the table; False when there was none."""
        batch = Batch(self._conn.next_seq)
        batch.add(f"delete table inet {table}", nf.NFT_MSG_DELTABLE,
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
            batch = Batch(self._conn.next_seq)
            batch.add("probe NFT_MSG_DESTROYTABLE", nf.NFT_MSG_DESTROYTABLE,
                      [('NFTA_TABLE_NAME', "netfence-probe-absent")], flags=0)
            try:
                self._conn.batch("probe NFT_MSG_DESTROYTABLE", batch.finish())
                self._destroy_supported = True
            except KernelError as exc:
                if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                    raise
                self._destroy_supported = False
        return self._destroy_supported
