"""packaging/completion/netfence, driven through bash as readline would
(COMP_WORDS/COMP_CWORD, the function `complete -p netfence` names): commands and
options from the parser (walked), profile names, user names, sessions, run's CMD."""

import argparse
import json
import os
import pwd
import subprocess

import pytest

from netfence import cli

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "packaging", "completion", "netfence")

DRIVER = r"""
source "$1"; shift
spec=$(complete -p netfence) || exit 3
function=${spec#*-F }; function=${function%% *}
COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1))
COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}
"$function" netfence "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD - 1]}"
printf '%s\n' "${COMPREPLY[@]}"
"""


def complete(*words, path=None, cwd=None):
    """What TAB offers for the command line `words` (the last one being completed)."""
    env = {"PATH": path or os.environ["PATH"], "HOME": "/root", "LC_ALL": "C.UTF-8"}
    done = subprocess.run(["bash", "--norc", "--noprofile", "-c", DRIVER, "driver",
                           SCRIPT, "netfence", *words], capture_output=True, text=True,
                          env=env, check=False, timeout=60, cwd=cwd)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    return sorted(line for line in done.stdout.splitlines() if line)


def subcommands():
    parser = cli.build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_the_commands():
    assert complete("") == sorted(subcommands())
    assert complete("gr") == ["grant", "grants"]


@pytest.mark.parametrize("name", sorted(subcommands()))
def test_each_command_s_options(name):
    options = {o for a in subcommands()[name]._actions for o in a.option_strings}
    assert set(complete(name, "-")) == options
    # after a global option and its value, before the command
    assert set(complete("--state-dir", "/tmp", name, "--")) == {
        o for o in options if o.startswith("--")}


def test_global_options_before_the_command():
    assert "--config-dir" in complete("--")
    assert complete("--config-dir", "/et") == ["/etc"]


def test_doctor_s_pam_dir_is_a_directory():
    assert complete("doctor", "--pam-dir", "/et") == ["/etc"]


def write_snapshot(directory, profiles):
    with open(os.path.join(directory, "compiled.json"), "w") as handle:
        json.dump({"login": {"profiles": {name: {} for name in profiles}}}, handle)


@pytest.mark.parametrize("words", [["grant", "alice", "--profile"],
                                   ["restrict", "bob", "--profile"],
                                   ["run", "--profile"], ["log", "--profile"]])
def test_profile_names_from_the_applied_snapshot(tmp_path, words):
    write_snapshot(tmp_path, ["web-only", "no-mail", "lab"])
    assert complete("--state-dir", str(tmp_path), *words, "") == [
        "lab", "no-mail", "web-only"]
    # the directory given after the command is the one read, as netfence reads it
    assert complete(*words[:-1], "--state-dir", str(tmp_path), words[-1], "w") == [
        "web-only"]


def test_profile_names_from_check_without_a_snapshot(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "netfence").write_text(
        '#!/bin/sh\n[ "$1 $2" = "check --json" ] && echo \'{"profiles": ["from-files"]}\'\n')
    (fake / "netfence").chmod(0o755)
    words = ["--state-dir", str(tmp_path / "none"), "grant", "alice", "--profile", "f"]
    assert complete(*words, path=f"{fake}:{os.environ['PATH']}") == ["from-files"]


@pytest.mark.parametrize("words", [["explain"], ["grant"], ["restrict"], ["verify"],
                                   ["log", "--user"], ["run", "--profile", "p", "--user"]])
def test_user_names(words):
    root = pwd.getpwuid(0).pw_name
    assert root in complete(*words, root[:2])


def test_session_keys_from_the_run_dir(tmp_path):
    (tmp_path / "sessions").mkdir()
    (tmp_path / "sessions" / "4242-88123").write_text("{}")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "nginx-77-1234").write_text("{}")
    assert complete("--run-dir", str(tmp_path), "grant", "--session", "") == [
        "4242-88123", "nginx-77-1234"]


def test_run_completes_the_command_after_the_double_dash():
    assert "bash" in complete("run", "--profile", "p", "--", "bas")


def test_a_free_value_offers_nothing():
    assert complete("grant", "alice", "--reason", "") == []
    assert complete("explain", "root", "--at", "") == []


def test_names_that_bash_would_expand_are_never_offered(tmp_path):
    """compgen -W expands its words: a name from a directory given on the line that
    holds $(...) or `...` must not run anything when root presses TAB."""
    witness = tmp_path / "ran"                  # `touch ran` runs in tmp_path
    write_snapshot(tmp_path, ["ok-1", "$(touch ran)", "`touch ran`"])
    (tmp_path / "sessions").mkdir()
    (tmp_path / "sessions" / "$(touch ran)").write_text("{}")
    assert complete("--state-dir", str(tmp_path), "grant", "x", "--profile", "",
                    cwd=tmp_path) == ["ok-1"]
    assert complete("--run-dir", str(tmp_path), "grant", "--session", "",
                    cwd=tmp_path) == []
    assert not witness.exists()
