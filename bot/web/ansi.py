"""Terminal colours in action output, as HTML: escaped text in `<span class="ansi-...">`.

Actions print for terminals, so their output carries ANSI escape sequences. The colours and weights
(SGR, `ESC [ ... m`) become classes styled in `squall.css` (the Content-Security-Policy forbids inline
styles, so 256-colour and RGB values map to nothing but the 16 named colours); every other escape
sequence (cursor moves, titles) is dropped. Reverse video (SGR 7, ended by 27) swaps the text's and
the background's colours; with no background colour given, the text takes the output's background
on the default text colour (`ansi-reverse`). The text itself is always escaped: output is shown as
text, never as HTML.

`AnsiRenderer` keeps the colour state and any half-received escape sequence between chunks, so a
live stream renders the same as the whole text would.
"""

from __future__ import annotations

import html
import re

from markupsafe import Markup

#: An escape sequence: CSI (`ESC [` params final), OSC (`ESC ]` ... BEL or `ESC \`), or a 2-character one.
_ESCAPE = re.compile(r"\x1b(?:\[([0-9;:?<=>]*)([ -/]*[@-~])|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")
#: What may be the start of an escape sequence cut off at a chunk's end.
_PARTIAL = re.compile(r"\x1b(?:\[[0-9;:?<=>]{0,64}[ -/]{0,4}|\][^\x07\x1b]{0,256})?\Z")
_COLOURS = ("black", "red", "green", "yellow", "blue", "magenta", "cyan", "white")


class AnsiRenderer:
    """Render a stream's chunks in order; `feed` returns each chunk's HTML, its spans closed."""

    def __init__(self) -> None:
        self.fg: str | None = None
        self.bg: str | None = None
        self.flags: set[str] = set()
        self.reverse = False
        self._pending = ""

    def feed(self, text: str, *, final: bool = False) -> Markup:
        text = self._pending + text
        self._pending = ""
        if not final:
            partial = _PARTIAL.search(text)
            if partial is not None and partial.start() < len(text):
                self._pending, text = text[partial.start():], text[:partial.start()]
        parts: list[str] = []
        position = 0
        for match in _ESCAPE.finditer(text):
            parts.append(self._span(text[position:match.start()]))
            position = match.end()
            if match.group(2) == "m":
                self._apply(match.group(1))
        parts.append(self._span(text[position:]))
        return Markup("".join(parts))

    def _classes(self) -> str:
        fg, bg = (self.bg, self.fg) if self.reverse else (self.fg, self.bg)
        names = [f"ansi-{fg}"] if fg else []
        if bg or self.reverse:
            names.append(f"ansi-bg-{bg}" if bg else "ansi-reverse")
        return " ".join(names + sorted(f"ansi-{flag}" for flag in self.flags))

    def _span(self, text: str) -> str:
        text = text.replace("\x1b", "")  # a lone ESC the patterns did not take
        if not text:
            return ""
        escaped = html.escape(text, quote=False)
        classes = self._classes()
        return f'<span class="{classes}">{escaped}</span>' if classes else escaped

    def _apply(self, params: str) -> None:
        codes = [int(code) if code.isdigit() else 0 for code in re.split("[;:]", params or "0")]
        index = 0
        while index < len(codes):
            code = codes[index]
            if code == 0:
                self.fg = self.bg = None
                self.flags.clear()
                self.reverse = False
            elif code in (7, 27):
                self.reverse = code == 7
            elif code in (1, 2, 3, 4):
                self.flags.add({1: "bold", 2: "dim", 3: "italic", 4: "underline"}[code])
            elif code == 22:
                self.flags -= {"bold", "dim"}
            elif code in (23, 24):
                self.flags.discard("italic" if code == 23 else "underline")
            elif 30 <= code <= 37 or 90 <= code <= 97:
                self.fg = _COLOURS[code % 10] + ("-bright" if code >= 90 else "")
            elif 40 <= code <= 47 or 100 <= code <= 107:
                self.bg = _COLOURS[code % 10] + ("-bright" if code >= 100 else "")
            elif code == 39:
                self.fg = None
            elif code == 49:
                self.bg = None
            elif code in (38, 48):  # 256 colours (5;n) or RGB (2;r;g;b): the 16 named ones only
                named = None
                if index + 2 < len(codes) and codes[index + 1] == 5:
                    n = codes[index + 2]
                    named = _COLOURS[n % 8] + ("-bright" if n >= 8 else "") if n < 16 else None
                    index += 2
                elif index + 1 < len(codes) and codes[index + 1] == 2:
                    index += 4
                if code == 38:
                    self.fg = named
                else:
                    self.bg = named
            index += 1


def render(text: str) -> Markup:
    """A whole text's HTML."""
    return AnsiRenderer().feed(text, final=True)
