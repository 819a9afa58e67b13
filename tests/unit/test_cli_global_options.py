"""The global options (--config-dir, --state-dir, --run-dir) work before and after the
command, as admins type them (`netfence check --config-dir D`), and one given after the
command wins over the same one before it; a command's own arguments are untouched."""

import os

import pytest

from netfence import cli
from netfence.apply import Paths

COMMANDS = ["check", "reload", "status", "metrics", "flush", "gc", "watch", "log",
            "grants", "pam-line", "install-hook"]


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_takes_them_after_its_name(command):
    args = cli.build_parser().parse_args(
        [command, "--config-dir", "/c", "--state-dir", "/s", "--run-dir", "/r"])
    assert (args.config_dir, args.state_dir, args.run_dir) == ("/c", "/s", "/r")


def test_before_after_and_left_out():
    parser = cli.build_parser()
    before = parser.parse_args(["--config-dir", "/c", "check"])
    assert (before.config_dir, before.state_dir) == ("/c", Paths.state_dir)
    both = parser.parse_args(["--config-dir", "/a", "check", "--config-dir", "/b"])
    assert both.config_dir == "/b"
    neither = parser.parse_args(["status", "--json"])
    assert (neither.config_dir, neither.state_dir, neither.run_dir) == (
        Paths.config_dir, Paths.state_dir, Paths.run_dir)


def test_run_keeps_what_follows_the_double_dash_for_the_command():
    args = cli.build_parser().parse_args(
        ["run", "--profile", "p", "--run-dir", "/r", "--", "cmd", "--run-dir", "/x"])
    assert args.run_dir == "/r" and args.argv == ["--", "cmd", "--run-dir", "/x"]


def test_the_check_reads_the_directory_given_after_the_name(capsys):
    missing = f"/nonexistent-nftest-{os.getpid()}"      # under /: no parent to refuse
    assert cli.main(["--config-dir", "/etc", "check", "--config-dir", missing]) == 1
    assert f"{missing}: no such directory" in capsys.readouterr().err


@pytest.mark.parametrize("command", sorted(cli.EXAMPLES))
def test_every_command_help_ends_with_an_example(command, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main([command, "--help"])
    out = capsys.readouterr().out
    assert stop.value.code == 0
    assert "examples:\n  netfence " in out and "--config-dir" in out


def test_no_command_lacks_examples():
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if a.dest == "command")
    assert sorted(commands.choices) == sorted(cli.EXAMPLES)
