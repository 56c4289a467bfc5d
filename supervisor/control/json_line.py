"""Keeping a JSON line one line.

``json.dumps(ensure_ascii=False)`` leaves U+0085, U+2028 and U+2029 as they are, but
Unicode counts them as line breaks (``str.splitlines``, editors, some log shippers), and
a task's output or a file name can hold them: one record would read as several lines.
They can only occur inside JSON strings, where the escape stands for the same character.
"""

_LINE_BREAKS = str.maketrans({"\u0085": "\\u0085", "\u2028": "\\u2028",
                              "\u2029": "\\u2029"})


def one_line(text: str) -> str:
    """``text`` (serialized JSON) with the Unicode line breaks escaped."""
    if text.isascii():  # nearly every line; the check is ~80 times cheaper than translate
        return text
    return text.translate(_LINE_BREAKS)
