"""The man pages render with `man -l` without a warning, and say what the code does:
netfence(8) has every command and option of the argparse parser (walked, not listed)
and is what tools/gen_man.py makes of it; netfence.toml(5) every key policy.py
accepts; netfence-hook(8) every argument the hook takes."""

import argparse
import os
import re
import subprocess
import sys

import pytest

from netfence import cli, hook, policy

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MAN = os.path.join(ROOT, "docs", "man")
PAGES = ["netfence.8", "netfence.toml.5", "netfence-hook.8"]
GLOBAL = {"--config-dir", "--state-dir", "--run-dir"}


def render(page):
    """The page as man(1) shows it, wide enough that no option is broken."""
    done = subprocess.run(["man", "--warnings", "-l", os.path.join(MAN, page)],
                          capture_output=True, text=True, check=False,
                          env={**os.environ, "MANWIDTH": "200", "MANPAGER": "cat",
                               "LC_ALL": "C.UTF-8"})
    assert done.returncode == 0 and done.stderr == "", done.stderr
    return done.stdout


@pytest.mark.parametrize("page", PAGES)
def test_each_page_renders_without_warnings(page):
    text = render(page)
    assert "NAME" in text and "SEE ALSO" in text and len(text.splitlines()) > 40


def subcommands():
    parser = cli.build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return parser, action.choices


def command_sections(text):
    """{command: its text} from the rendered COMMANDS section."""
    body = text.split("\nCOMMANDS\n", 1)[1].split("\nEXIT STATUS\n", 1)[0]
    parts = re.split(r"^ {3}(\S+)\n", body, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def test_netfence_8_has_every_command_and_option_of_the_parser():
    text = render("netfence.8")
    sections = command_sections(text)
    parser, commands = subcommands()
    assert sorted(sections) == sorted(commands)
    for name, sub in commands.items():
        options = {o for a in sub._actions for o in a.option_strings} - GLOBAL
        options -= {"-h", "--help"}
        for option in options:
            assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", sections[name]), (
                f"netfence.8: {name} lacks {option}")
        for example in cli.EXAMPLES[name]:
            assert example in sections[name], example
    head = text.split("\nCOMMANDS\n", 1)[0]
    for option in {o for a in parser._actions for o in a.option_strings}:
        assert option in head, f"netfence.8: global option {option} missing"


def test_netfence_8_documents_the_exit_status():
    status = render("netfence.8").split("\nEXIT STATUS\n", 1)[1].split("\nFILES\n")[0]
    for code, meaning in (("0", "success"), ("1", "a problem"), ("2", "usage")):
        assert re.search(rf"^ +{code}\s+{meaning}", status, flags=re.M), code


def test_the_generated_files_are_up_to_date():
    """tools/gen_man.py --check: netfence.8 and the completion's tables are what the
    installed parser makes (after a change to cli.py: python3 tools/gen_man.py)."""
    done = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "gen_man.py"),
                           "--check"], capture_output=True, text=True, check=False,
                          env={**os.environ, "NETFENCE_FROM_INSTALLED": "1"})
    assert done.returncode == 0, done.stderr


def test_netfence_toml_5_has_every_key_of_the_policy_language():
    text = render("netfence.toml.5")
    keys = (list(policy._SETTINGS) + list(policy._PROFILE_KEYS) + list(policy._RULE_KEYS)
            + list(policy._NET_KEYS) + list(policy._PEER_KEY.values()))
    for key in keys:
        assert re.search(rf"^ +{key} = ", text, flags=re.M), f"netfence.toml.5 lacks {key}"


def test_netfence_hook_8_has_every_argument_of_the_hook():
    text = render("netfence-hook.8")
    options, _warnings = hook.parse_args([])
    for name in options:
        shown = name if name == "debug" else f"{name}="
        assert re.search(rf"^ +{shown}", text, flags=re.M), f"netfence-hook.8 lacks {name}"
