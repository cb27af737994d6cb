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
from typing import NoReturn

from jsonargparse._util import import_object
from lightning.pytorch.cli import LightningArgumentParser

from vaezoo.models.hparams import init_parameters

# Lines of jsonargparse's messages that describe its attempts, not the problem.
_NOISE = re.compile(
    r"^\s*(- )?(Does not validate against any of the Union subtypes|Subtypes: |Errors:$|Given value type: |Given value: "
    r"|Expected a <class 'NoneType'>|Expected a path but .* either not accessible or invalid)"
)
_CLASS_PATH = re.compile(r"class_path[ =]'([\w.]+)'")
_OPTION = re.compile(r"Option '([\w.]+)' is not accepted")
_SUBCOMMAND_OPTION = re.compile(r"does not accept option '([\w.]+)'")


def close_match(name: str, known: list[str]) -> str:
    """`` Did you mean 'x'?`` for the closest of ``known``, else an empty string."""
    match = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return f" Did you mean '{match[0]}'?" if match else ""


def explain(message: str, parser: LightningArgumentParser | None = None) -> str:
    """jsonargparse's ``message`` without its noise, plus a close match for an unknown option."""
    lines = [line.strip().removeprefix("- ") for line in message.splitlines() if line.strip() and not _NOISE.match(line)]
    text = " ".join(lines)
    text = re.sub(r'Parser key "([\w.]+)": ', r"--\1: ", text)
    text = re.sub(r"Problem with given class_path '([\w.]+)': ", r"(\1) ", text)
    hint = ""
    if match := _OPTION.search(message):
        for path in reversed(_CLASS_PATH.findall(message)):  # the innermost class first (--model.net.x)
            try:
                hint = close_match(match[1], init_parameters(import_object(path)))
            except (ImportError, AttributeError, ValueError, TypeError):
                continue
            if hint:
                break
        hint = hint or _owners(match[1])
    elif (match := _SUBCOMMAND_OPTION.search(message)) and parser is not None:
        known = [action.dest for action in parser._actions if action.dest and action.dest != "help"]
        hint = close_match(match[1], known)
    return text.rstrip(".") + "." + hint


def _owners(option: str) -> str:
    """`` It is an option of ...`` naming the registered classes that take ``option``."""
    from vaezoo.registry import REGISTRIES

    owners = [f"{entry.name} ({registry.kind})" for registry in REGISTRIES for entry in registry
              if option in init_parameters(entry.cls)]
    return f" '{option}' is an option of: {', '.join(owners)}; choose one first (e.g. --model beta)." if owners else ""


class VAEZooParser(LightningArgumentParser):
    """LightningCLI's parser, with :func:`explain`'s short messages on a bad option or config."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error or os.environ.get("JSONARGPARSE_DEBUG"):
            super().error(message, ex)  # raises: jsonargparse is trying alternatives, or debugging
        parser = getattr(ex, "subcommand_parser", None) or self
        prog = parser.prog.replace(" [options]", "")
        sys.stderr.write(f"vaezoo: error: {explain(message, parser)}\n")
        sys.stderr.write(f"Every option, with its type and default: {prog} --help\n")
        self.exit(2)
