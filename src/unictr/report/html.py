"""HTML building blocks of the report: one page with its style inline, every text escaped, images as
`data:` URLs; no script, no external stylesheet, font or URL, so the file opens anywhere offline."""

from __future__ import annotations

import re
from collections.abc import Sequence
from html import escape

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.5em auto; max-width: 1400px; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.25em; border-bottom: 1px solid #ccc; margin-top: 1.6em; }
h3 { font-size: 1.05em; }
table { border-collapse: collapse; margin: 0.6em 0; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d0d0d0; padding: 3px 8px; text-align: right; }
th { background: #f2f2f2; } td.l, th.l { text-align: left; }
tr.overall td { font-weight: 600; background: #fafafa; }
img { max-width: 100%; display: block; margin: 0.5em 0; }
.note { color: #666; } code { background: #f4f4f4; padding: 0 3px; }
.side { display: flex; gap: 1em; } .side figure { margin: 0; flex: 1 1 0; min-width: 0; }
figcaption { font-weight: 600; }
"""


def esc(value: object) -> str:
    return escape(str(value), quote=True)


def page(title: str, body: Sequence[str]) -> str:
    """A whole HTML document: `title` (escaped here) over the already-built `body` fragments."""
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        f"<title>{esc(title)}</title>", f"<style>{STYLE}</style>", "</head>", "<body>",
        f"<h1>{esc(title)}</h1>", *body, "</body>", "</html>", "",
    ])


def image(b64_png: str, alt: str) -> str:
    return f'<img src="data:image/png;base64,{b64_png}" alt="{esc(alt)}">'


def table(
    head: Sequence[Sequence[tuple[str, int]]], rows: Sequence[Sequence[object]], left: int = 1,
    row_class: Sequence[str] | None = None,
) -> str:
    """A table: `head` is header rows of (text, colspan) cells; `rows` hold cell values (escaped); the
    first `left` columns are left-aligned (labels), the rest right-aligned (numbers)."""
    out = ["<table>", "<thead>"]
    for hrow in head:
        cells = "".join(f'<th colspan="{span}"{" class=l" if i < left else ""}>{esc(text)}</th>'
                        if span > 1 else f'<th{" class=l" if i < left else ""}>{esc(text)}</th>'
                        for i, (text, span) in enumerate(hrow))
        out.append(f"<tr>{cells}</tr>")
    out += ["</thead>", "<tbody>"]
    for r, row in enumerate(rows):
        cls = f' class="{esc(row_class[r])}"' if row_class and row_class[r] else ""
        cells = "".join(f'<td{" class=l" if i < left else ""}>{esc(v)}</td>' for i, v in enumerate(row))
        out.append(f"<tr{cls}>{cells}</tr>")
    out += ["</tbody>", "</table>"]
    return "\n".join(out)


def fmt(v: object, spec: str = ".4f") -> str:
    """A metric for a cell: '-' where it is undefined (None)."""
    return "-" if v is None else format(v, spec)


_INLINE = ((re.compile(r"`([^`]*)`"), r"<code>\1</code>"), (re.compile(r"\*\*([^*]+)\*\*"), r"<strong>\1</strong>"))


def _inline(text: str) -> str:
    out = esc(text)
    for pattern, repl in _INLINE:
        out = pattern.sub(repl, out)
    return out


def markdown(text: str, images: dict[str, str] | None = None) -> str:
    """The markdown the project writes (headings, pipe tables, paragraphs, `code`, **bold**, images) as
    HTML, headings one level down; an image line becomes the embedded image its target names in `images`
    (base64 PNG), or is dropped: a page never points at another file."""
    out: list[str] = []
    rows: list[list[str]] = []
    align: list[bool] = []

    def flush() -> None:
        if rows:
            out.append("<table>\n<thead>" + _md_row(rows[0], "th", align) + "</thead>\n<tbody>"
                       + "".join(_md_row(r, "td", align) for r in rows[1:]) + "</tbody>\n</table>")
            rows.clear()

    for line in text.splitlines():
        s = line.strip()
        if s.startswith("|"):
            cells = [c.strip() for c in s.strip("|").split("|")]
            if all(re.fullmatch(r":?-+:?", c) for c in cells):
                align[:] = [c.endswith(":") for c in cells]
            else:
                rows.append(cells)
            continue
        flush()
        align.clear()
        if m := re.fullmatch(r"(#{1,5}) (.*)", s):
            level = len(m.group(1)) + 1
            out.append(f"<h{level}>{_inline(m.group(2))}</h{level}>")
        elif m := re.fullmatch(r"!\[([^\]]*)\]\(([^)]*)\)", s):
            if images and m.group(2) in images:
                out.append(image(images[m.group(2)], m.group(1)))
        elif s:
            out.append(f"<p>{_inline(s)}</p>")
    flush()
    return "\n".join(out)


def _md_row(cells: list[str], tag: str, align: list[bool]) -> str:
    right = [align[i] if i < len(align) else False for i in range(len(cells))]
    return "<tr>" + "".join(f"<{tag}{'' if r else ' class=l'}>{_inline(c)}</{tag}>"
                            for c, r in zip(cells, right, strict=True)) + "</tr>"
