"""Per-packet cost of always rules: 1 fenced uid vs 10,000 (run as root).

    python3 bench/always.py [--rounds 7] [--seconds 2]

Three network namespaces, each with bench/c/netbench.c's accept-and-close server on
127.0.0.1:8080 and netfence reloaded from a policy:
  none   no always rule (the table with its empty guard sets)
  one    scope = "always", uids = [100000]
  range  scope = "always", uids = ["100000-109999"]: 10,000 uids, one range
  many   scope = "always", 10,000 uids that no range can merge (100000, 100002, ...):
         single uids, which go to the hash set suid-P
  ranges scope = "always", 10,000 two-uid ranges ("100000-100001", "100003-100004",
         ...): 10,000 ranges in the interval set auid-P (an rbtree), its worst case
The client (netbench connect, a C connect/close loop: SYN, SYN-ACK, ACK, RST) runs as
uid 100000 in all of them: in all but `none` each of its packets is found in a guard
(any-suid or any-auid), then in the profile's set, and walks out-P (port 8080 is
allowed). Rounds alternate the
order; the ratios many/one and one/none are taken within a round, their medians
reported. Same method as bench/packet.py (which see), smaller.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from support.netns import NetNS  # noqa: E402
from support.nfenv import NfEnv  # noqa: E402

UID = 100000
POLICY = """
[settings]
cgroup_base = "{base}"

[profile.no-web]
egress = [ {{ action = "reject", proto = "tcp", ports = [80] }} ]
{rule}"""
# Client and server on CPUs of their own, as bench/packet.py does.
PIN_CLIENT, PIN_SERVER = (["taskset", "-c", "0"], ["taskset", "-c", "1"]) \
    if (os.cpu_count() or 1) > 1 else ([], [])
RULE = '\n[[rule]]\nscope = "always"\nuids = [{uids}]\nprofiles = ["no-web"]\n'


def build_netbench(where):
    binary = os.path.join(where, "netbench")
    subprocess.run(["cc", "-O2", "-o", binary, os.path.join(HERE, "c", "netbench.c")],
                   check=True)
    return binary


def connect_rate(ns, netbench, seconds):
    argv = PIN_CLIENT + ["setpriv", f"--reuid={UID}", f"--regid={UID}", "--clear-groups", netbench,
            "connect", "8080", str(seconds)]
    ok, _failed, elapsed = ns.run(argv, timeout=seconds + 30).stdout.split()
    return int(ok) / float(elapsed)


def setup(stack, name, uids, netbench):
    ns = stack.enter_context(NetNS())
    nf = stack.enter_context(NfEnv(ns))
    rule = RULE.format(uids=", ".join(map(str, uids))) if uids else ""
    nf.write_policy(POLICY.format(base=nf.cgroup_base, rule=rule))
    nf.cli("reload")
    server = ns.popen(PIN_SERVER + [netbench, "serve", "8080"], stdout=subprocess.PIPE, text=True)
    nf._procs.append(server)
    if server.stdout.readline().strip() != "ready":
        raise RuntimeError(f"{name}: server did not start")
    return ns


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    from contextlib import ExitStack
    with tempfile.TemporaryDirectory() as where, ExitStack() as stack:
        netbench = build_netbench(where)
        os.chmod(where, 0o755)
        variants = {"none": [], "one": [UID], "range": [f'"{UID}-{UID + 9999}"'],
                    "many": [UID + 2 * i for i in range(10000)],
                    "ranges": [f'"{UID + 3 * i}-{UID + 3 * i + 1}"' for i in range(10000)]}
        spaces = {name: setup(stack, name, uids, netbench) for name, uids in variants.items()}
        ratios = {"one/none": [], "range/one": [], "many/one": [], "ranges/one": []}
        rates = {name: [] for name in variants}
        for number in range(args.rounds):
            order = list(variants) if number % 2 == 0 else list(reversed(variants))
            got = {name: connect_rate(spaces[name], netbench, args.seconds) for name in order}
            for name, rate in got.items():
                rates[name].append(rate)
            for key in ratios:
                top, bottom = key.split("/")
                ratios[key].append(got[top] / got[bottom])
        for name, values in rates.items():
            print(f"{name:6s} median {statistics.median(values):10.0f} connections/s")
        for key, values in ratios.items():
            print(f"{key:10s} median ratio {statistics.median(values):.3f} "
                  f"(min {min(values):.3f}, max {max(values):.3f})")


if __name__ == "__main__":
    main()
