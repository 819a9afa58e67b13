"""counters.py without a kernel: its parser, its initial-value encoder, its imports."""

import os
import subprocess
import sys

import pytest

import netfence
from netfence import counters, nfconst as nf
from netfence.nfencode import attr, cstring, nested

KEY = bytes.fromhex("2a10000000000000")


def _counter(packets, bytes_):
    return counters.counter_expression(packets, bytes_)


def _element(key, *extra):
    return nested(nf.NFTA_LIST_ELEM, nested(nf.NFTA_SET_ELEM_KEY, attr(nf.NFTA_DATA_VALUE, key))
                  + b"".join(extra))


def test_single_expression_element():
    elements = _element(KEY, nested(nf.NFTA_SET_ELEM_EXPR, _counter(7, 900)))
    assert counters.element_counters(elements) == {KEY.hex(): (7, 900)}


def test_expression_list_element_and_elements_without_counter():
    listed = nested(nf.NFTA_SET_ELEM_EXPRESSIONS,
                    nested(nf.NFTA_LIST_ELEM, attr(nf.NFTA_EXPR_NAME, cstring("limit")))
                    + nested(nf.NFTA_LIST_ELEM, _counter(1, 2**40)))
    other = bytes.fromhex("0100000000000000")
    elements = _element(KEY, listed) + _element(other)
    assert counters.element_counters(elements) == {KEY.hex(): (1, 2**40)}


@pytest.mark.parametrize("cut", [1, 5, 9, 17])
def test_truncated_input_does_not_raise(cut):
    elements = _element(KEY, nested(nf.NFTA_SET_ELEM_EXPR, _counter(7, 900)))
    counters.element_counters(elements[:-cut])


def test_counter_expression_is_what_the_kernel_reads():
    """NFTA_EXPR_NAME "counter", NFTA_EXPR_DATA {NFTA_COUNTER_BYTES, NFTA_COUNTER_PACKETS}
    as be64 (net/netfilter/nft_counter.c, nft_counter_do_init)."""
    data = counters.counter_expression(3, 258)
    assert data == (bytes.fromhex("0c000100") + b"counter\0"
                    + bytes.fromhex("1c000200" "0c000100" "0000000000000102"
                                    "0c000200" "0000000000000003"))


def test_counters_imports_nothing_heavy():
    """A closer in the hook may read its counters: no pyroute2, json, socket, struct."""
    parent = os.path.dirname(os.path.dirname(netfence.__file__))
    script = (f"import sys\nsys.path.insert(0, {parent!r})\nfrom netfence import counters\n"
              "print(' '.join(sorted(sys.modules)))\n")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", script], capture_output=True,
                         text=True, check=True, env={})
    loaded = set(out.stdout.split())
    assert not loaded & {"pyroute2", "json", "socket", "struct", "enum", "re"}
    assert {n for n in loaded if n.startswith("netfence.")} == {
        "netfence.counters", "netfence.errors", "netfence.nfconst", "netfence.nfencode",
        "netfence.setkinds", "netfence.formats"}


def test_reload_goes_on_when_the_counters_cannot_be_read(monkeypatch):
    """Accounting must not stand in the way of a policy change: a failed read loses
    the totals (and says so), the reload still sends its table."""
    from netfence import apply, ir
    from netfence.errors import KernelError

    def refuse(**_kw):
        raise KernelError("list elements of set acct-out", 105)
    logged = []
    monkeypatch.setattr(counters, "read_counters", refuse)
    monkeypatch.setattr(apply, "log_event", logged.append)
    table = ir.TableDef(sets=(ir.SetDef("acct-out", "cgroupsv2", counter=True),),
                        chains=(), rules=())
    assert apply.carried_counters(table) == {}
    assert logged and logged[0].startswith("event=reload-counters-lost ")
    plain = ir.TableDef(sets=(ir.SetDef("uid-a", "uid"),), chains=(), rules=())
    assert apply.carried_counters(plain) == {}          # nothing counted: nothing read
