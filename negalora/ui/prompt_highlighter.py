"""Colours Compel's weighting syntax in the prompt editors: (word)++, (word)1.3, .blend(), .and()."""

import re

from PySide6.QtGui import QColor, QFont, QSyntaxHighlighter, QTextCharFormat

_RULES = [
    (re.compile(r"[()\[\]]"), "#7aa2f7", True),
    (re.compile(r"(?<=\))[+-]+|(?<=\))\d+(\.\d+)?"), "#e0af68", True),
    (re.compile(r"\.(blend|and|swap)\b"), "#bb9af7", True),
    (re.compile(r'"'), "#9ece6a", False),
    (re.compile(r"\bwrong\b"), "#e5484d", True),
]


class PromptHighlighter(QSyntaxHighlighter):
    def __init__(self, document):
        super().__init__(document)
        self._formats = []
        for pattern, color, bold in _RULES:
            fmt = QTextCharFormat()
            fmt.setForeground(QColor(color))
            if bold:
                fmt.setFontWeight(QFont.Weight.Bold)
            self._formats.append((pattern, fmt))

    def highlightBlock(self, text: str) -> None:
        for pattern, fmt in self._formats:
            for m in pattern.finditer(text):
                self.setFormat(m.start(), m.end() - m.start(), fmt)
