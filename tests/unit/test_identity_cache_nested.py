"""watch's identity cache (5 s by cgroup and uid) must not hide a nested login of the
same uid opened in the cgroup within the TTL: a record coming or going empties it."""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))

from netfence import records, records_closed, watch                    # noqa: E402
from netfence.watch_sources import Inotify                             # noqa: E402
from test_denials import packet                                        # noqa: E402
from test_watch_denials import Memory, recorder                        # noqa: E402


def _live(run, key, opened):
    records.write(records.session_path(run, key), {
        "key": key, "uid": 1001, "user": "alice", "cgroup_id": 42, "opened_at": opened,
        "service": "sshd", "boot_id": "B"})


def test_nested_same_uid_login_within_cache_ttl(tmp_path, monkeypatch):
    monkeypatch.setattr(records_closed, "boot_id", lambda: "B")
    run = str(tmp_path / "run")
    records.ensure_dirs(run)
    now = time.time()
    _live(run, "10-1", now - 100)
    store = Memory()
    copy = packet(uid=1001, mark=42)
    rec, _ = recorder(tmp_path, store, [[copy], [copy]])
    rec.on_readable()
    _live(run, "11-1", now - 0.5)         # `su - alice` inside it, within the TTL
    rec.invalidate()                      # what watch does on the sessions/ event
    rec.on_readable()                     # a denial of the nested shell
    assert store.appended[0]["session"] == "10-1"
    assert store.appended[1]["session"] is None
    assert store.appended[1]["shared_cgroup"] == ["10-1", "11-1"]


class Invalidations:
    def __init__(self):
        self.count = 0

    def invalidate(self):
        self.count += 1


def test_watch_empties_the_cache_on_every_record_event(tmp_path):
    """The real inotify on run_dir's sessions/: a new session's record reaches the
    recorder's invalidate before anything else reads a copy."""
    run = str(tmp_path / "run")
    records.ensure_dirs(run)
    watcher = watch.Watch.__new__(watch.Watch)
    watcher.inotify, watcher.wd_cgroup, watcher.denials = Inotify(), {}, Invalidations()
    seen = []
    watcher._on_record = lambda kind, name, mask: seen.append((kind, name))
    try:
        watcher.dir_wds = {watcher.inotify.add(f"{run}/{kind}", watch.DIR_MASK): kind
                           for kind in ("sessions", "runs")}
        _live(run, "11-1", time.time())
        watcher._on_inotify()
    finally:
        watcher.inotify.close()
    assert ("sessions", "11-1") in seen
    assert watcher.denials.count >= 1

