"""render.py on the lookup shape: maps, lookup rules and rule chains as nft 1.0.6 lists
them. The expected strings are what `nft list table` printed for the same maps loaded
with `nft -f` (tests/golden holds whole tables; tests/integration compares against the
real listing)."""

from netfence import compiler, ir, render
from netfence.model import LOOPBACK, NetRule, Profile

FIELD_TEXT = {"iface_index": "oif", "inet_proto": "meta l4proto", "ipv4_addr": "ip daddr",
              "ipv6_addr": "ip6 daddr", "inet_service": "th dport"}
FIELDS_V4 = (("iface_index", 4), ("inet_proto", 1), ("ipv4_addr", 4), ("inet_service", 2))


def element(*fields):
    """((low, high) per field) of FIELDS_V4 -> an element going to chain c1."""
    def key(corner):
        return (corner[0].to_bytes(4, "big") + bytes([corner[1]]) + bytes(3)
                + corner[2].to_bytes(4, "big") + corner[3].to_bytes(2, "big") + bytes(2)).hex()
    return (key([f[0] for f in fields]), key([f[1] for f in fields]), "c1")


def test_a_map_lists_its_type_flags_and_one_element_a_line():
    net10 = (0x0A000000, 0x0AFFFFFF)
    m = ir.SetDef("m", "concat", interval=True, fields=FIELDS_V4, data="verdict", elements=(
        element((1, 1), (6, 6), net10, (22, 80)),
        element((2, 5), (0, 255), (0x0A010000, 0x0A0100FF), (0, 65535)),
        element((0, 2 ** 31 - 1), (58, 58), (0, 2 ** 32 - 1), (443, 443)),
        element((1, 2 ** 31 - 1), (7, 16), (0x01020304, 0x01020306), (443, 443))))
    assert render.render_set(m) == (
        "\tmap m {\n"
        "\t\ttype iface_index . inet_proto . ipv4_addr . inet_service : verdict\n"
        "\t\tflags interval\n"
        '\t\telements = { "lo" . tcp . 10.0.0.0/8 . 22-80 : goto c1,\n'
        "\t\t\t     2-5 . 0-255 . 10.1.0.0/24 . 0-65535 : goto c1,\n"
        "\t\t\t     0-2147483647 . ipv6-icmp . 0.0.0.0/0 . 443 : goto c1,\n"
        '\t\t\t     "lo"-2147483647 . 7-16 . 1.2.3.4-1.2.3.6 . 443 : goto c1 }\n'
        "\t}")


def test_protocol_points_by_their_etc_protocols_name_ranges_by_number():
    assert render.protocol_name(6) == "tcp" and render.protocol_name(58) == "ipv6-icmp"
    assert render._render_field("inet_proto", 1, 2, 5) == "2-5"
    assert render._render_field("ipv6_addr", 16, 0, 2 ** 128 - 1) == "::/0"
    assert render._render_field("ipv6_addr", 16, 1, 1) == "::1"


def test_lookup_rules_print_as_nft_folds_them():
    rules = (NetRule("allow", ("tcp",), ((443, 443),), ("10.0.0.0/8", "2001:db8::/32")),
             NetRule("deny", (), (), (LOOPBACK,)))
    table = compiler.build_table([Profile("web", egress=rules, egress_default="reject")])
    text = render.render_chain(table, next(c for c in table.chains if c.name == "out-web"))
    lines = text.splitlines()
    assert lines[-2:] == ["\t\tgoto out-web.default", "\t}"]
    # the fields in the key's order (the most selective first), the family test
    # folded into the address field
    expected = {}
    for s in table.sets:
        if s.data:
            fields = [FIELD_TEXT[name] for name, _ in s.fields]
            expected[s.name] = f"\t\t{' . '.join(fields)} vmap @{s.name}"
    # the main maps of both families, the guard, then the fallbacks
    assert lines[1:3] == [expected.pop("out-web.v4"), expected.pop("out-web.v6")]
    assert lines[3] == "\t\tth dport >= 0 goto out-web.default"
    assert lines[4:-2] == list(expected.values())
    assert len(lines[4:-2]) == 4 and "ip daddr . oif vmap @out-web.v4nl" in text
    default = next(c for c in table.chains if c.name == "out-web.default")
    assert render.render_chain(table, default) == (
        "\tchain out-web.default {\n"
        '\t\tcounter packets 0 bytes 0 goto out-web.reject comment "web egress default"\n\t}')
    rule_chain = next(c for c in table.chains if c.name == "out-web.2")
    assert render.render_chain(table, rule_chain) == (
        "\tchain out-web.2 {\n"
        '\t\tcounter packets 0 bytes 0 goto out-web.deny comment "web egress rule 2"\n\t}')


def test_without_cidr_peers_one_map_and_the_plain_fallback():
    rules = (NetRule("allow", (), (), (LOOPBACK,)), NetRule("allow", ("tcp",), ((22, 22),)),
             NetRule("deny"))
    table = compiler.build_table([Profile("srv", ingress=rules, ingress_default="deny")])
    text = render.render_chain(table, next(c for c in table.chains if c.name == "in-srv"))
    assert text.splitlines()[1:] == [
        "\t\tiif . th dport . meta l4proto vmap @in-srv.any",
        "\t\tth dport >= 0 goto in-srv.default",
        "\t\tiif . meta l4proto vmap @in-srv.anynp",
        '\t\tiif "lo" goto in-srv.1',
        "\t\tgoto in-srv.3",
        "\t\tgoto in-srv.default",
        "\t}"]
