"""The command line: every option explained, defaults shown, shared flags spelled once."""

import argparse

import pytest

from cellsynth.cli import _build_parser, main


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = _build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_option_of_every_command_has_a_help_line():
    missing = [f"{name} {'/'.join(a.option_strings) or a.dest}"
               for name, command in _commands().items() for a in command._actions
               if a.help in (None, "") and not isinstance(a, argparse._HelpAction)]
    assert not missing, missing


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["predict", "--help"])
    assert stop.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "tile overlap in pixels (default: 96)" in text
    assert "(default: cpu)" in text


def test_shared_flags_mean_the_same_everywhere():
    texts = {}
    for command in _commands().values():
        for action in command._actions:
            if action.option_strings and action.option_strings[0] in ("--force", "--quiet",
                                                                      "--resume"):
                texts.setdefault(action.option_strings[0], set()).add(action.help)
    assert set(texts) == {"--force", "--quiet", "--resume"}
    # export's --force replaces a plain output folder; every other command shares one text
    assert all(len(helps - {"replace a non-empty --out folder"}) == 1 for helps in texts.values())
