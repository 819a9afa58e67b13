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
