"""The fenced code blocks of README.md and docs/*.md, as tests/test_docs_run.py runs and checks them.

A block's id is its file and the first words of its first line (`docs/serving.md: curl -s -X POST ...`,
`(2)` added for a repeat): it stays the same when blocks are added above it, so the test's skip list reads
as the docs do. Kinds:

- `shell` (bash, sh, shell, console): commands that run as written;
- `synopsis` (a plain fence with `unictr` lines, or a shell fence using `[optional]` or `a|b` forms): a
  command summary, whose every expansion (each alternative, optional parts kept) must parse;
- `python`, `json`: code run as written, a request body or a response;
- `text`: anything else (a directory layout): not an example.

Run as `python -m tests.docs_blocks ARGS`, it is the `unictr` command of the docs test: the same CLI, with
the sizes of the tiny world (`shrink`).
"""

from __future__ import annotations

import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import typer
from typer.exceptions import TyperException

from unictr.cli import app

SHELL_LANGS = {"bash", "sh", "shell", "console"}
FENCE = re.compile(r"^(\s*)(```+|~~~+)\s*([\w+-]*)[^\n]*$")
# A synopsis form in a shell line: `[--flag ...]`, `[a | b]`, or `a|b` with no spaces around the bar.
SYNOPSIS_FORM = re.compile(r"\[-|\[[^\]]*\|[^\]]*\]|\w\|\w")
# The sizes of the tiny world every example runs in: enough rows and steps for a model that passes the
# promotion gate, few enough that every block runs in seconds at one thread. No warm-up: the default 100
# warm-up steps outlast the ~63 steps of a tiny run, whose calibration then hung on luck (a click calibration
# ratio of 0.79 on home_feed kept it out of the gate once the model gained its short-term field).
TINY_ROWS = 20_000
TINY_SETS = ("train.epochs=1", "train.batch_size=256", "train.lr=0.01", "train.warmup_steps=0")
TINY_BOOTSTRAP = 20
ID_CHARS = 72  # a block's id: its file and the first words of its first line, up to this length


@dataclass(frozen=True)
class Block:
    """One fenced block: `doc` (path relative to the checkout), its line, fence language, text and kind."""

    doc: str
    line: int
    lang: str
    text: str
    kind: str
    id: str


def doc_files(root: Path) -> list[Path]:
    """README.md, then docs/*.md in name order."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def blocks(root: Path) -> list[Block]:
    """Every fenced block of the docs, in order."""
    found: list[Block] = []
    for path in doc_files(root):
        doc = str(path.relative_to(root))
        lines = path.read_text().splitlines()
        i = 0
        while i < len(lines):
            m = FENCE.match(lines[i])
            if not m:
                i += 1
                continue
            end = next((j for j in range(i + 1, len(lines)) if lines[j].strip().startswith(m.group(2))), len(lines))
            text = "\n".join(line.removeprefix(m.group(1)) for line in lines[i + 1 : end])
            lang = m.group(3).lower()
            found.append(_block(doc, i + 1, lang, text, {b.id for b in found}))
            i = end + 1
    return found


def _block(doc: str, line: int, lang: str, text: str, taken: set[str]) -> Block:
    first = _strip_comment(next((t for t in text.splitlines() if t.strip()), "")).split()
    words = [w for i, w in enumerate(first) if len(" ".join(first[: i + 1])) <= ID_CHARS] or first[:1]
    bid = f"{doc}: {' '.join(words)}"
    n = 2
    while bid in taken:  # the same first line twice in one file
        bid = f"{doc}: {' '.join(words)} ({n})"
        n += 1
    return Block(doc, line, lang, text, _kind(lang, text), bid)


def _kind(lang: str, text: str) -> str:
    if lang in SHELL_LANGS:
        return "synopsis" if any(SYNOPSIS_FORM.search(_strip_comment(c)) for c in logical_lines(text)) else "shell"
    if lang in ("", "text"):
        return "synopsis" if unictr_lines(text) else "text"
    return lang if lang in ("python", "json") else "text"


def logical_lines(text: str) -> list[str]:
    """Lines with `\\` continuations joined; a console block's `$ ` prompts removed (its output dropped)."""
    joined = re.sub(r"\\\n\s*", " ", text).splitlines()
    if any(line.startswith("$ ") for line in joined):
        return [line[2:] for line in joined if line.startswith("$ ")]
    return [line for line in joined if line.strip()]


def _strip_comment(line: str) -> str:
    return re.sub(r"(^|\s)#.*$", "", line)


def unictr_lines(text: str) -> list[str]:
    return [line for line in logical_lines(text) if re.search(r"(^|\s)(unictr|-m unictr)\s", _strip_comment(line))]


def shell_commands(text: str) -> list[list[str]]:
    """The argv of every `unictr` command in shell text (after `unictr`, `python -m unictr` or `torchrun ...
    -m unictr`), wherever it stands: after `&&`, `;`, `do`, in a loop. Variables stay as written."""
    lex = shlex.shlex(_one_line(text), posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    found, command, redirect = [], [], False
    for token in [*lex, ";"]:
        if redirect:  # the target of `> file`, `2> file`, `< file`
            redirect = False
        elif token and set(token) <= set("<>&") and ("<" in token or ">" in token):
            redirect = True
            if command and command[-1].isdigit():
                command.pop()  # the fd of `2>`
        elif token and set(token) <= set(";&|()"):
            found += _unictr_argv(command)
            command = []
        else:
            command.append(token)
    return found


def _one_line(text: str) -> str:
    """Shell text as one line: `\\` continuations joined, comments dropped, and every other newline outside
    quotes a `;` (a console block: its `$ ` lines only)."""
    if any(line.startswith("$ ") for line in text.splitlines()):
        text = "\n".join(line[2:] for line in text.splitlines() if line.startswith("$ "))
    out, quote, i = [], "", 0
    while i < len(text):
        c = text[i]
        if quote:
            quote = "" if c == quote else quote
        elif c == "\\" and text[i + 1 : i + 2] == "\n":
            c, i = " ", i + 1
        elif c in "'\"":
            quote = c
        elif c == "#" and (i == 0 or text[i - 1].isspace()):
            i = text.find("\n", i) if "\n" in text[i:] else len(text)
            continue
        elif c == "\n":
            c = " ; "
        out.append(c)
        i += 1
    return "".join(out)


def _unictr_argv(words: list[str]) -> list[list[str]]:
    while words and words[0] in ("do", "then", "else", "time"):
        words = words[1:]
    if words[:1] == ["unictr"]:
        return [words[1:]]
    if "-m" in words and words[words.index("-m") + 1 : words.index("-m") + 2] == ["unictr"]:
        return [words[words.index("-m") + 2 :]]
    return []


def synopsis_commands(text: str) -> list[list[str]]:
    """Each expansion of each `unictr` line of a synopsis: every alternative of `a|b` and `[x | y]`, optional
    `[...]` parts kept (so their flags are checked too)."""
    out = []
    for line in unictr_lines(text):
        for variant in _expand(_strip_comment(line)):
            out += _unictr_argv(shlex.split(variant))
    return out


def _expand(line: str) -> list[str]:
    group = re.search(r"\[([^\[\]]*\s\|\s[^\[\]]*)\]", line)  # [--a | --b]: one of these flags
    if group:
        alts = [a.strip() for a in re.split(r"\s\|\s", group.group(1))]
        return [v for a in alts for v in _expand(line[: group.start()] + a + line[group.end() :])]
    line = line.replace("[", " ").replace("]", " ")  # [--flag value]: kept, so its flag is checked
    word = re.search(r"(?<!\S)([\w.-]+(?:\|[\w.-]+)+)(?!\S)", line)  # a|b|c: one of these values or commands
    if word:
        return [v for a in word.group(1).split("|") for v in _expand(line[: word.start()] + a + line[word.end() :])]
    return [line]


def inline_commands(root: Path) -> list[tuple[str, list[str]]]:
    """(doc, argv) of every `unictr ...` code span in the docs' prose (outside fenced blocks), each expansion
    of its `a|b` forms; spans with an ellipsis stand for more than they say and are left out."""
    found = []
    for path in doc_files(root):
        prose = re.sub(r"^(\s*)(```+|~~~+).*?^\1\2[ \t]*$", "", path.read_text(), flags=re.S | re.M)
        for span in re.findall(r"`(unictr\s[^`]+)`", prose):
            if "..." not in span and "…" not in span:
                doc = str(path.relative_to(root))
                found += [(doc, argv) for v in _expand(" ".join(span.split())) for argv in _unictr_argv(shlex.split(v))]
    return found


def parse_error(argv: list[str], mention: bool = False) -> str | None:
    """Why `unictr ARGV` does not parse against the real CLI (unknown command or flag, a value of the wrong
    type, a required option missing), or None when it parses. Nothing runs. A `mention` (a command named in
    prose, `unictr serve --threads`) only needs its command and flags to exist."""
    cmd = typer.main.get_command(app)
    name, ctx, args = "unictr", None, list(argv)
    try:
        while True:
            ctx = cmd.make_context(name, args, parent=ctx)
            if not hasattr(cmd, "resolve_command"):  # a command, not a group
                return None
            rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
            if not rest:
                return f"`unictr {' '.join(argv)}`: no command after {name!r}"
            name, sub, args = cmd.resolve_command(ctx, rest)
            cmd = sub
    except TyperException as e:  # Typer's click: usage errors, bad values, missing options
        message = e.format_message()
        if mention and (type(e).__name__ == "MissingParameter" or "requires an argument" in message):
            return None
        return f"`unictr {shlex.join(argv)}`: {message}"


def _options(argv: list[str]) -> set[str]:
    """The flags of the command `unictr ARGV` runs (its group names walked; nothing parsed)."""
    cmd = typer.main.get_command(app)
    for word in argv:
        if word not in getattr(cmd, "commands", {}):
            break
        cmd = cmd.commands[word]
    return {opt for p in cmd.params for opt in getattr(p, "opts", [])}


def shrink(argv: list[str]) -> list[str] | None:
    """ARGV at the tiny world's sizes: at most TINY_ROWS rows (also where the command's default is more),
    TINY_BOOTSTRAP resamples, the first seed of `--seeds`, TINY_SETS and one thread for a command that trains;
    None for `serve`, which the docs test does not run (one live server answers the blocks' requests)."""
    if argv[:1] == ["serve"]:
        return None
    out, options = list(argv), _options(argv)
    if "--rows" in options and "--rows" not in out:
        out += ["--rows", str(TINY_ROWS)]
    for flag, most in (("--rows", TINY_ROWS), ("--bootstrap", TINY_BOOTSTRAP)):
        if flag in out[:-1]:
            i = out.index(flag) + 1
            out[i] = str(min(int(out[i]), most))
    if "--seeds" in out[:-1]:
        i = out.index("--seeds") + 1
        out[i] = out[i].split(",")[0]
    if "--set" in options:  # a command that trains: one short epoch, one thread
        out += [f"--set={s}" for s in TINY_SETS] + ["--threads", "1"] * ("--threads" in options)
    return out


def main(argv: list[str]) -> None:
    """`unictr ARGV` at the tiny world's sizes."""
    tiny = shrink(argv)
    if tiny is None:
        print(f"(docs test: not run; a live server serves the registry instead) unictr {shlex.join(argv)}")
        return
    app(tiny, prog_name="unictr")


if __name__ == "__main__":
    main(sys.argv[1:])
