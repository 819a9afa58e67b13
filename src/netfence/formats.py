"""Format numbers of the files netfence writes and reads back, and when they change.

  SNAPSHOT   compiled.json under state_dir (reload writes it; reload, gc, status,
             flush and explain read it)
  LOGIN      login.marshal under state_dir, the login part of the snapshot (reload
             writes it, the hook reads it at every login). Apart from SNAPSHOT, so
             that a change only the command line sees (issue 10's always rules, which
             the kernel enforces without the hook) does not make every login follow
             on_error between a package upgrade and the next reload
  TEMPLATES  the netlink message templates inside login.marshal (bytes the hook
             fills with keys and sends)
  RECORDS    the session, user, cgroup and run-tree records under run_dir

The rule (docs/architecture.md, "File formats"):
  - A change that a reader of the current number would misread raises the number:
    a key renamed, removed or given another type or meaning, a new key without which
    the data means something else (a new rule condition: an older hook ignoring it
    would fence a login the policy exempts, or the reverse), a new set kind.
  - Adding a key that every reader may ignore without changing any decision (a
    comment, a statistic) does not.
  - Readers accept exactly their own number. The hook meeting another LOGIN number
    fails the login's hook step with StateError naming both numbers, and on_error
    decides (deny by default): running `netfence reload` with the installed version
    rewrites the snapshot. A TEMPLATES mismatch only costs speed (the hook builds the
    messages itself). Records live in /run: a reboot clears them, and an upgrade of
    the package with live sessions keeps RECORDS unchanged or converts them.
Light on purpose: the hook imports it.
"""

SNAPSHOT = 5        # 2: always rules (scope, uids, static interval sets, resolved)
                    # 3: timed sets (flags timeout): time windows, grants, restrictions
                    # 4: counted sets (SetDef.counter), nflog and mark expressions
                    #    (a format 3 reader cannot build the table's SetDefs)
                    # 5: profiles as verdict maps (SetDef fields/data/elements, the
                    #    vmap expression, payload/meta into NFT_REG32_xx registers)
LOGIN = 2           # 2: a rule with `time` adds to the time-window sets while its
                    # window is open (a format 1 hook would apply it permanently or not)
TEMPLATES = 1
RECORDS = 1
