"""timed_apply's pure parts: what one reconcile batch changes, and what drift reports."""

from netfence.timed_apply import SETTLING, key_drift, plan_changes

NOW = 1_800_000_000.0


def test_missing_wrong_and_extra_keys_make_one_plan():
    want = {"ruid-p": {"aa": NOW + 600, "bb": NOW + 600, "cc": NOW + 600},
            "tuid-p": {"dd": NOW + 30}}
    have = {"ruid-p": {"aa": 599_600,          # 0.4 s off: right
                       "bb": 10_000,           # 590 s off: refreshed
                       "ee": 50_000},          # not desired: removed
            "tuid-p": {"dd": None}}            # added by hand without a timeout
    destroy, add, counts = plan_changes(want, have, NOW)
    assert counts == {"added": 1, "refreshed": 2, "removed": 1}
    assert {s: sorted(k) for s, k in destroy.items()} == {"ruid-p": ["bb", "ee"],
                                                          "tuid-p": ["dd"]}
    assert add == {"ruid-p": {"bb": 600_000, "cc": 600_000}, "tuid-p": {"dd": 30_000}}


def test_a_desired_set_the_kernel_lacks_is_left_alone():
    destroy, add, counts = plan_changes({"gscg-gone": {"aa": NOW + 60}}, {}, NOW)
    assert (destroy, add) == ({}, {}) and counts == {"added": 0, "refreshed": 0,
                                                     "removed": 0}


def test_drift_leaves_out_keys_about_to_change():
    want = {"s": {"soon": NOW + SETTLING / 2, "later": NOW + 60, "here": NOW + 60}}
    have = {"s": {"here": 60_000, "ending": int(SETTLING * 500), "stays": 60_000,
                  "forever": None}}
    missing, extra = key_drift(want, have, NOW)
    assert missing == {"s": ["later"]}
    assert extra == {"s": ["forever", "stays"]}


def test_a_window_at_the_horizon_is_not_rewritten_every_minute():
    """A window covering the whole week expires at the 7-day cap, which moves with
    the clock: an expiry set a minute (or hours) ago is right; one day off is not."""
    from netfence.timed import HORIZON_DAYS
    cap = NOW + HORIZON_DAYS * 86400
    have = {"tuid-p": {"aa": (cap - NOW - 60) * 1000,         # set a minute ago
                       "bb": (cap - NOW - 20 * 3600) * 1000,   # 20 h ago
                       "cc": (cap - NOW - 86400 - 60) * 1000}}  # more than a day
    want = {"tuid-p": {"aa": cap, "bb": cap, "cc": cap}}
    destroy, add, counts = plan_changes(want, have, NOW)
    assert counts == {"added": 0, "refreshed": 1, "removed": 0}
    assert destroy == {"tuid-p": ["cc"]}
    short = {"tuid-p": {"aa": NOW + 3600}}                    # not at the cap: exact
    assert plan_changes(short, {"tuid-p": {"aa": 3_000_000}}, NOW)[2]["refreshed"] == 1
