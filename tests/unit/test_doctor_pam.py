"""doctor's PAM logic: includes followed, the hook found once, required, seteuid, not
skippable, and pam_env user_readenv judged by whether the hook has its launcher."""

import os

import pytest

from netfence import doctor_pam
from netfence.doctor_pam import check_pam, check_service, session_stack, skipped_by, split_line

HOOK = "/usr/lib/netfence/netfence-hook"
LINE = f"session required pam_exec.so seteuid quiet {HOOK}"


def write(directory, name, text):
    path = os.path.join(directory, name)
    with open(path, "w") as handle:
        handle.write(text)
    return path


def problems(stack, launcher=True):
    return [text for text, _ in check_service(stack, launcher)]


def test_split_line_reads_bracketed_controls_and_comments():
    assert split_line("session [success=1 default=ignore] pam_x.so a b # c") == (
        "session", "[success=1 default=ignore]", "pam_x.so", ("a", "b"))
    assert split_line("-session optional pam_systemd.so") == (
        "session", "optional", "pam_systemd.so", ())
    assert split_line("   # only a comment") is None
    assert split_line("@include common-session")[:3] == ("@include", "", "common-session")


def test_split_line_reads_tab_separated_lines_as_pam_auth_update_writes_them():
    # pam-auth-update writes "session\trequired\tpam_exec.so ...": a doctor that split
    # on spaces only saw no hook in any service of a real package install
    assert split_line("session\trequired\tpam_exec.so seteuid quiet /usr/lib/netfence/"
                      "netfence-hook") == ("session", "required", "pam_exec.so",
                                           ("seteuid", "quiet",
                                            "/usr/lib/netfence/netfence-hook"))
    assert split_line("session\t[default=1]\tpam_permit.so") == (
        "session", "[default=1]", "pam_permit.so", ())


def test_a_tab_separated_hook_line_is_found(tmp_path):
    (tmp_path / "common-session").write_text(
        "session\t[default=1]\t\t\tpam_permit.so\nsession\trequisite\t\t\tpam_deny.so\n"
        "session\trequired\t\t\tpam_permit.so\n"
        f"session\trequired\tpam_exec.so seteuid quiet {HOOK}\n")
    (tmp_path / "su").write_text("@include common-session\n")
    assert problems(session_stack(str(tmp_path), "su")) == []


def test_includes_and_substacks_are_expanded_in_place(tmp_path):
    d = str(tmp_path)
    write(d, "common-session", f"session required pam_unix.so\n{LINE}\n")
    write(d, "extra", "session optional pam_motd.so\n")
    write(d, "sshd", "auth required pam_permit.so\n@include common-session\n"
          "session substack extra\nsession required pam_env.so user_readenv=1\n")
    modules = [line.module for line in session_stack(d, "sshd")]
    assert modules == ["pam_unix.so", "pam_exec.so", "pam_motd.so", "pam_env.so"]
    assert problems(session_stack(d, "sshd")) == []


def test_an_include_loop_is_an_error_not_a_hang(tmp_path):
    d = str(tmp_path)
    write(d, "a", "@include b\n")
    write(d, "b", "@include a\n")
    with pytest.raises(ValueError):
        session_stack(d, "a")


def test_missing_hook_is_a_problem(tmp_path):
    d = str(tmp_path)
    write(d, "su", "session required pam_unix.so\n")
    (found,) = problems(session_stack(d, "su"))
    assert "no netfence hook" in found


def test_twice_optional_and_without_seteuid_are_problems(tmp_path):
    d = str(tmp_path)
    write(d, "common-session", f"{LINE}\n")
    write(d, "su", f"@include common-session\nsession optional pam_exec.so quiet {HOOK}\n")
    found = problems(session_stack(d, "su"))
    assert any("runs 2 times" in p for p in found), found
    write(d, "login", f"session optional pam_exec.so quiet {HOOK}\n")
    found = problems(session_stack(d, "login"))
    assert any("control `optional`" in p for p in found), found
    assert any("no `seteuid`" in p for p in found), found


def test_a_jump_over_the_hook_or_a_sufficient_line_before_it_is_found(tmp_path):
    d = str(tmp_path)
    write(d, "cron", f"session [success=1 default=ignore] pam_succeed_if.so user = x\n"
          f"{LINE}\n")
    stack = session_stack(d, "cron")
    assert skipped_by(stack, stack[1]) is stack[0]
    assert any("can skip the hook" in p for p in problems(stack))
    # Debian's common-session: [default=1] skips only pam_deny, the hook comes later
    write(d, "common-session", "session [default=1] pam_permit.so\nsession requisite "
          f"pam_deny.so\nsession required pam_permit.so\n{LINE}\n")
    assert problems(session_stack(d, "common-session")) == []
    write(d, "sudo", f"session sufficient pam_rootok.so\n{LINE}\n")
    assert any("can skip" in p for p in problems(session_stack(d, "sudo")))


def test_user_readenv_is_a_problem_only_without_the_launcher(tmp_path):
    d = str(tmp_path)
    write(d, "sshd", f"session required pam_env.so user_readenv=1\n{LINE}\n")
    stack = session_stack(d, "sshd")
    assert problems(stack, launcher=True) == []
    (found,) = problems(stack, launcher=False)
    assert "reaches the hook at open and close" in found
    write(d, "login", f"{LINE}\nsession required pam_env.so user_readenv=1\n")
    (found,) = problems(session_stack(d, "login"), launcher=False)
    assert "reaches the hook at close" in found


def test_check_pam_reports_each_present_service_and_a_missing_hook_file(tmp_path):
    d = str(tmp_path)
    hook = write(d, "netfence-hook", "#!/bin/sh\n")
    os.chmod(hook, 0o755)
    write(d, "su", f"session required pam_exec.so seteuid quiet {hook}\n")
    write(d, "cron", "session required pam_unix.so\n")
    write(d, "login", f"session required pam_exec.so seteuid quiet {d}/gone/netfence-hook\n")
    by_name = {name: (ok, detail) for name, ok, detail, _ in check_pam(d)}
    assert set(by_name) == {"pam su", "pam cron", "pam login"}
    assert by_name["pam su"][0] is True
    assert by_name["pam cron"] == (False, by_name["pam cron"][1])
    assert not by_name["pam login"][0] and "missing or not executable" in by_name["pam login"][1]
    assert doctor_pam.installed_line(d).hook_path == hook


def test_no_session_service_at_all_is_a_problem(tmp_path):
    ((name, ok, detail, fix),) = check_pam(str(tmp_path))
    assert not ok and "none of the session services" in detail


def test_pam_systemd_after_the_hook_is_a_problem(tmp_path):
    d = str(tmp_path)
    write(d, "login", f"{LINE}\nsession optional pam_systemd.so\n")
    (found,) = problems(session_stack(d, "login"))
    assert "pam_systemd runs after the hook" in found
    write(d, "sshd", f"session optional pam_systemd.so\n{LINE}\n")
    assert problems(session_stack(d, "sshd")) == []


def test_the_login_check_service_admits_its_user_alone_and_uses_the_installed_line():
    from netfence.doctor_login import service_text
    line = doctor_pam.PamLine("x:1", "required", "pam_exec.so",
                              ("seteuid", "quiet", HOOK, "state_dir=/var/lib/netfence"))
    text = service_text(line, "/run/d/state", "/run/d/run", "nfdoctor1")
    assert f"session required pam_exec.so seteuid quiet {HOOK} state_dir=/run/d/state " \
           "run_dir=/run/d/run\n" in text
    assert "state_dir=/var/lib/netfence" not in text
    auth = [l for l in text.splitlines() if l.startswith(("auth", "account"))]
    assert auth[0].split()[1:] == ["requisite", "pam_succeed_if.so", "quiet", "user", "=",
                                   "nfdoctor1"]
    assert auth[2].split()[1:3] == ["requisite", "pam_succeed_if.so"]


def test_root_only_runuser_without_the_hook_is_said_not_a_problem(tmp_path):
    d = str(tmp_path)
    write(d, "runuser", "auth sufficient pam_rootok.so\nsession required pam_unix.so\n")
    write(d, "runuser-l", "session include runuser\n")
    by_name = {name: (ok, detail, fix) for name, ok, detail, fix in check_pam(d)}
    assert by_name["pam runuser"][0] and "only root" in by_name["pam runuser"][1]
    assert by_name["pam runuser-l"][0] and by_name["pam runuser-l"][2].startswith("optional")
    # wired but broken is still a problem
    write(d, "runuser", f"session optional pam_exec.so quiet {HOOK}\n")
    assert not dict((n, ok) for n, ok, _, _ in check_pam(d))["pam runuser"]
