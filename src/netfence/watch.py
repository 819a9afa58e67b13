"""`netfence watch`: the long-running helper that makes enforcement continuous.

Event-driven, one thread, one poll loop (docs/watch.md):
  - nf_tables events of this network namespace (watch_sources.NftEvents): a change to
    table inet netfence's table, chains, rules or sets is checked 50 ms later (events
    of one transaction arrive together), element changes (logins do that) at most
    twice a second; the check is read only and repairs (drift.repair_table, gc's
    repair) only when the kernel differs from the snapshot and the records;
  - a pidfd per live session's PAM application, inotify on each session, user and
    `run` tree cgroup's cgroup.events and on run_dir's sessions/, users/ and runs/:
    gc's close, release and tree close, for that one record (watch_actions);
  - a wall-clock timerfd (watch_sources.WallTimer) at the next window change
    (timed_apply.reconcile's next_change, or a new record's own next opening), which
    also wakes on a clock step: a reconcile then rewrites every expiry;
  - the nflog group of the denial log (watch_actions.DenialRecorder): each denied
    packet a logging profile copies is written to state_dir/log/denials.jsonl at once,
    with the identity of its session (docs/log.md);
  - monotonic timers for one debounced reconcile after logins of a uid with a user
    grant in force, the checks, retries and the periodic full gc (the safety net;
    also at start and on SIGHUP).
Logins never wait for it: it only ever does what `netfence gc` would do later.
"""

import os
import selectors
import signal
import socket
import sys
import time

from . import cgroups, records, watch_actions
from .apply import log_event
from .errors import NetfenceError
from .hooklog import field
from .watch_sources import (IN_CREATE, IN_DELETE, IN_DELETE_SELF, IN_IGNORED, IN_MODIFY,
                            IN_MOVED_FROM, IN_MOVED_TO, IN_Q_OVERFLOW, Inotify, NftEvents,
                            WallTimer, open_pidfd)

TABLE_SETTLE_S = 0.05      # the messages of one transaction arrive within this
ELEMENT_SETTLE_S = 0.5     # element changes: two checks a second at most, however many logins
WINDOW_MARGIN_S = 0.01
IDLE_REARM_S = 86400.0     # no window change ahead: armed anyway, so a clock step wakes it
GRANT_SETTLE_S = 0.1       # logins of a granted uid: one reconcile for a burst of them
EXITED_RETRY_S = 0.02     # first retry after a pidfd fired for a still-unreaped zombie
EXITED_GIVE_UP_S = 10.0
DIR_MASK = IN_CREATE | IN_MOVED_TO | IN_DELETE | IN_MOVED_FROM | IN_DELETE_SELF
KIND_OF_DIR = {records.SESSIONS: "session", records.USERS: "user", records.RUNS: "tree"}


class Watch:
    def __init__(self, paths, gc_interval=60.0, to_stderr=True):
        self.paths, self.gc_interval, self.to_stderr = paths, gc_interval, to_stderr
        self.mount = cgroups.cgroup2_mount()
        self.selector = selectors.DefaultSelector()
        self.due = {"check": None, "gc": 0.0, "windows": None, "exited": None}
        self.exited = {}                  # session key -> retry delay (a zombie application)
        self.stopping = False
        self.pidfds = {}                  # session key -> pidfd
        self.cgroup_wds = {}              # cgroup path -> inotify wd
        self.wd_cgroup = {}               # wd -> cgroup path
        self.owners = {}                  # cgroup path -> {(kind, key)}
        self.record_cgroups = {}          # (kind, key) -> [cgroup path]
        self.dir_wds = {}                 # wd -> records kind
        self.counts = {"checks": 0, "repairs": 0, "reconciles": 0}
        self.said = set()                 # conditions logged once (hidden /proc, EMFILE)
        self.pidfd_cap = watch_actions.raise_fd_limit()

    # ---- setup ------------------------------------------------------------------------
    def open(self):
        records.ensure_dirs(self.paths.run_dir)
        self.nft = NftEvents()
        self.inotify = Inotify()
        self.wall = WallTimer()
        self.selector.register(self.nft, selectors.EVENT_READ, self._on_nft)
        self.selector.register(self.wall, selectors.EVENT_READ, self._on_wall_clock)
        self.selector.register(self.inotify, selectors.EVENT_READ, self._on_inotify)
        for kind in KIND_OF_DIR:
            wd = self.inotify.add(f"{self.paths.run_dir}/{kind}", DIR_MASK)
            self.dir_wds[wd] = kind
        self._signals()
        self.denials = watch_actions.DenialRecorder(self.paths, self.selector, self.log)
        self.denials.sync()
        self.log(event="start", pid=os.getpid(), run_dir=self.paths.run_dir,
                 gc_interval=self.gc_interval, pidfds=self.pidfd_cap)

    def _signals(self):
        reader, writer = socket.socketpair()
        for end in (reader, writer):
            end.setblocking(False)
        self._wakeup = (reader, writer)
        signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)
        self.selector.register(reader, selectors.EVENT_READ, self._drain_wakeup)

    def _on_stop(self, signum, frame):
        self.stopping = True

    def _on_hup(self, signum, frame):
        self.due["gc"] = 0.0

    def _drain_wakeup(self):
        try:
            self._wakeup[0].recv(4096)
        except BlockingIOError:
            pass

    # ---- the loop ---------------------------------------------------------------------
    def run(self):
        self.open()
        while not self.stopping:
            pending = [t for t in self.due.values() if t is not None]
            timeout = max(0.0, min(pending) - time.monotonic()) if pending else None
            for key, _ in self.selector.select(timeout):
                self._guarded(key.data)
            self._run_due()
        self.log(event="stop", pid=os.getpid(), **self.counts, **self.denials.counts)

    def _run_due(self):
        now = time.monotonic()
        if self.due["check"] is not None and self.due["check"] <= now:
            self.due["check"] = None
            self._guarded(self._check)
        if self.due["gc"] is not None and self.due["gc"] <= now:
            self.due["gc"] = now + self.gc_interval
            self._guarded(self._resync)
        if self.due["windows"] is not None and self.due["windows"] <= now:
            self.due["windows"] = None
            self._guarded(self._reconcile)
        if self.due["exited"] is not None and self.due["exited"] <= now:
            self.due["exited"] = None
            for key in list(self.exited):
                self._close_exited(key)

    def _guarded(self, action, *args):
        """Run one action; a failure is logged and the loop goes on (the periodic gc
        retries whatever it left)."""
        try:
            self.log_fields(action(*args))
        except (NetfenceError, OSError) as err:
            self.log(event="error", action=getattr(action, "__name__", "?"),
                     error=str(err).replace("\n", "; "))
        except Exception as err:          # a bad record or a bug: never end the loop
            self.log(event="error", action=getattr(action, "__name__", "?"),
                     error=f"{type(err).__name__}: {err}".replace("\n", "; "))

    def _schedule(self, name, delay):
        when = time.monotonic() + delay
        if self.due[name] is None or when < self.due[name]:
            self.due[name] = when

    # ---- actions ----------------------------------------------------------------------
    def _check(self):
        self.counts["checks"] += 1
        # a repair carries the timed elements itself (a restore puts them in the new
        # table with their time left, an element repair reconciles them): no second pass
        fields, _repaired = watch_actions.check_and_repair(self.paths)
        self.counts["repairs"] += bool(fields) and fields["event"] == "repair"
        self.denials.sync()               # a reload may have changed the log's group
        return fields

    def _resync(self):
        """The full gc (at start, on SIGHUP, every gc_interval), then the watches
        made to match the records."""
        time.tzset()                      # `timedatectl set-timezone` since the last one
        fields, next_change = watch_actions.full_gc(self.paths)
        self.log_fields(fields)
        self.denials.retry()
        self._windows_at(next_change)
        self._sync_all()

    def _reconcile(self):
        time.tzset()
        self.counts["reconciles"] += 1
        fields, next_change = watch_actions.reconcile_windows(self.paths)
        self._windows_at(next_change)
        return fields

    def _windows_at(self, next_change, earlier_only=False):
        """Reconcile again when the next window opens or closes (an epoch): an
        absolute wall-clock timer, so a resume or a clock step past it fires it."""
        if next_change is None:
            if earlier_only:
                return
            next_change = time.time() + IDLE_REARM_S
        # a little after: woken a hair before the opening, reconcile would find the
        # window still closed and name the same time again
        when = next_change + WINDOW_MARGIN_S
        if not earlier_only or self.wall.at is None or when < self.wall.at:
            self.wall.arm(when)

    def _on_wall_clock(self):
        """A window change is due, or the wall clock was set (NTP, `date -s`): reconcile
        rewrites the kernel expiries more than 1 s off, and re-arms the timer."""
        what = self.wall.read()
        if what == "clock-set":
            self.log(event="clock-set", wall=f"{time.time():.3f}")
        return self._reconcile() if what else None

    # ---- nf_tables events ---------------------------------------------------------------
    def _on_nft(self):
        what = self.nft.read()
        if what in ("table", "overflow"):
            self._schedule("check", TABLE_SETTLE_S)
        elif what == "elements":
            self._schedule("check", ELEMENT_SETTLE_S)

    # ---- records and their cgroups and pidfds ---------------------------------------------
    def _on_inotify(self):
        for wd, mask, name in self.inotify.read():
            if mask & IN_Q_OVERFLOW:
                self._sync_all()
            elif wd in self.dir_wds:
                self.denials.invalidate()     # who a cgroup is may have changed
                self._on_record(self.dir_wds[wd], name, mask)
            elif wd in self.wd_cgroup and mask & (IN_MODIFY | IN_IGNORED):
                self._on_cgroup(wd, mask)

    def _on_record(self, kind, name, mask):
        if mask & IN_DELETE_SELF:
            self.stopping = True          # run_dir removed under us: restart anew
            self.log(event="error", error=f"{self.paths.run_dir}/{kind} removed")
        elif ".tmp" in name:
            return
        elif mask & (IN_CREATE | IN_MOVED_TO):
            self._guarded(self._track, KIND_OF_DIR[kind], name)
        else:
            self._untrack(KIND_OF_DIR[kind], name)

    def _on_cgroup(self, wd, mask):
        path = self.wd_cgroup[wd]
        owners = sorted(self.owners.get(path, ()))
        if mask & IN_IGNORED:             # the cgroup was removed
            self._forget_cgroup(path)
        elif watch_actions.populated(self.mount, path):
            return
        for kind, key in owners:
            self._guarded(self._act, kind, key)

    def _act(self, kind, key):
        run_dir = self.paths.run_dir
        if kind == "session":
            fields = watch_actions.close_if_dead(run_dir, key, self.mount)
            if fields and fields.get("cgroup") == "busy":
                # processes outlived the PAM application (docs/watch.md): gc removes
                # the cgroup once they are gone; watch it to do that at once
                self._set_cgroups(("orphan", fields["path"]), [fields["path"]])
            return fields
        if kind == "orphan":
            self._set_cgroups((kind, key), [])
            return watch_actions.collect_records(self.paths)
        if kind == "user":
            return watch_actions.release_if_idle(run_dir, int(key), self.mount)
        return watch_actions.close_tree_if_empty(run_dir, key, self.mount)

    def _on_pidfd(self, key):
        self._drop_pidfd(key)
        self.exited[key] = EXITED_RETRY_S
        self._close_exited(key)

    def _close_exited(self, key):
        """The application exited; gc's liveness test still sees it while it is a
        zombie its parent has not reaped yet: try again, less and less often, until
        gc's own test agrees (the periodic gc takes over after EXITED_GIVE_UP_S)."""
        self._guarded(self._act, "session", key)
        delay = self.exited.pop(key)
        if records.exists(self.paths.run_dir, key) and delay < EXITED_GIVE_UP_S:
            self.exited[key] = delay * 2
            self._schedule("exited", delay)

    def _track(self, kind, name):
        """A record appeared or was rewritten: watch what ends it."""
        record = watch_actions.read_record(self.paths.run_dir, kind, name)
        if record is None or record.get("closing"):
            return None
        if kind == "session":
            self._watch_pid(name, record)
        paths = watch_actions.cgroups_of(kind, record)
        self._set_cgroups((kind, name), paths)
        if any(not watch_actions.populated(self.mount, p) for p in paths):
            return self._act(kind, name)  # ended before the watch was in place
        if kind == "session":
            self._timed_of(record)
        return None

    def _timed_of(self, record):
        """A new session's timed elements: the hook sent the exact expiries of what is
        open now; watch only wakes for its next opening (this record alone, no lock).
        A user grant of its uid exempts its cgroup's ingress too: one reconcile for a
        burst of logins (before it, the new session is fenced, not freed)."""
        if record.get("timed"):
            time.tzset()
            self._windows_at(watch_actions.next_opening(record), earlier_only=True)
        if watch_actions.user_grant_for(self.paths.state_dir, record.get("uid")):
            self._schedule("windows", GRANT_SETTLE_S)

    def _watch_pid(self, key, record):
        if key in self.pidfds:
            return
        if len(self.pidfds) >= self.pidfd_cap:
            return self._once("pidfds", f"{self.pidfd_cap} pidfds open: more sessions "
                              "are closed on cgroup events and by the periodic gc")
        try:
            fd, hidden = open_pidfd(record["ppid"], record["starttime"])
        except OSError as err:            # EMFILE, ENFILE: as above
            return self._once("pidfds", f"pidfd_open: {err}: sessions without a pidfd "
                              "are closed on cgroup events and by the periodic gc")
        if hidden:
            self._once("hidden", "/proc hides PAM applications (hidepid): they are "
                       "taken as alive while their pidfd is open")
        if fd is None:                    # already gone: gc's close, now
            self.log_fields(self._act("session", key))
            return
        self.pidfds[key] = fd
        self.selector.register(fd, selectors.EVENT_READ, lambda: self._on_pidfd(key))

    def _untrack(self, kind, name):
        if kind == "session":
            self._drop_pidfd(name)
        self._set_cgroups((kind, name), [])

    def _drop_pidfd(self, key):
        fd = self.pidfds.pop(key, None)
        if fd is not None:
            self.selector.unregister(fd)
            os.close(fd)

    def _set_cgroups(self, owner, paths):
        """Make owner's watched cgroups exactly paths (a rewritten user record
        usually names the same ones: nothing changes then)."""
        old = self.record_cgroups.pop(owner, [])
        for path in set(old) - set(paths):
            self.owners.get(path, set()).discard(owner)
            if not self.owners.get(path):
                self._forget_cgroup(path, remove_watch=True)
        kept = []
        for path in paths:
            if path not in self.cgroup_wds:
                wd = self.inotify.add(f"{self.mount}{path}/cgroup.events", IN_MODIFY)
                if wd is None:
                    continue              # gone: populated() says so to _track
                self.cgroup_wds[path], self.wd_cgroup[wd] = wd, path
            self.owners.setdefault(path, set()).add(owner)
            kept.append(path)
        if kept:
            self.record_cgroups[owner] = kept

    def _forget_cgroup(self, path, remove_watch=False):
        wd = self.cgroup_wds.pop(path, None)
        self.owners.pop(path, None)
        if wd is not None:
            self.wd_cgroup.pop(wd, None)
            if remove_watch:
                self.inotify.remove(wd)

    def _sync_all(self):
        """Make the pidfds and cgroup watches match the records exactly."""
        self.denials.invalidate()         # events were lost (an overflow): start again
        for kind, label in KIND_OF_DIR.items():
            present = set(records.names(self.paths.run_dir, kind))
            tracked = {k for (lk, k) in self.record_cgroups if lk == label}
            if label == "session":
                tracked |= set(self.pidfds)
            for name in tracked - present:
                self._untrack(label, name)
            for name in present:
                self._guarded(self._track, label, name)

    # ---- logging ------------------------------------------------------------------------
    def log_fields(self, fields):
        if fields:
            self.log(**fields)

    def _once(self, condition, message):
        if condition not in self.said:
            self.said.add(condition)
            self.log(event="warning", warning=message)

    def log(self, **fields):
        line = " ".join(f"{k}={field(v)}" for k, v in fields.items())
        log_event(f"watch: {line}")
        if self.to_stderr:
            print(f"netfence watch: {line}", file=sys.stderr, flush=True)


def run(paths, gc_interval=60.0, to_stderr=True):
    Watch(paths, gc_interval, to_stderr).run()
    return 0
