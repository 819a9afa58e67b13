"""Timed sets in a private network namespace, proved by traffic: a restriction
(ruid-P) applies P to a uid's egress, a grant (guid-P) exempts a uid from P, and the
kernel itself expires an element when its timeout runs out."""

import json
import os
import re
import sys
import time

import pytest

from netfence import grants, records, timed
from netfence.setkinds import TSCG, TUID, key_number
from support.livesession import login
from test_reload import POLICY, add_uid

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (netns)")


def add_timed(nf, set_name, number, timeout):
    nf.netns.nft("add", "element", "inet", "netfence", set_name,
                 f"{{ {number} timeout {timeout} }}")


def listed(nf, set_name):
    return nf.netns.nft("list", "set", "inet", "netfence", set_name).stdout


@pytest.fixture
def loaded(nf):
    nf.write_policy(POLICY.format(base=nf.cgroup_base))
    nf.cli("reload")
    nf.echo_server(["tcp:127.0.0.1:80", "tcp:127.0.0.1:443"])
    return nf


def test_a_restricted_uid_gets_the_profile_and_others_do_not(loaded):
    nf = loaded
    assert nf.probe("tcp", "127.0.0.1", 80, uid=60011) == "ok"
    add_timed(nf, "ruid-no-plain-http", 60011, "60s")
    add_timed(nf, "any-ruid", 60011, "60s")
    assert nf.probe("tcp", "127.0.0.1", 80, uid=60011) == "refused"
    assert nf.probe("tcp", "127.0.0.1", 443, uid=60011) == "ok"
    assert nf.probe("tcp", "127.0.0.1", 80, uid=60012) == "ok"
    # the profile set alone does nothing: the base chain tests the guard first
    add_timed(nf, "ruid-no-plain-http", 60012, "60s")
    assert nf.probe("tcp", "127.0.0.1", 80, uid=60012) == "ok"


def test_a_granted_uid_is_exempt_from_that_profile_only(loaded):
    nf = loaded
    add_uid(nf, "uid-no-plain-http", 60013)
    add_uid(nf, "uid-lab", 60014)
    add_uid(nf, "uid-no-plain-http", 60014)
    assert nf.probe("tcp", "127.0.0.1", 80, uid=60013) == "refused"
    add_timed(nf, "guid-no-plain-http", 60013, "60s")
    assert nf.probe("tcp", "127.0.0.1", 80, uid=60013) == "ok"
    # a grant of one profile leaves the others: lab still rejects port 80
    add_timed(nf, "guid-no-plain-http", 60014, "60s")
    assert nf.probe("tcp", "127.0.0.1", 80, uid=60014) == "refused"
    # a grant also wins over a restriction of the same profile
    for name in ("ruid-no-plain-http", "any-ruid", "guid-no-plain-http"):
        add_timed(nf, name, 60015, "60s")
    assert nf.probe("tcp", "127.0.0.1", 80, uid=60015) == "ok"


def test_the_kernel_expires_a_timed_element(loaded):
    nf = loaded
    add_timed(nf, "ruid-no-plain-http", 60016, "2s")
    add_timed(nf, "any-ruid", 60016, "2s")
    assert nf.probe("tcp", "127.0.0.1", 80, uid=60016) == "refused"
    assert "60016" in listed(nf, "any-ruid")
    time.sleep(2.5)
    assert nf.probe("tcp", "127.0.0.1", 80, uid=60016) == "ok"
    assert "60016" not in listed(nf, "any-ruid")


def test_a_login_set_refuses_a_timeout(loaded):
    """Login sets have no `flags timeout`: a timed element cannot go into one (and a
    permanent one cannot become timed)."""
    out = nf_add_timed_unchecked(loaded, "uid-no-plain-http", 60017, "60s")
    assert out.returncode != 0
    assert "60017" not in listed(loaded, "uid-no-plain-http")


def nf_add_timed_unchecked(nf, set_name, number, timeout):
    return nf.netns.run(["nft", "add", "element", "inet", "netfence", set_name,
                         f"{{ {number} timeout {timeout} }}"], check=False)


# ---- timed_apply.reconcile and reload, from records, grants.json and the clock -----

RECONCILE = r"""
import json, sys
from netfence import timed_apply
now = float(sys.argv[3]) if len(sys.argv) > 3 else None
print(json.dumps(timed_apply.reconcile(sys.argv[1], sys.argv[2], now=now)))
"""

EXPIRIES = r"""
import json, sys
from netfence.nftnl import Ruleset
with Ruleset() as ruleset:
    print(json.dumps({"gen": ruleset.generation(),
                      "sets": ruleset.read_expiries(sys.argv[1:])}))
"""


def reconcile(nf, now=None):
    args = [sys.executable, "-c", RECONCILE, nf.run_dir, nf.state_dir]
    return json.loads(nf.netns.run(args + ([repr(now)] if now else [])).stdout)


def kernel(nf, *sets):
    """(ruleset generation, {set: {uid: seconds left}}) as the dump says."""
    out = json.loads(nf.netns.run([sys.executable, "-c", EXPIRIES, *sets]).stdout)
    return out["gen"], {s: {key_number(k): (ms / 1000 if ms is not None else None)
                            for k, ms in keys.items()} for s, keys in out["sets"].items()}


def open_window(minutes_before=10, minutes_after=30):
    """A window of every day open now: (windows, the epoch it closes)."""
    now = time.time()
    lt = time.localtime(now)
    minute = lt.tm_hour * 60 + lt.tm_min
    windows = [[127, (minute - minutes_before) % 1440, (minute + minutes_after) % 1440]]
    return windows, timed.open_until(windows, now)


def give_window(nf, key, uid, profile, windows):
    """What the login path records for a rule with `time` at user scope."""
    path = records.session_path(nf.run_dir, key)
    record = records.read(path)
    record["timed"] = [{"rule": 1, "scope": "user", "windows": windows, "elements": {
        f"tuid-{profile}": [TUID.key(uid)], "any-tuid": [TUID.key(uid)]}}]
    records.write(path, record)


def restrict(nf, uid, profile, seconds, grant_id="g-0000abcd"):
    now = time.time()
    entry = {"id": grant_id, "kind": "restrict", "profile": profile, "uid": uid,
             "user": f"u{uid}", "created": now, "expires": now + seconds,
             "reason": "test", "by": "root"}
    grants.write(nf.state_dir, grants.read_all(nf.state_dir) + [entry], now)


def test_reconcile_adds_refreshes_and_removes_in_one_batch(loaded):
    nf = loaded
    key, _app = login(nf, 60021)
    windows, closes = open_window()
    give_window(nf, key, 60021, "lab", windows)
    restrict(nf, 60022, "no-plain-http", 600)
    add_timed(nf, "tuid-lab", 60099, "300s")                # extra: nobody wants it
    add_timed(nf, "ruid-no-plain-http", 60022, "10s")       # desired, expiry wrong
    nf.netns.nft("add", "element", "inet", "netfence", "any-ruid", "{ 60022 }")  # no timeout
    before, _ = kernel(nf)
    assert nf.probe("tcp", "127.0.0.1", 443, uid=60021) == "ok"   # lab rejects 8080 only
    assert nf.probe("tcp", "127.0.0.1", 80, uid=60021) == "ok"
    result = reconcile(nf)
    assert result == {"added": 2, "refreshed": 2, "removed": 1, "next_change": result[
        "next_change"]}, result
    after, sets = kernel(nf, "tuid-lab", "any-tuid", "ruid-no-plain-http", "any-ruid")
    assert after == before + 1                              # one transaction
    assert set(sets["tuid-lab"]) == {60021} and set(sets["any-tuid"]) == {60021}
    assert abs(time.time() + sets["tuid-lab"][60021] - closes) < 2     # until it closes
    for name in ("ruid-no-plain-http", "any-ruid"):
        assert 595 < sets[name][60022] <= 600, sets         # the grant's time left
    assert nf.probe("tcp", "127.0.0.1", 80, uid=60021) == "refused"   # lab: default reject
    assert nf.probe("tcp", "127.0.0.1", 80, uid=60022) == "refused"   # restricted
    assert reconcile(nf) == {
        "added": 0, "refreshed": 0, "removed": 0, "next_change": result["next_change"]}
    assert kernel(nf)[0] == after                           # nothing to do: no batch


def test_a_window_ends_by_the_kernel_and_a_closed_one_is_removed(loaded):
    nf = loaded
    key, _app = login(nf, 60023)
    windows, closes = open_window()
    give_window(nf, key, 60023, "lab", windows)
    # The clock 2 s before the window closes: the keys get 2 s, the kernel ends them.
    assert reconcile(nf, now=closes - 2)["added"] == 2
    assert nf.probe("tcp", "127.0.0.1", 80, uid=60023) == "refused"
    time.sleep(2.5)
    assert nf.probe("tcp", "127.0.0.1", 80, uid=60023) == "ok"
    _, sets = kernel(nf, "tuid-lab", "any-tuid")
    assert sets == {"tuid-lab": {}, "any-tuid": {}}
    # After the window (the clock past its end): nothing is desired, nothing added
    add_timed(nf, "tuid-lab", 60023, "300s")
    assert reconcile(nf, now=closes + 60) == {"added": 0, "refreshed": 0, "removed": 1,
                                              "next_change": closes - 40 * 60 + 86400}


def test_a_restriction_ends_on_time_and_is_not_put_back(loaded):
    nf = loaded
    restrict(nf, 60024, "no-plain-http", 2)
    assert reconcile(nf)["added"] == 2
    assert nf.probe("tcp", "127.0.0.1", 80, uid=60024) == "refused"
    time.sleep(2.5)
    assert nf.probe("tcp", "127.0.0.1", 80, uid=60024) == "ok"
    assert reconcile(nf)["added"] == 0


def test_reload_carries_timed_elements_over_with_their_time_left(loaded):
    nf = loaded
    restrict(nf, 60025, "no-plain-http", 100)
    reconcile(nf)
    time.sleep(3)
    nf.cli("reload")
    _, sets = kernel(nf, "ruid-no-plain-http", "any-ruid")
    for name in ("ruid-no-plain-http", "any-ruid"):
        left = sets[name][60025]
        assert left is not None and 90 < left < 97.5, sets    # not fresh, not permanent
    assert nf.probe("tcp", "127.0.0.1", 80, uid=60025) == "refused"


def test_status_reports_timed_drift_and_gc_repairs_it(loaded):
    nf = loaded
    restrict(nf, 60026, "no-plain-http", 600)
    reconcile(nf)
    add_timed(nf, "ruid-lab", 60027, "300s")
    nf.netns.nft("delete", "element", "inet", "netfence", "any-ruid", "{ 60026 }")
    drift = json.loads(nf.cli("status", "--json", check=False).stdout)["drift"]
    assert not drift["ok"]
    assert drift["timed_missing"] == {"any-ruid": 1}, drift
    assert drift["timed_extra"] == {"ruid-lab": 1}, drift
    # login sets' drift knows nothing of timed sets: no "leaked" grant
    assert drift["leaked_elements"] == {} and drift["missing_elements"] == {}
    out = nf.cli("gc").stdout
    assert "timed entries: 1 added, 0 refreshed, 1 removed" in out, out
    assert json.loads(nf.cli("status", "--json").stdout)["drift"]["ok"]
    assert nf.probe("tcp", "127.0.0.1", 80, uid=60026) == "refused"


def test_gc_restores_a_flushed_table_with_its_timed_elements(loaded):
    nf = loaded
    restrict(nf, 60028, "no-plain-http", 600)
    reconcile(nf)
    nf.netns.nft("flush", "ruleset")
    assert nf.probe("tcp", "127.0.0.1", 80, uid=60028) == "ok"
    nf.cli("gc")
    _, sets = kernel(nf, "ruid-no-plain-http")
    assert 590 < sets["ruid-no-plain-http"][60028] <= 600
    assert nf.probe("tcp", "127.0.0.1", 80, uid=60028) == "refused"


def test_status_shows_each_timed_entry_with_its_expiry(loaded):
    nf = loaded
    key, _app = login(nf, 60030)
    windows, closes = open_window()
    path = records.session_path(nf.run_dir, key)
    record = records.read(path)
    record["timed"] = [{"rule": 1, "scope": "session", "windows": windows, "elements": {
        "tscg-lab": [TSCG.key(record["cgroup_id"])],
        "any-tscg": [TSCG.key(record["cgroup_id"])]}}]
    records.write(path, record)
    restrict(nf, 60029, "no-plain-http", 600)
    reconcile(nf)
    before = time.time()
    text = nf.cli("status").stdout
    assert "timed entries (time windows, grants, restrictions): 2" in text, text
    # the expiry's hh:mm, taken on both sides of the command: it may cross a minute
    expires = "|".join(sorted({time.strftime("%H:%M", time.localtime(t + 600))
                               for t in (before, time.time())}))
    assert re.search(r"  ruid-no-plain-http: uid 60029, expires in 9m5\ds \((" + expires
                     + ")", text), text
    assert f"  tscg-lab: session {key} of nobody, expires in " in text, text
    state = json.loads(nf.cli("status", "--json").stdout)
    (entry,) = state["profiles"]["no-plain-http"]["timed"]["ruid-no-plain-http"]
    assert entry["key"] == 60029 and 590 < entry["expires_in"] <= 600
    assert abs(entry["expires_at"] - (time.time() + entry["expires_in"])) < 5
    (window,) = state["profiles"]["lab"]["timed"]["tscg-lab"]
    assert abs(window["expires_at"] - closes) < 2
    assert state["profiles"]["lab"]["timed"]["guid-lab"] == []


def test_a_damaged_grants_file_does_not_keep_a_flushed_table_away(loaded):
    """Attack: cut grants.json (or make it foreign-owned), then flush the ruleset.
    gc must still bring the login fences back and the restrictions in force (from
    the last-good copy: never "no grants"), and say why, exit 1."""
    nf = loaded
    add_uid(nf, "uid-no-plain-http", 60031)
    key, _app = login(nf, 60031, ["no-plain-http"])
    restrict(nf, 60032, "no-plain-http", 600)
    reconcile(nf)
    with open(os.path.join(nf.state_dir, "grants.json"), "r+") as handle:
        handle.truncate(10)
    nf.netns.nft("flush", "ruleset")
    out = nf.cli("gc", check=False)
    assert out.returncode == 1, out.stdout
    assert "grants.json" in out.stdout and "restrictions_kept=1" in out.stdout, out.stdout
    assert nf.probe("tcp", "127.0.0.1", 80, uid=60031) == "refused"   # fence back
    assert nf.probe("tcp", "127.0.0.1", 80, uid=60032) == "refused"   # restriction kept
    drift = json.loads(nf.cli("status", "--json", check=False).stdout)["drift"]
    assert not drift["ok"] and "grants.json" in drift["timed_error"], drift
    # reload refuses instead: it would otherwise drop the restrictions in force
    assert nf.cli("reload", check=False).returncode == 1


def test_a_damaged_grants_file_stops_no_window_and_removes_no_grant(loaded):
    """A damaged grants.json made reconcile raise before anything: no window opened.
    Now the windows are reconciled, grant and restriction elements stay, the error
    is still reported."""
    nf = loaded
    key, _app = login(nf, 60033)
    windows, closes = open_window()
    give_window(nf, key, 60033, "lab", windows)
    add_timed(nf, "guid-no-plain-http", 60034, "300s")      # a grant the file had
    add_timed(nf, "ruid-lab", 60035, "300s")                # a restriction it had
    with open(os.path.join(nf.state_dir, "grants.json"), "w") as handle:
        handle.write("{cut")
    os.chmod(os.path.join(nf.state_dir, "grants.json"), 0o600)
    args = [sys.executable, "-c", RECONCILE, nf.run_dir, nf.state_dir]
    out = nf.netns.run(args, check=False)
    assert out.returncode != 0 and "grants.json" in out.stderr, out.stderr
    _, sets = kernel(nf, "tuid-lab", "guid-no-plain-http", "ruid-lab")
    assert set(sets["tuid-lab"]) == {60033}                 # the window opened
    assert abs(time.time() + sets["tuid-lab"][60033] - closes) < 2
    assert set(sets["guid-no-plain-http"]) == {60034}       # nothing destroyed there
    assert set(sets["ruid-lab"]) == {60035}
    assert nf.probe("tcp", "127.0.0.1", 80, uid=60033) == "refused"
