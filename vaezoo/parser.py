"""Short parse errors: the problem and a close match, not 80 lines of usage.

jsonargparse answers a bad option or config key with the subcommand's whole usage (every option of
the trainer, model, data and callbacks) and then the error, itself wrapped in the alternatives of
``Union[VAE, None]`` that were tried. :class:`VAEZooParser` prints only what went wrong, a close
match where there is one, and where the full list of options is.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from pathlib import Path
from typing import Any, NoReturn

import yaml
from jsonargparse import Namespace
from lightning.pytorch.cli import LightningArgumentParser

from vaezoo import compat
from vaezoo.errors import VAEZooError
from vaezoo.introspect import import_object, init_parameters

# What a config file's mapping holds, for the whole config and for the sections given a file of their own.
_EXPECTED_KEYS = {
    None: "sections such as trainer:, model:, data: (as in configs/mnist_mlp.yaml)",
    "trainer": "--trainer options such as max_epochs: 10",
    "model": "class_path: NAME and init_args: {...}",
    "data": "class_path: NAME and init_args: {...}",
}


def config_file_problem(path: Path, section: str | None = None) -> str | None:
    """What keeps ``path`` from being a config file: not UTF-8, not YAML, or not a mapping; None if it is one.

    Args:
        path: The file.
        section: The option it was given to (``trainer`` for ``--trainer FILE``); None for ``--config``.
    """
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    expected = f"a config file is a YAML mapping of {_EXPECTED_KEYS.get(section, f'--{section} options')}"
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # what jsonargparse's loader builds on
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        column = err.start - raw.rfind(b"\n", 0, err.start)
        return (
            f"{path} is not UTF-8 text: line {line}, column {column} holds the byte 0x{raw[err.start]:02x} (saved "
            f"as Latin-1 or Windows-1252?). Save it as UTF-8, e.g. `iconv -f latin1 -t utf-8 {path.name} > utf8.yaml`."
        )
    try:
        content = yaml.load(text, Loader=loader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        if mark is None:
            return f"{path} is not valid YAML: {' '.join(str(err).split())}."
        where = f"{path}, line {mark.line + 1}, column {mark.column + 1}"
        lines = text.splitlines()
        if mark.line < len(lines) and lines[mark.line][mark.column : mark.column + 1] == "\t":
            return f"{where}: a tab character. YAML indents with spaces only: replace the tab with spaces."
        context = f" ({err.context} started on line {err.context_mark.line + 1})" if err.context_mark else ""
        return f"{where}: {err.problem}{context}. Fix the YAML syntax there."
    if content is None:
        return f"{path} is empty (or holds only comments): {expected}."
    if isinstance(content, dict):
        return None
    kind = "a list" if isinstance(content, list) else f"a single value ({str(content)[:40]!r})"
    node = yaml.compose(text, Loader=loader)
    return f"{path}, line {node.start_mark.line + 1}: the file holds {kind}, not a mapping: {expected}."


def close_match(name: str, known: list[str]) -> str:
    """`` Did you mean 'x'?`` for the closest of ``known``, else an empty string."""
    match = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return f" Did you mean '{match[0]}'?" if match else ""


def explain(message: str, parser: LightningArgumentParser | None = None) -> str:
    """jsonargparse's ``message`` without its noise, plus a close match for an unknown option."""
    lines = [line.strip().removeprefix("- ") for line in message.splitlines()
             if line.strip() and not compat.NOISE.match(line)]
    text = " ".join(lines)
    text = compat.PARSER_KEY.sub(r"--\1: ", text)
    text = compat.PROBLEM_CLASS.sub(r"(\1) ", text)
    if match := compat.SECTION_CONFIG.search(message):
        return _section_config(*match.groups())
    if (match := compat.REQUIRED.search(message.strip())) and (missing := _missing_sections(match[1])):
        return " ".join(_required(section) for section in missing)
    hint = ""
    if match := compat.OPTION.search(message):
        for path in reversed(compat.CLASS_PATH.findall(message)):  # the innermost class first (--model.net.x)
            try:
                hint = close_match(match[1], init_parameters(import_object(path)))
            except (ImportError, AttributeError, ValueError, TypeError):
                continue
            if hint:
                break
        hint = hint or _owners(match[1])
    elif (match := compat.SUBCOMMAND_OPTION.search(message)) and parser is not None:
        hint = close_match(match[1], list(parser.get_defaults().keys()))
    elif (match := compat.UNRECOGNIZED.search(message)) and parser is not None:  # also an abbreviation (refused)
        hint = close_match(match[1], [f"--{key}" for key in parser.get_defaults().keys()])
    return text.rstrip(".") + "." + hint


def _section_config(section: str, value: str) -> str:
    """Why ``--SECTION VALUE`` is neither a config file nor a mapping, and what it takes."""
    path = Path(value)
    if path.is_file():
        return config_file_problem(path, section) or f"--{section} {value}: the file could not be loaded."
    takes = f"--{section} takes a YAML file or a mapping such as '{{key: value}}'"
    if match := re.fullmatch(r"(\w+):(\S.*)", value):  # max_epochs:1, for max_epochs: 1
        key, setting = match.groups()
        return (
            f"--{section} {value} is not a file, and not a mapping either: YAML needs a space after the colon. "
            f"Set one option with --{section}.{key} {setting}, or give a mapping: --{section} '{{{key}: {setting}}}'."
        )
    return f"--{section} {value}: no such file. {takes}; or set one option with --{section}.KEY VALUE."


def _missing_sections(names: str) -> list[str]:
    """``model``/``data`` of jsonargparse's "required: fit.model, fit.data"; empty if anything else is missing."""
    sections = [name.strip().rpartition(".")[2] for name in names.split(",")]
    return sections if set(sections) <= {"model", "data"} else []


def _required(section: str) -> str:
    """What to pass when the config names no ``model`` or no ``data``."""
    from vaezoo.registry import DATASETS, VARIANTS

    registry, example = (DATASETS, "mnist") if section == "data" else (VARIANTS, "vanilla")
    return (
        f"no {registry.kind} chosen: pass --{section} NAME ({registry.kind}s: {', '.join(registry.names())}), "
        f"e.g. --{section} {example}, or a --config whose {section}: section names one (configs/mnist_mlp.yaml)."
    )


def _owners(option: str) -> str:
    """`` It is an option of ...`` naming the registered classes that take ``option``."""
    from vaezoo.registry import REGISTRIES

    owners = [f"{entry.name} ({registry.kind})" for registry in REGISTRIES for entry in registry
              if option in init_parameters(entry.cls)]
    return f" '{option}' is an option of: {', '.join(owners)}; choose one first (e.g. --model beta)." if owners else ""


class VAEZooParser(LightningArgumentParser):
    """LightningCLI's parser, with :func:`explain`'s short messages on a bad option or config.

    Abbreviated options are refused (argparse's ``allow_abbrev=False``): argparse would otherwise take
    ``--trainer.max_epoch 3`` as ``--trainer.max_epochs 3``, and a prefix that a later option makes
    ambiguous would change meaning silently.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def parse_path(self, path: str | os.PathLike, *args: Any, **kwargs: Any) -> Namespace:
        """Parse a ``--config`` file; one that is not UTF-8, not YAML or not a mapping is named with its line.

        jsonargparse answers a Latin-1 file with a UnicodeDecodeError traceback, a YAML error without
        the file's name, and a list, a scalar or an empty file with "Unexpected config" and its content.
        The file is checked first (configs are small); a mapping goes on to jsonargparse, whose errors
        about its keys and values :meth:`error` shortens.
        """
        problem = config_file_problem(Path(path))
        if problem is not None:
            raise VAEZooError(problem)
        return super().parse_path(path, *args, **kwargs)

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error or os.environ.get("JSONARGPARSE_DEBUG"):
            super().error(message, ex)  # raises: jsonargparse is trying alternatives, or debugging
        parser = getattr(ex, "subcommand_parser", None) or self
        prog = parser.prog.replace(" [options]", "")
        sys.stderr.write(f"vaezoo: error: {explain(message, parser)}\n")
        sys.stderr.write(f"Every option, with its type and default: {prog} --help\n")
        self.exit(2)
