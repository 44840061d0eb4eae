r"""Human output: untrusted text made safe to print on a terminal or cut short, and byte counts.

File names, artifact IDs, mimetypes and error messages shown by the CLI come from refs and
Optuna attributes that anyone with access to the store or the storage can write. Printed raw,
an escape sequence can clear the screen or recolour and forge rows, a newline can add a fake
row, and a bidi override can make ``evil\u202egpj.exe`` read as ``evilexe.jpg``. Such
characters are shown as Python-style escapes instead; machine-readable (``--json``) output
is left exact, since ``json.dumps`` escapes them already.
"""

from __future__ import annotations

__all__ = ["clip", "escape_for_terminal", "human_bytes"]


def _escape_table() -> dict[int, str]:
    table: dict[int, str] = {}
    # C0 controls (newline and tab included: they break rows and columns), DEL, C1 controls.
    for code in (*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0)):
        table[code] = f"\\x{code:02x}"
    # Bidi embeddings/overrides (U+202A-U+202E) and isolates (U+2066-U+2069) reorder what
    # follows them. Lone surrogates (non-UTF-8 file names) cannot even be encoded for output.
    for code in (*range(0x202A, 0x202F), *range(0x2066, 0x206A), *range(0xD800, 0xE000)):
        table[code] = f"\\u{code:04x}"
    return table


_ESCAPES = _escape_table()


def escape_for_terminal(value: object) -> str:
    r"""``str(value)`` with control, bidi-override and surrogate characters escaped.

    Everything else, including other non-ASCII text and backslashes, is left as it is.

    Example:
        >>> print(escape_for_terminal("model\x1b[2J\u202egpj.pt"))
        model\x1b[2J\u202egpj.pt
        >>> escape_for_terminal("naïve.txt")
        'naïve.txt'
    """
    return str(value).translate(_ESCAPES)


def clip(text: str, limit: int = 120) -> str:
    """``repr(text)``, cut to about ``limit`` characters: for naming untrusted values in messages.

    Example:
        >>> clip("x" * 500, 10)
        "'xxxxxxxxxx'..."
    """
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."


def human_bytes(n: float) -> str:
    """A byte count in binary units, for summary lines.

    Example:
        >>> human_bytes(1536), human_bytes(12), human_bytes(3 * 1024**3)
        ('1.5 KiB', '12 B', '3.0 GiB')
    """
    if abs(n) < 1024:
        return f"{int(n)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"
    raise AssertionError("unreachable")
