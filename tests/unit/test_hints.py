"""Hints that run: every `make` target, `promptserve` command and flag named in the docs or in a string of the
project's code exists (the Makefile, the CLI's own option table, the script a flag is given to).

Cheap on purpose: the CLI is read from its click command tree (no subprocess, no torch import), the code's
strings from the AST. A mention is checked against the program it is given to on its command line:
`promptserve CMD [SUB] --flag` against that command's options, `benchmarks/x.py --flag` or
`python -m pkg.mod --flag` against the flags that script defines; a bare `--flag` in prose against every
flag the project defines. Other programs' flags (curl, docker, uvicorn, pip, pytest, ...) are theirs to check.
"""

from __future__ import annotations

import ast
import re
import tomllib
from functools import cache
from pathlib import Path

import pytest
import typer

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("promptserve", "promptserve_cli", "server", "training", "prompt_store", "kernels")
SCRIPT_DIRS = ("benchmarks", "training", "server")  # where `x.py --flag` and `-m pkg.mod --flag` scripts live
EXTERNAL_PROGRAMS = ("curl", "docker", "uvicorn", "pip", "pytest", "serve", "ray", "ruff", "nice", "python",
                     "apt-get", "redis-server", "git", "opt_in_out")
# other programs' flags that docs name without the program in the same code span
EXTERNAL_FLAGS = {"--build-arg"}  # docker build
# separators of one command line inside a text: a pipe, a sequence, a comment, the end of an inline code span
SEGMENT_END = re.compile(r"\n|`|\|\||\||&&|;| # ")
FLAG = re.compile(r"(?<![\w/.=-])--[a-z][a-z0-9-]*")
PROMPTSERVE = re.compile(r"(?<![\w/.@-])promptserve ((?:[a-z][\w-]*)(?: [a-z][\w-]*)?)")
SCRIPT = re.compile(r"(?<![\w-])((?:[\w-]+/)+[\w-]+\.py)\b|-m ([a-z_][\w.]*)")
MAKE = re.compile(r"(?<![\w-])make ([a-z][\w-]*)")


@cache
def cli() -> tuple[dict[str, set[str]], set[str]]:
    """({"train": flags, "tasks list": flags, ...}, the root's flags); --help is on every command."""
    from promptserve_cli import build_app

    root = typer.main.get_command(build_app())

    def flags(command) -> set[str]:
        return {o for p in command.params for o in (*p.opts, *p.secondary_opts)} | {"--help"}

    def walk(group, prefix: tuple[str, ...] = ()) -> dict[str, set[str]]:
        out = {}
        for name, command in group.commands.items():
            out[" ".join((*prefix, name))] = flags(command)
            if hasattr(command, "commands"):
                out.update(walk(command, (*prefix, name)))
        return out

    return walk(root), flags(root)


def string_constants(path: Path) -> list[str]:
    return [n.value for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Constant)
            and isinstance(n.value, str)]


@cache
def defined_flags(path: Path) -> frozenset[str]:
    """Flags a script defines: string constants that are exactly one flag (argparse's add_argument("--x")), and
    for a benchmark those that the helpers of benchmarks/common.py it calls add (c.rounds_flags(parser), ...)."""
    own = frozenset(s for s in string_constants(path) if re.fullmatch(r"--[a-z][a-z0-9-]*", s))
    if path.parent != REPO / "benchmarks":
        return own
    called = {n.func.attr if isinstance(n.func, ast.Attribute) else getattr(n.func, "id", "")
              for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Call)}
    return own.union(*(flags for helper, flags in benchmark_helper_flags().items() if helper in called))


@cache
def benchmark_helper_flags() -> dict[str, frozenset[str]]:
    """benchmarks/common.py's functions -> the flags each adds to a parser, with those of the functions it calls."""
    tree = ast.parse((REPO / "benchmarks" / "common.py").read_text())
    functions = {f.name: f for f in tree.body if isinstance(f, ast.FunctionDef)}

    def flags(name: str) -> frozenset[str]:
        body = list(ast.walk(functions[name]))
        own = {n.value for n in body if isinstance(n, ast.Constant) and isinstance(n.value, str)
               and re.fullmatch(r"--[a-z][a-z0-9-]*", n.value)}
        calls = {n.func.id for n in body if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        return frozenset(own.union(*(flags(c) for c in calls & functions.keys() - {name})))

    return {name: flags(name) for name in functions}


@cache
def every_defined_flag() -> frozenset[str]:
    commands, root = cli()
    scripts = {f for d in SCRIPT_DIRS for f in (REPO / d).rglob("*.py")}
    return frozenset(set().union(root, *commands.values(), *(defined_flags(f) for f in scripts)))


def makefile_targets() -> set[str]:
    text = (REPO / "Makefile").read_text()
    return set(re.findall(r"^([a-z][\w-]*)\s*:(?!=)", text, flags=re.M))


def texts() -> dict[str, list[tuple[str, bool]]]:
    """Every doc and every string of the packages' code (error messages, help, docstrings), by where it is,
    as (part, is_code) pieces: fenced blocks and `inline code` are code, the prose between them is not."""
    docs = {str(p.relative_to(REPO)): p.read_text() for p in [REPO / "README.md", *(REPO / "docs").glob("*.md")]}
    out = {}
    for where, text in docs.items():
        pieces = []
        for i, block in enumerate(re.split(r"^```.*$", text, flags=re.M)):
            pieces += [(block, True)] if i % 2 else inline_code(block)
        out[where] = pieces
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            out[str(path.relative_to(REPO))] = [p for s in string_constants(path) for p in inline_code(s)]
    return {k: [(t.replace("\\\n", " "), code) for t, code in v] for k, v in out.items()}  # continued lines


def inline_code(text: str) -> list[tuple[str, bool]]:
    return [(part, i % 2 == 1) for i, part in enumerate(text.split("`"))]


def script_path(match: re.Match) -> Path | None:
    """The project file a `x.py` / `-m pkg.mod` mention runs, or None for someone else's program."""
    path = REPO / match.group(1) if match.group(1) else REPO / (match.group(2).replace(".", "/") + ".py")
    return path if path.is_file() else None


def problems_in(where: str, text: str, code: bool = True) -> list[str]:
    """What `text` names that does not exist. Outside code (prose), "promptserve <word>" is the project's name
    in a sentence unless <word> is a command."""
    commands, root = cli()
    found = []
    for segment in SEGMENT_END.split(text):
        program = PROMPTSERVE.search(segment)
        if program and (segment[:program.start()].rstrip().endswith(("import", "from"))
                        or (not code and program.group(1).split()[0] not in commands)):
            program = None
        script = SCRIPT.search(segment)
        flags = set(FLAG.findall(segment))
        if program and (not script or program.start() < script.start()):
            words = program.group(1).split()
            if words[0] not in commands:
                found.append(f"{where}: `promptserve {words[0]}` is not a command ({segment.strip()[:80]!r})")
                continue
            name = " ".join(words) if " ".join(words) in commands else words[0]
            flags = set(FLAG.findall(segment[program.end():]))
            found += [f"{where}: `promptserve {name}` has no {f}" for f in sorted(flags - commands[name] - root)]
        elif script:
            path = script_path(script)
            if path is not None:
                flags = set(FLAG.findall(segment[script.end():]))
                found += [f"{where}: {path.relative_to(REPO)} defines no {f}" for f in
                          sorted(flags - defined_flags(path))]
        elif not any(re.search(rf"(?<![\w/.-]){re.escape(p)}\b", segment) for p in EXTERNAL_PROGRAMS):
            found += [f"{where}: no command defines {f} ({segment.strip()[:80]!r}); if it is another "
                      "program's flag, name the program beside it or add it to EXTERNAL_FLAGS"
                      for f in sorted(flags - every_defined_flag() - EXTERNAL_FLAGS)]
    return found


def test_every_make_target_named_exists():
    targets = makefile_targets()
    named = {(where, t) for where, pieces in texts().items() for text, _ in pieces for t in MAKE.findall(text)}
    assert named, "no `make` mention found: the extraction broke"
    missing = sorted(f"{where}: make {t}" for where, t in named if t not in targets)
    assert not missing, f"targets named but not in the Makefile {sorted(targets)}:\n" + "\n".join(missing)


def test_phony_targets_exist():
    phony = re.search(r"^\.PHONY:(.*)$", (REPO / "Makefile").read_text(), flags=re.M)
    assert phony is not None
    assert set(phony.group(1).split()) <= makefile_targets()


def test_every_promptserve_command_and_flag_named_exists():
    commands, _ = cli()
    assert {"serve", "train", "eval", "push", "tasks list"} <= set(commands)
    pieces = [(where, text, code) for where, parts in texts().items() for text, code in parts]
    mentions = sum(len(PROMPTSERVE.findall(text)) for _, text, code in pieces if code)
    assert mentions > 20, f"only {mentions} `promptserve ...` mentions found in code: the extraction broke"
    found = [p for where, text, code in pieces for p in problems_in(where, text, code)]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("text, problem", [
    ("run `promptserve pretrain --data cifar/ --backbone-pretrained`", "has no --backbone-pretrained"),
    ("Build the demo backbone with `promptserve prettrain`", "`promptserve prettrain` is not a command"),
    ("pass --no-such-flag to continue", "no command defines --no-such-flag"),
    ("`benchmarks/attention.py --no-such-flag 3`", "defines no --no-such-flag"),
])
def test_the_checker_catches_a_stale_hint(text, problem):
    assert any(problem in p for p in problems_in("example", text)), problems_in("example", text)


def test_the_checker_passes_real_hints():
    assert problems_in("example", "run `promptserve pretrain --data cifar/ --resume` | curl --data-binary @x") == []


def test_readme_shell_variables_are_set_or_documented():
    """A README command line uses only variables it sets, or the PROMPTSERVE_* settings the docs describe."""
    readme = (REPO / "README.md").read_text()
    blocks = "\n".join(re.findall(r"```(?:bash|sh|console)\n(.*?)```", readme, flags=re.S))
    used = set(re.findall(r"\$\{?([A-Z][A-Z0-9_]*)", blocks))
    assigned = set(re.findall(r"(?:^|\s|export\s)([A-Z][A-Z0-9_]*)=", blocks, flags=re.M))
    unset = sorted(v for v in used - assigned if not v.startswith("PROMPTSERVE_") and v not in ("HOME", "PWD"))
    assert not unset, f"README uses ${unset} without setting it: set it in the block or use a PROMPTSERVE_ variable"


def test_pytest_markers_are_declared_and_used():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    declared = {m.split(":")[0] for m in config["markers"]}
    sources = "\n".join(p.read_text() for p in (REPO / "tests").rglob("*.py") if p.name != "test_hints.py")
    unused = sorted(m for m in declared if not re.search(rf"mark\.{m}\b", sources))
    assert not unused, f"markers declared in pyproject.toml but used by no test: {unused}"
    assert "--strict-markers" in config.get("addopts", []), "undeclared markers must fail, not pass silently"
