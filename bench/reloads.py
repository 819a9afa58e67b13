"""Section 4: `netfence reload` of generated policies with 10, 100 and 1,000 net rules.

Each size has its own namespace and private installation (--config-dir, --state-dir,
--run-dir under /run/nfbench-<tag>/reload<N>), so every timed reload replaces a table
of the same size. The CLI is started by the driver inside the namespace (fork, exec,
wait: the time an admin waits, interpreter start and imports included), sizes
alternate round by round.
"""

import policies
from common import SRC, DriverSpec, log, median, ms, rnd, run_driver
from login import reload_argv


def count_rules(env):
    text = env.netns.nft("list", "table", "inet", "netfence").stdout
    return sum(1 for line in text.splitlines() if " counter " in f" {line.strip()} ")


def reload_section(ws, sizes, rounds):
    envs = {}
    for size in sizes:
        ns = ws.netns()
        env = ws.env(ns, f"reload{size}")
        env.write_policy(policies.generated_policy(size, env.cgroup_base))
        env.cli("reload")                         # creates the table; checks the policy
        envs[size] = env
    out = {}
    for size, env in envs.items():
        out[f"reload_nft_rules_{size}"] = count_rules(env)
    samples = {size: [] for size in sizes}
    log(f"  {rounds} rounds of reloads at {', '.join(map(str, sizes))} rules ...")
    for r in range(rounds):
        for size in (sizes if r % 2 == 0 else sizes[::-1]):
            env = envs[size]
            spec = DriverSpec(1)
            spec.step("reload", [reload_argv(env)], [("PYTHONPATH", SRC)])
            samples[size] += ms(run_driver(ws, env.netns, spec, f"reload{size}")["reload"])
    for size in sizes:
        out[f"reload_ms_{size}"] = rnd(median(samples[size]), 3)
    return out
