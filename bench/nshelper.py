"""Helper run inside a benchmark network namespace (a netfence Ruleset talks to the
namespace of the process that creates it).

    nshelper.py fill SET uid|cg START COUNT    add COUNT fake keys START, START+1, ...
    nshelper.py counts                         {set: element count} as JSON
    nshelper.py elements                       {set: [hex key]} as JSON
(counts and elements: of the sets logins fill, not of the profiles' lookup maps)
"""

import json
import sys

from netfence.nftnl import Ruleset

KEY_BYTES = {"uid": 4, "cg": 8}


def login_elements(ruleset):
    """{set: [hex key]} of the sets logins fill (read_elements leaves out the profiles'
    lookup maps, whose elements are the table's own)."""
    return ruleset.read_elements()


def main(argv):
    with Ruleset() as ruleset:
        if argv[0] == "fill":
            set_name, kind, start, count = argv[1], argv[2], int(argv[3]), int(argv[4])
            size = KEY_BYTES[kind]
            keys = [(start + i).to_bytes(size, sys.byteorder).hex() for i in range(count)]
            ruleset.add_elements({set_name: keys})
        elif argv[0] == "counts":
            print(json.dumps({k: len(v) for k, v in login_elements(ruleset).items()}))
        elif argv[0] == "elements":
            print(json.dumps(login_elements(ruleset)))
        else:
            raise SystemExit(f"unknown command {argv[0]!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
