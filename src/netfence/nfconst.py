"""Kernel numbers: netlink, nfnetlink and nf_tables, the one place that spells them.

Values are the kernel's (include/uapi/linux/netlink.h, netfilter/nfnetlink.h,
netfilter/nf_tables.h, netfilter.h, netfilter/nf_log.h, netfilter/nf_conntrack_common.h)
and libnftnl's (include/udata.h) for the userdata TLVs nft reads back. Names are the
headers' names, so a value can be checked against them with grep.

Byte order, said once: netlink headers, attribute headers and the values nf_tables
keeps in registers of the host (meta keys, ct state, set keys: see
setkinds.BYTE_ORDER) are in HOST_ORDER; attribute payloads the headers declare as
be16/be32/be64 and packet data (addresses, ports) in NETWORK_ORDER.

Light on purpose (the login hook imports it): sys only.
"""

import sys

HOST_ORDER = sys.byteorder
NETWORK_ORDER = "big"

# ---- netlink ---------------------------------------------------------------------
NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10            # error acks carry only the failing message's header
NETLINK_EXT_ACK = 11            # ... plus the kernel's text, when it has one
SO_SNDBUFFORCE = 32             # asm-generic/socket.h: root may exceed wmem_max
SO_RCVBUFFORCE = 33

NLMSG_HDRLEN = 16               # struct nlmsghdr {len u32, type u16, flags u16, seq, pid}
NLMSG_SEQ_OFFSET = 8            # offsetof(struct nlmsghdr, nlmsg_seq)
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x001
NLM_F_ACK = 0x004
NLM_F_DUMP_INTR = 0x010
NLM_F_CAPPED = 0x100            # in an error ack: the request was not copied back
NLM_F_ACK_TLVS = 0x200          # in an error ack: extended ack attributes follow
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLM_F_APPEND = 0x800
NLM_F_DUMP = 0x300              # NLM_F_ROOT | NLM_F_MATCH
NLMSGERR_ATTR_MSG = 1
NLA_HDRLEN = 4
NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF          # ~(NLA_F_NESTED | NLA_F_NET_BYTEORDER)

# ---- nfnetlink -------------------------------------------------------------------
NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN = 0x10
NFNL_MSG_BATCH_END = 0x11
NFNL_BATCH_GENID = 1
NFNETLINK_V0 = 0
NFGENMSG_LEN = 4                # struct nfgenmsg {family u8, version u8, res_id be16}
NFPROTO_UNSPEC = 0
NFPROTO_INET = 1
NFPROTO_IPV4 = 2
NFPROTO_IPV6 = 10

# ---- enum nf_tables_msg_types ----------------------------------------------------
NFT_MSG_NEWTABLE = 0
NFT_MSG_GETTABLE = 1
NFT_MSG_DELTABLE = 2
NFT_MSG_NEWCHAIN = 3
NFT_MSG_GETCHAIN = 4
NFT_MSG_NEWRULE = 6
NFT_MSG_GETRULE = 7
NFT_MSG_NEWSET = 9
NFT_MSG_GETSET = 10
NFT_MSG_NEWSETELEM = 12
NFT_MSG_GETSETELEM = 13
NFT_MSG_DELSETELEM = 14         # without an element list: flushes the set
NFT_MSG_NEWGEN = 15
NFT_MSG_GETGEN = 16
NFT_MSG_DESTROYTABLE = 26       # Linux >= 6.3: no error when absent
NFT_MSG_DESTROYSETELEM = 30     # Linux >= 6.3: absent elements are not an error
NFT_NAME_MAXLEN = 256           # NFT_TABLE_MAXNAMELEN / NFT_SET_MAXNAMELEN, with the NUL

# ---- attributes we parse or write by hand (pyroute2 names the others) -----------
NFTA_TABLE_USERDATA = 6
NFTA_CHAIN_TABLE, NFTA_CHAIN_NAME, NFTA_CHAIN_HOOK, NFTA_CHAIN_POLICY = 1, 3, 4, 5
NFTA_HOOK_HOOKNUM, NFTA_HOOK_PRIORITY = 1, 2
NFTA_RULE_TABLE, NFTA_RULE_CHAIN, NFTA_RULE_EXPRESSIONS, NFTA_RULE_USERDATA = 1, 2, 4, 7
NFTA_SET_TABLE, NFTA_SET_NAME, NFTA_SET_KEY_TYPE = 1, 2, 4
NFTA_SET_EXPR, NFTA_SET_EXPRESSIONS = 17, 18   # the expressions every element carries
NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_ELEMENTS = 1, 2, 3
NFTA_SET_ELEM_KEY, NFTA_SET_ELEM_FLAGS = 1, 3
NFTA_SET_ELEM_TIMEOUT, NFTA_SET_ELEM_EXPIRATION = 4, 5    # be64 milliseconds
NFTA_SET_ELEM_EXPR, NFTA_SET_ELEM_EXPRESSIONS = 7, 11   # its counter (one, or a list)
NFTA_LIST_ELEM = 1
NFTA_DATA_VALUE, NFTA_DATA_VERDICT = 1, 2
NFTA_VERDICT_CODE, NFTA_VERDICT_CHAIN = 1, 2
NFTA_EXPR_NAME, NFTA_EXPR_DATA = 1, 2

# expression attributes, in the order the expressions' encoders write them
NFTA_META_DREG, NFTA_META_KEY, NFTA_META_SREG = 1, 2, 3
NFTA_PAYLOAD_DREG, NFTA_PAYLOAD_BASE, NFTA_PAYLOAD_OFFSET, NFTA_PAYLOAD_LEN = 1, 2, 3, 4
NFTA_SOCKET_KEY, NFTA_SOCKET_DREG, NFTA_SOCKET_LEVEL = 1, 2, 3
NFTA_CT_DREG, NFTA_CT_KEY = 1, 2
NFTA_BITWISE_SREG, NFTA_BITWISE_DREG, NFTA_BITWISE_LEN = 1, 2, 3
NFTA_BITWISE_MASK, NFTA_BITWISE_XOR = 4, 5
NFTA_CMP_SREG, NFTA_CMP_OP, NFTA_CMP_DATA = 1, 2, 3
NFTA_RANGE_SREG, NFTA_RANGE_OP, NFTA_RANGE_FROM_DATA, NFTA_RANGE_TO_DATA = 1, 2, 3, 4
NFTA_LOOKUP_SET, NFTA_LOOKUP_SREG, NFTA_LOOKUP_DREG = 1, 2, 3
NFTA_COUNTER_BYTES, NFTA_COUNTER_PACKETS = 1, 2
NFTA_LOG_GROUP, NFTA_LOG_SNAPLEN = 1, 3     # nflog: group be16, snaplen be32
NFTA_LIMIT_RATE, NFTA_LIMIT_UNIT, NFTA_LIMIT_BURST = 1, 2, 3
NFTA_LIMIT_TYPE, NFTA_LIMIT_FLAGS = 4, 5
NFTA_LOG_PREFIX, NFTA_LOG_FLAGS = 2, 6
NFTA_REJECT_TYPE, NFTA_REJECT_ICMP_CODE = 1, 2
NFTA_IMMEDIATE_DREG, NFTA_IMMEDIATE_DATA = 1, 2
NFTA_BYTEORDER_SREG, NFTA_BYTEORDER_DREG, NFTA_BYTEORDER_OP = 1, 2, 3
NFTA_BYTEORDER_LEN, NFTA_BYTEORDER_SIZE = 4, 5

# ---- expression keys and values --------------------------------------------------
NFT_REG_VERDICT = 0
NFT_REG_1 = 1
NFT_REG_2 = 2
NFT_REG32_00, NFT_REG32_15 = 8, 23     # 32-bit registers (a concatenation's fields)
NFT_META_MARK = 3
NFT_META_IIF, NFT_META_OIF, NFT_META_SKUID, NFT_META_SKGID = 4, 5, 10, 11
NFT_META_NFPROTO, NFT_META_L4PROTO = 15, 16
NFT_PAYLOAD_NETWORK_HEADER, NFT_PAYLOAD_TRANSPORT_HEADER = 1, 2
NFT_SOCKET_CGROUPV2 = 3         # Linux >= 5.13
NFT_CT_STATE = 0
NFT_CMP_EQ, NFT_CMP_NEQ, NFT_CMP_LT, NFT_CMP_LTE, NFT_CMP_GT, NFT_CMP_GTE = range(6)
NFT_RANGE_EQ, NFT_RANGE_NEQ = 0, 1
NFT_LIMIT_PKTS = 0
NFT_REJECT_TCP_RST, NFT_REJECT_ICMPX_UNREACH = 1, 2
NFT_REJECT_ICMPX_PORT_UNREACH = 1
NF_DROP, NF_ACCEPT = 0, 1       # verdicts, and base chain policies
NFT_JUMP, NFT_GOTO, NFT_RETURN = -3, -4, -5
NF_INET_PRE_ROUTING, NF_INET_LOCAL_IN, NF_INET_FORWARD = 0, 1, 2
NF_INET_LOCAL_OUT, NF_INET_POST_ROUTING = 3, 4
NF_LOG_UID = 0x08               # log the socket's uid (nft: flags skuid)
IP_CT_NEW_STATE_BIT = 0x08      # NF_CT_STATE_BIT(IP_CT_NEW): "ct state new"
NFT_SET_FLAGS_NONE = 0          # a plain hash set: no interval, map, timeout
NFT_SET_INTERVAL = 0x4          # ranges: an rbtree of start and end elements
NFT_SET_TIMEOUT = 0x10          # elements may carry a timeout; the kernel expires them
NFT_SET_ELEM_INTERVAL_END = 0x1  # the element ends a range (its key is last + 1)
NFT_BYTEORDER_NTOH, NFT_BYTEORDER_HTON = 0, 1

# ---- nftnl userdata TLVs (libnftnl include/udata.h) --------------------------------
NFTNL_UDATA_RULE_COMMENT = 0
# nftables' set key datatypes (NFTA_SET_KEY_TYPE): nftables' own enum (include/datatype.h),
# which the kernel stores for userspace
NFT_DATATYPE_UID = 24             # TYPE_UID
NFT_DATATYPE_GID = 25             # TYPE_GID
NFT_DATATYPE_CGROUPV2 = 46        # TYPE_CGROUPV2
NFTNL_UDATA_SET_KEYBYTEORDER = 0
NFT_BYTEORDER_HOST = 1
