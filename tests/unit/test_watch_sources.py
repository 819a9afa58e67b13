"""watch_sources.event_kind: which nf_tables event messages concern table inet netfence,
and how (no root: messages built by nfencode as the kernel sends them)."""

import os
import struct

from netfence import nfconst
from netfence.liveness import proc_starttime
from netfence.nfencode import attr, cstring, element_list_message, message, nft_message
from netfence.watch_sources import event_kind, open_pidfd

NFPROTO_IPV4 = 2


def _object(msg_type, table, family=nfconst.NFPROTO_INET):
    body = attr(1, cstring(table)) + attr(3, cstring("egress"))
    return nft_message(msg_type, 0, body, family=family)


def test_a_deleted_table_or_a_new_rule_of_ours_is_a_table_event():
    assert event_kind(_object(nfconst.NFT_MSG_DELTABLE, "netfence"), b"netfence") == "table"
    assert event_kind(_object(nfconst.NFT_MSG_NEWRULE, "netfence"), b"netfence") == "table"


def test_element_changes_are_element_events_and_table_wins():
    elements = element_list_message(nfconst.NFT_MSG_NEWSETELEM, 0, 0, "netfence", "uid-web",
                                    [bytes(4)])
    assert event_kind(elements, b"other") is None
    assert event_kind(elements, b"netfence") == "elements"
    both = elements + _object(nfconst.NFT_MSG_NEWCHAIN, "netfence")
    assert event_kind(both, b"netfence") == "table"


def test_other_tables_families_and_generation_messages_are_not_ours():
    assert event_kind(_object(nfconst.NFT_MSG_DELTABLE, "filter"), b"netfence") is None
    assert event_kind(_object(nfconst.NFT_MSG_DELTABLE, "netfence", NFPROTO_IPV4),
                      b"netfence") is None
    gen = nft_message(nfconst.NFT_MSG_NEWGEN, 0, attr(1, struct.pack(">I", 7)))
    assert event_kind(gen, b"netfence") is None


def test_a_truncated_or_foreign_message_is_not_misread():
    assert event_kind(b"\x00" * 10, b"netfence") is None
    route = message(16, 0, 0, 0, b"")            # RTM_NEWLINK-like, not nfnetlink
    assert event_kind(route, b"netfence") is None


def test_a_pidfd_is_only_given_for_the_recorded_start_time():
    """A pid the kernel reused names another process: never watched in its place."""
    start = proc_starttime(os.getpid())
    assert open_pidfd(os.getpid(), start + 1) is None
    fd = open_pidfd(os.getpid(), start)
    assert fd is not None
    os.close(fd)
    assert open_pidfd(2 ** 22 + 1, 0) is None             # no such process
