"""The lookup shape with `nft` as the independent oracle, whatever our encoder does.

Our rendering of a compiled table (render.py, what `explain` shows) is loaded with
`nft -f` into a private namespace: nft must list it back exactly as we print it, its
element bytes (nft --debug=netlink) must be the bytes our compiler wrote (the bytes
our encoder sends), and real connections through the maps nft built must meet the
policy's first match: so the maps' layout (big-endian oif, padded fields, inclusive
ends) is the kernel's and nft's, not only our own reading of it.
"""

import re
import struct

from netfence import compiler, render
from netfence.model import LOOPBACK, NetRule, Profile

RULES = (
    NetRule("allow", ("tcp",), ((8080, 8080),)),                       # 1
    NetRule("reject", ("tcp", "udp"), (), ("127.0.0.2/32",)),          # 2
    NetRule("deny", ("udp",), ((5000, 5000),)),                        # 3
    NetRule("allow", ("tcp",), ((9000, 9001),), ("::1/128",)),         # 4
    NetRule("allow", ("icmp",), (), ("10.0.0.0/8", "2001:db8::/32")),  # 5
    NetRule("deny", (), (), ("192.0.2.0/24",)),                        # 6
    NetRule("allow", ("tcp",), (), (LOOPBACK,)),                       # 7
)
PROFILE = Profile("t", egress=RULES, egress_default="reject",
                  ingress=(NetRule("allow", (), (), (LOOPBACK,)),
                           NetRule("allow", ("tcp",), ((22, 22),))), ingress_default="deny")


def load(netns, tmp_path):
    table = compiler.build_table([PROFILE])
    text = render.render_table(table)
    path = tmp_path / "table.nft"
    path.write_text(text)
    netns.nft("-f", str(path))
    return table, text


def test_nft_lists_our_rendering_back_and_holds_our_element_bytes(netns, tmp_path):
    table, text = load(netns, tmp_path)
    listing = netns.nft("list", "table", "inet", "netfence").stdout
    # nft adds its own `meta l4proto tcp` before a tcp reset it has no context for
    assert listing == text.replace("counter packets 0 bytes 0 reject with tcp reset",
                                   "meta l4proto tcp counter packets 0 bytes 0 reject "
                                   "with tcp reset")
    maps = [s for s in table.sets if s.data == "verdict"]
    assert {s.name for s in maps} == {"out-t.v4", "out-t.v4np", "out-t.v4nl", "out-t.v6",
                                      "out-t.v6np", "in-t.any", "in-t.anynp"}   # no v6 rule lacks a protocol
    for set_def in maps:
        debug = netns.nft("--debug=netlink", "list", "map", "inet", "netfence",
                          set_def.name).stdout
        assert kernel_elements(debug) == set(set_def.elements), set_def.name


def kernel_elements(debug):
    """(key hex, key end hex, chain) of each element nft's netlink debug shows: 32-bit
    words as host-order numbers."""
    found = set()
    for start, end, chain in re.findall(
            r"element ((?:[0-9a-f]{8} )+) - ((?:[0-9a-f]{8} )+) : goto -> (\S+)", debug):
        found.add((_words(start), _words(end), chain))
    return found


def _words(text):
    return b"".join(struct.pack("=I", int(word, 16)) for word in text.split()).hex()


def test_connections_through_the_maps_meet_the_first_matching_rule(nf, tmp_path):
    load(nf.netns, tmp_path)
    uid = 60041
    for name in ("uid-t", "any-uid"):
        nf.netns.nft("add", "element", "inet", "netfence", name, f"{{ {uid} }}")
    nf.echo_server(["tcp:0.0.0.0:8080", "tcp:[::]:9000",
                    "tcp:0.0.0.0:7000", "udp:0.0.0.0:5000", "udp:0.0.0.0:5001"])
    expected = {("tcp", "127.0.0.2", 8080): "ok",          # rule 1 before rule 2
                ("tcp", "127.0.0.2", 9000): "refused",     # rule 2: tcp reset
                ("tcp", "127.0.0.1", 9000): "ok",          # rule 7: loopback tcp
                ("tcp", "::1", 9000): "ok",                # rule 4
                ("udp", "127.0.0.1", 5000): "dropped",     # rule 3
                ("udp", "127.0.0.2", 5001): "dropped",     # rule 2 (a local reject: EPERM)
                ("udp", "127.0.0.1", 5001): "dropped"}     # the default
    for (proto, host, port), outcome in expected.items():
        got = nf.probe(proto, host, port, uid=uid, timeout=0.5)
        assert got == outcome, f"{proto} {host} {port}: {got} != {outcome}"
    assert nf.probe("udp", "127.0.0.1", 5001) == "ok"       # root: not restricted
    counters = nf.netns.nft("list", "chain", "inet", "netfence", "out-t.2").stdout
    assert re.search(r"counter packets [1-9]", counters), counters
    counters = nf.netns.nft("list", "chain", "inet", "netfence", "out-t.6").stdout
    assert "counter packets 0 " in counters                 # never reached
