"""Shell completion scripts (bash, zsh) generated from an argparse parser.

Small on purpose: commands (one level of subparsers), their options, the choices of
options that have them and file names for path options. The scripts are plain
functions of the parser, so a new flag is completed the moment it is added.

    iopfctl completion bash > ~/.local/share/bash-completion/completions/iopfctl
    source <(iopfctl completion zsh)
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

SHELLS = ("bash", "zsh")
#: Options whose value is a file name.
_PATH_DESTS = frozenset({"socket", "config", "log", "topology"})


@dataclass
class _Option:
    flags: list[str]
    help: str
    takes_value: bool
    choices: list[str] = field(default_factory=list)
    path: bool = False


@dataclass
class _Command:
    name: str
    help: str
    options: list[_Option]
    #: The choices of its positional arguments (``completion bash|zsh``).
    values: list[str] = field(default_factory=list)


def _positional_choices(parser: argparse.ArgumentParser) -> list[str]:
    return [
        str(c)
        for a in parser._actions
        if not a.option_strings and a.choices and not isinstance(a, argparse._SubParsersAction)
        for c in a.choices
    ]


def _options(parser: argparse.ArgumentParser) -> list[_Option]:
    out = []
    for action in parser._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS:
            continue
        takes_value = action.nargs != 0
        out.append(
            _Option(
                flags=list(action.option_strings),
                help=_one_line(action.help or ""),
                takes_value=takes_value,
                choices=[str(c) for c in action.choices or ()] if takes_value else [],
                path=takes_value and action.dest in _PATH_DESTS,
            )
        )
    return out


def _commands(parser: argparse.ArgumentParser) -> list[_Command]:
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                out.append(
                    _Command(
                        name,
                        _one_line(helps.get(name, "")),
                        _options(sub),
                        _positional_choices(sub),
                    )
                )
    return out


def _one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text.replace("%(default)s", "")).strip()


def _func(prog: str) -> str:
    return "_" + re.sub(r"\W", "_", prog)


# -- bash ------------------------------------------------------------------------------


def _words(items: Sequence[str]) -> str:
    return " ".join(items)


def _bash(parser: argparse.ArgumentParser) -> str:
    prog, fn = parser.prog, _func(parser.prog)
    top, commands = _options(parser), _commands(parser)
    valued = sorted(
        {f for o in top for f in o.flags if o.takes_value}
        | {f for c in commands for o in c.options for f in o.flags if o.takes_value}
    )
    lines = [
        f"# bash completion for {prog}, generated from its argument parser",
        f"{fn}() {{",
        '    local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}"',
        '    local cmd="" i',
        "    for ((i = 1; i < COMP_CWORD; i++)); do",
        '        case "${COMP_WORDS[i]}" in',
    ]
    if valued:
        lines.append(f"            {'|'.join(valued)}) ((i++)) ;;")
    if commands:
        names = "|".join(c.name for c in commands)
        lines.append(f'            {names}) cmd="${{COMP_WORDS[i]}}"; break ;;')
    lines += ["        esac", "    done", '    case "$prev" in']
    seen: dict[str, str] = {}
    for o in top + [o for c in commands for o in c.options]:
        if not o.takes_value:
            continue
        action = (
            f'COMPREPLY=($(compgen -W "{_words(o.choices)}" -- "$cur")); return ;;'
            if o.choices
            else 'COMPREPLY=($(compgen -f -- "$cur")); return ;;'
            if o.path
            else "COMPREPLY=(); return ;;"
        )
        for flag in o.flags:
            seen.setdefault(flag, action)
    lines += [f"        {flag}) {action}" for flag, action in seen.items()]
    lines += ["    esac", '    case "$cmd" in']
    top_flags = [f for o in top for f in o.flags]
    lines.append(
        f'        "") COMPREPLY=($(compgen -W "{_words([*top_flags, *(c.name for c in commands)])}"'
        ' -- "$cur")) ;;'
    )
    for c in commands:
        flags = [*c.values, *(f for o in c.options for f in o.flags)]
        lines.append(f'        {c.name}) COMPREPLY=($(compgen -W "{_words(flags)}" -- "$cur")) ;;')
    lines += ["    esac", "}", f"complete -F {fn} {prog}", ""]
    return "\n".join(lines)


# -- zsh -------------------------------------------------------------------------------


def _zq(text: str) -> str:
    """Text for inside a single-quoted ``_arguments`` spec: no quote, bracket or colon."""
    return (
        text.replace("'", "")
        .replace("[", "(")
        .replace("]", ")")
        .replace(":", " ")
        .replace("\\", "")
    )


def _zsh_specs(options: Sequence[_Option]) -> list[str]:
    specs = []
    for o in options:
        names = o.flags[0] if len(o.flags) == 1 else "{" + ",".join(o.flags) + "}"
        excl = f"'({' '.join(o.flags)})'" if len(o.flags) > 1 else ""
        value = ""
        if o.takes_value:
            what = (
                f"({' '.join(_zq(c) for c in o.choices)})"
                if o.choices
                else "_files"
                if o.path
                else " "
            )
            value = f":value:{what}"
        specs.append(f"{excl}{names}'[{_zq(o.help)}]{value}'")
    return specs


def _zsh(parser: argparse.ArgumentParser) -> str:
    prog, fn = parser.prog, _func(parser.prog)
    commands = _commands(parser)
    lines = [
        f"#compdef {prog}",
        f"# zsh completion for {prog}, generated from its argument parser",
        f"{fn}() {{",
        '    local curcontext="$curcontext" state line',
    ]
    top = _zsh_specs(_options(parser))
    if commands:
        lines.append("    local -a commands")
        lines.append("    commands=(")
        lines += [f"        '{c.name}:{_zq(c.help)}'" for c in commands]
        lines.append("    )")
        top += ["'1:command:->command'", "'*::argument:->argument'"]
    lines.append("    _arguments -C \\")
    lines += [f"        {s} \\" for s in top[:-1]] + [f"        {top[-1]}"]
    if commands:
        lines += [
            "    case $state in",
            "        command) _describe -t commands command commands ;;",
            "        argument)",
            "            case $words[1] in",
        ]
        for c in commands:
            rest = f"'1:value:({' '.join(_zq(v) for v in c.values)})'" if c.values else "'*: :'"
            specs = [*_zsh_specs(c.options), rest]
            lines.append(f"                {c.name}) _arguments {' '.join(specs)} ;;")
        lines += ["            esac ;;", "    esac"]
    lines += [
        "}",
        # Autoloaded from $fpath, or sourced: `source <(iopfctl completion zsh)`.
        'if [[ "${zsh_eval_context[-1]}" == loadautofunc ]]; then',
        f'    {fn} "$@"',
        "else",
        f"    compdef {fn} {prog}",
        "fi",
        "",
    ]
    return "\n".join(lines)


def completion_script(parser: argparse.ArgumentParser, shell: str) -> str:
    """The ``shell`` (``bash`` or ``zsh``) completion script of ``parser``'s program."""
    if shell == "bash":
        return _bash(parser)
    if shell == "zsh":
        return _zsh(parser)
    raise ValueError(f"no completion for shell {shell!r}: {', '.join(SHELLS)}")


__all__ = ["SHELLS", "completion_script"]
