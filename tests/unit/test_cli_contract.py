"""The command line's contract, for every command the parser has (walked, not listed):
exit 0 ok / 1 problem found / 2 usage, and `--json` on everything that prints state."""

import argparse

import pytest

from netfence import cli

# Commands without --json, and why: each prints no state, or a format of its own.
NO_JSON = {
    "reload": "an action: one summary line",
    "metrics": "the Prometheus text exposition format is its whole purpose",
    "flush": "an action: one summary line",
    "gc": "an action: one line per repair",
    "run": "becomes CMD",
    "grant": "an action: the id and expiry it created",
    "restrict": "an action: the id and expiry it created",
    "revoke": "an action: one line",
    "watch": "a daemon: one key=value line per action",
    "pam-line": "prints the PAM line itself",
    "install-hook": "an action: writes the hook",
}


def subcommands():
    parser = cli.build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


@pytest.mark.parametrize("name", sorted(subcommands()))
def test_every_command_that_prints_state_has_json(name):
    options = {o for a in subcommands()[name]._actions for o in a.option_strings}
    assert ("--json" in options) != (name in NO_JSON), (
        f"{name}: --json missing (add it) or listed in NO_JSON without need")


@pytest.mark.parametrize("name", sorted(subcommands()))
def test_an_unknown_option_is_a_usage_error(name, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main([name, "--no-such-option-xyz"])
    assert stop.value.code == cli.USAGE_EXIT == 2
    assert "error:" in capsys.readouterr().err


def test_no_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main([])
    assert stop.value.code == 2


@pytest.mark.parametrize("argv", [["install-hook", "relative/hook"],
                                  ["pam-line", "--hook", "relative/hook"]])
def test_a_relative_hook_path_is_a_usage_error(argv, capsys, tmp_path):
    argv += ["--state-dir", str(tmp_path), "--run-dir", str(tmp_path)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "hook path must be absolute: 'relative/hook'" in err
    assert not (tmp_path / "relative").exists()


def test_a_usage_error_raised_by_any_command_exits_2(monkeypatch, capsys):
    from netfence.errors import UsageError

    def refuse(args, paths):
        raise UsageError("bad thing")
    monkeypatch.setattr(cli, "cmd_flush", refuse)
    assert cli.main(["flush"]) == 2
    assert capsys.readouterr().err == "netfence flush: bad thing\n"


def test_a_problem_exits_1(monkeypatch, capsys):
    from netfence.errors import StateError

    def fail(args, paths):
        raise StateError("damaged")
    monkeypatch.setattr(cli, "cmd_flush", fail)
    assert cli.main(["flush"]) == 1
    assert capsys.readouterr().err == "netfence flush: damaged\n"


def test_the_top_level_help_states_the_exit_status(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["--help"])
    assert stop.value.code == 0
    assert "exit status: 0 ok, 1 a problem was found, 2 usage" in capsys.readouterr().out
