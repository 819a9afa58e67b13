"""The ruleset as data: what `compiler.py` produces and `nftnl_batch` encodes.

Expressions are tuples close to the kernel's nf_tables expressions, so encoding them is
mechanical and `render.py` can print them as `nft list` would. Byte strings are hex
(`"0a000000"`), so a whole table round-trips through JSON unchanged. Every expression
that loads a value loads it into register 1 (NFT_REG_1); every comparison reads it.
The exceptions: the log rule of emit-P (compiler_denials._emit_rules), which saves the
packet's mark in register 2 and puts it back after the nflog copy was taken, and the
profiles' lookup rules (compiler_lookups), which load the fields of a concatenated key
into consecutive 32-bit registers from NFT_REG32_00 (8) on, a field of n bytes taking
ceil(n/4) of them (the kernel zero-pads a short load), for a "vmap" lookup.

  ("meta", key)                      key: nfproto l4proto skuid skgid oif iif mark
  ("meta", key, reg)                 the same into register `reg` (the kernel's number:
                                     2: NFT_REG_2; 8.. : NFT_REG32_00.., a lookup key)
  ("meta_set", key, reg)             key: mark; the packet's mark = register `reg`
  ("payload", base, offset, length)  base: network | transport
  ("payload", base, offset, length, reg)   the same into register `reg` (8..: a key field)
  ("socket", "cgroupv2", level)      the socket's cgroup v2 ancestor id at `level`
  ("ct", "state")
  ("byteorder", op, len, size)       op: hton | ntoh; reg1 converted in place, `len`
                                     bytes in words of `size` (an interval set's key)
  ("byteorder", op, len, size, reg)  the same on register `reg` (sreg = dreg = reg): the
                                     oif/iif field of a lookup key, big-endian like nft
                                     makes it (`nft list` then prints "lo", and `nft -f`
                                     of the listing takes its ranges back: nft parses an
                                     iface_index up to 2^31-1 only)
  ("bitwise", mask_hex, xor_hex)     reg1 = (reg1 & mask) ^ xor, len = len(mask)
  ("cmp", op, data_hex)              op: eq neq lt lte gt gte
  ("range", op, from_hex, to_hex)    op: eq neq
  ("lookup", set_name)               match when reg1 is an element of the set
  ("vmap", set_name, sreg)           verdict map lookup of the key from register `sreg`
                                     on (NFT_REG32_xx: a concatenation): the element's
                                     verdict applies (its goto); a miss ends the rule
  ("counter",)
  ("limit", rate, per_seconds, burst)   packets
  ("log", prefix, flags)             flags: NF_LOG_* bitmask (0x08 = NF_LOG_UID)
  ("nflog", prefix, group, snaplen)  a copy (snaplen bytes) to nfnetlink_log `group`
  ("reject", kind)                   kind: tcp-reset | icmpx-port-unreachable
  ("verdict", kind)                  kind: accept drop return
  ("verdict", kind, chain)           kind: jump goto
"""

from dataclasses import dataclass

from . import setkinds

TABLE_FAMILY = "inet"
TABLE_NAME = setkinds.TABLE


@dataclass(frozen=True)
class SetDef:
    name: str
    key: str              # a setkinds.KEY_TYPES name (an nftables datatype), or "concat"
    interval: bool = False  # ranges (NFT_SET_INTERVAL): keys big-endian, start/end
    timeout: bool = False   # NFT_SET_TIMEOUT: every element carries a kernel timeout
    counter: bool = False   # NFTA_SET_EXPR counter: every element counts what it matched
    # key "concat": the fields, ((nft datatype, byte length), ...), e.g.
    # (("iface_index", 4), ("inet_proto", 1), ("ipv4_addr", 4), ("inet_service", 2));
    # each field's bytes padded to a multiple of 4 in the key (its registers)
    fields: tuple = ()
    data: str = ""          # "verdict": a verdict map (NFT_SET_MAP, NFT_DATA_VERDICT)
    # static elements, created with the table in the same batch (after the chains they
    # name): ((key_hex, key_end_hex, chain_name), ...), each `goto chain_name`; with
    # interval, key..key_end is the inclusive box (NFTA_SET_ELEM_KEY_END, pipapo)
    elements: tuple = ()

    def __post_init__(self):
        # JSON gives lists: keep the dataclass hashable and comparable either way
        object.__setattr__(self, "fields", tuple(tuple(f) for f in self.fields))
        object.__setattr__(self, "elements", tuple(tuple(e) for e in self.elements))


def padded_length(length):
    """The bytes a key field of `length` bytes takes: whole 32-bit registers."""
    return (length + 3) // 4 * 4


def field_spans(fields):
    """[(start, end)] of each field in a concatenated key's bytes ((datatype, length)
    pairs, as SetDef.fields): each field padded to whole registers."""
    spans, offset = [], 0
    for _, length in fields:
        spans.append((offset, offset + padded_length(length)))
        offset = spans[-1][1]
    return spans


def key_length(fields):
    """A concatenation's key length (NFTA_SET_KEY_LEN): its fields' padded lengths."""
    return sum(padded_length(length) for _, length in fields)


@dataclass(frozen=True)
class ChainDef:
    name: str
    hook: str = ""        # "" for a regular chain, else "output" or "input"
    priority: int = 0
    policy: str = "accept"


@dataclass(frozen=True)
class RuleDef:
    chain: str
    exprs: tuple          # expression tuples, see the module docstring
    comment: str = ""     # where the rule comes from, e.g. "web-only egress 2 (/etc/…:12)"


# to_json writes every dict's keys in sorted order: json.dumps(table.to_json()) is then
# the sort_keys=True text without sorting ~4,000 dicts again (compiler.compile_snapshot).

def _set_json(set_def):
    """asdict without its deep copies (a map's elements are thousands of tuples)."""
    return {"counter": set_def.counter, "data": set_def.data,
            "elements": [list(e) for e in set_def.elements],
            "fields": [list(f) for f in set_def.fields], "interval": set_def.interval,
            "key": set_def.key, "name": set_def.name, "timeout": set_def.timeout}


def _chain_json(chain):
    return {"hook": chain.hook, "name": chain.name, "policy": chain.policy,
            "priority": chain.priority}


@dataclass(frozen=True)
class TableDef:
    sets: tuple           # SetDef...
    chains: tuple         # ChainDef..., regular chains before the base chains that use them
    rules: tuple          # RuleDef..., in chain order
    family: str = TABLE_FAMILY
    name: str = TABLE_NAME

    def to_json(self):
        """The table as JSON data, every dict's keys in sorted order."""
        return {
            "chains": [_chain_json(c) for c in self.chains],
            "family": self.family,
            "name": self.name,
            "rules": [{"chain": r.chain, "comment": r.comment,
                       "exprs": [list(e) for e in r.exprs]} for r in self.rules],
            "sets": [_set_json(s) for s in self.sets],
        }

    @classmethod
    def from_json(cls, data):
        return cls(
            family=data["family"],
            name=data["name"],
            sets=tuple(SetDef(**s) for s in data["sets"]),
            chains=tuple(ChainDef(**c) for c in data["chains"]),
            rules=tuple(RuleDef(r["chain"], tuple(tuple(e) for e in r["exprs"]), r["comment"])
                        for r in data["rules"]),
        )
