"""Split a reasoner's ``<think>...</think><answer>...</answer>`` output into reasoning and answer.

:class:`ThinkSplitter` does it incrementally on streamed pieces (a tag may arrive split across
pieces), so the web chat can show the reasoning collapsed and the API can send it as
``reasoning_content`` deltas (vLLM's convention) while ``content`` carries the answer only.
Text without tags is all answer.
"""
from __future__ import annotations

TAGS = {"<think>": "reasoning", "</think>": "content", "<answer>": "content", "</answer>": "content"}


class ThinkSplitter:
    def __init__(self):
        self._buf = ""
        self._channel = "content"

    def feed(self, piece: str) -> list[tuple[str, str]]:
        """Events ``(channel, text)`` with channel "reasoning" or "content"; tags removed."""
        self._buf += piece
        out: list[tuple[str, str]] = []
        while self._buf:
            lt = self._buf.find("<")
            if lt < 0:
                out.append((self._channel, self._buf))
                self._buf = ""
                break
            if lt > 0:
                out.append((self._channel, self._buf[:lt]))
                self._buf = self._buf[lt:]
            tag = next((t for t in TAGS if self._buf.startswith(t)), None)
            if tag is not None:
                self._channel = TAGS[tag]
                self._buf = self._buf[len(tag):]
                continue
            if any(t.startswith(self._buf) for t in TAGS):
                break  # maybe the start of a tag: wait for more text
            out.append((self._channel, "<"))
            self._buf = self._buf[1:]
        return _merge(out)

    def flush(self) -> list[tuple[str, str]]:
        rest, self._buf = self._buf, ""
        return [(self._channel, rest)] if rest else []


def _merge(events):
    merged: list[tuple[str, str]] = []
    for ch, text in events:
        if not text:
            continue
        if merged and merged[-1][0] == ch:
            merged[-1] = (ch, merged[-1][1] + text)
        else:
            merged.append((ch, text))
    return merged


def split_thinking(text: str) -> tuple[str | None, str]:
    """(reasoning or None, answer) of a whole completion."""
    s = ThinkSplitter()
    events = s.feed(text) + s.flush()
    reasoning = "".join(t for ch, t in events if ch == "reasoning").strip()
    answer = "".join(t for ch, t in events if ch == "content").strip()
    return (reasoning or None), answer
