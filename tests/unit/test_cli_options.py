"""The `tddfa` command line is consistent: every option has help that states its default,
--version works, -v/--debug are accepted after the subcommand, every client tracks videos by
default and --shared-memory has auto wherever it exists."""

from __future__ import annotations

import argparse
import importlib.metadata
import logging

import pytest

from tddfa_tools.cli import build_parser, main

FLAGS = (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._StoreConstAction)


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _options():
    for command, parser in _subparsers().items():
        for action in parser._actions:
            if action.option_strings and action.dest != "help":
                yield command, action


@pytest.mark.parametrize("command,action", list(_options()), ids=lambda v: getattr(v, "dest", v))
def test_every_option_has_help_with_its_default(command: str, action: argparse.Action) -> None:
    if action.help == argparse.SUPPRESS:  # hidden on purpose (test and benchmark hooks)
        return
    assert action.help, f"tddfa {command} {action.option_strings[0]} has no help"
    if isinstance(action, FLAGS) or action.default == argparse.SUPPRESS or action.required:
        return
    assert "default" in action.help, (
        f"tddfa {command} {action.option_strings[0]}: the help does not say the default"
    )


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert importlib.metadata.version("tddfa-triton") in capsys.readouterr().out


def test_verbosity_flags_anywhere() -> None:
    parser = build_parser()
    for argv in (["-v", "assets"], ["assets", "-v"], ["assets", "--verbose"]):
        assert parser.parse_args(argv).verbose, argv
    assert parser.parse_args(["assets", "--debug"]).debug
    assert not parser.parse_args(["assets"]).verbose


def test_verbose_after_the_subcommand_logs_debug(tmp_path, monkeypatch) -> None:
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])  # basicConfig configures anew; both come back
    monkeypatch.setattr(root, "level", root.level)
    main(["assets", "--check", "--assets", str(tmp_path), "-v"])
    assert logging.getLogger().level == logging.DEBUG


def test_one_default_mode_for_every_client() -> None:
    parsers = _subparsers()
    for command in ("video", "batch", "perf"):
        mode = next(a for a in parsers[command]._actions if a.dest == "mode")
        assert mode.default == "track", command
    for command, action in _options():
        if action.dest == "shared_memory":
            assert "auto" in action.choices and action.default == "auto", command
