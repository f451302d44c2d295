"""Topic names, subscription patterns and the matcher that connects them.

A topic is dot-separated segments of letters, digits, `_` and `-`, e.g. `sales.orders.created`.
A pattern may also use `*` for exactly one segment and `**` for any number of segments,
including none: `sales.**` matches `sales` and `sales.eu.orders.created`.

Matching is on the hot path of every publish, so patterns are compiled once into the cheapest
predicate that fits their shape, and `TopicMatcher` remembers its answers per topic.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from dp.errors import InvalidTopicError

__all__ = [
    "MAX_TOPIC_LENGTH",
    "TopicMatcher",
    "compile_pattern",
    "matches",
    "validate_pattern",
    "validate_topic",
]

MAX_TOPIC_LENGTH = 255
"""Longest topic or pattern accepted, in characters (what Kafka and most brokers allow)."""

_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")
_TOPIC = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")
_BAD_CHAR = re.compile(r"[^A-Za-z0-9_-]")

# Caches are cleared when full rather than kept in LRU order: the topics a process publishes
# are usually a small, stable set, and clearing costs nothing on the lookup path.
_VALID_CACHE_SIZE = 65_536
_valid_topics: set[str] = set()
_MATCHER_CACHE_SIZE = 1_024
_matchers: dict[str, TopicMatcher] = {}

Predicate = Callable[[str], bool]


def validate_topic(topic: str) -> str:
    """Return `topic` unchanged if it is a valid topic name.

    Raises:
        InvalidTopicError: naming the topic and what is wrong with it.
    """
    try:
        if topic in _valid_topics:
            return topic
    except TypeError:  # unhashable: not a str, reported below
        pass
    if not isinstance(topic, str) or len(topic) > MAX_TOPIC_LENGTH or not _TOPIC.fullmatch(topic):
        raise InvalidTopicError(str(topic), _topic_problem(topic, pattern=False))
    if len(_valid_topics) >= _VALID_CACHE_SIZE:
        _valid_topics.clear()
    _valid_topics.add(topic)
    return topic


def validate_pattern(pattern: str) -> str:
    """Return `pattern` unchanged if it is a valid subscription pattern.

    Raises:
        InvalidTopicError: naming the pattern and what is wrong with it.
    """
    problem = _topic_problem(pattern, pattern=True)
    if problem:
        raise InvalidTopicError(str(pattern), problem, pattern=True)
    return pattern


def _topic_problem(topic: object, *, pattern: bool) -> str:
    """Say what is wrong with `topic`, or return "" when nothing is."""
    if not isinstance(topic, str):
        return f"expected a str, got {type(topic).__name__}"
    if not topic:
        return "it is empty"
    if len(topic) > MAX_TOPIC_LENGTH:
        return f"it is {len(topic)} characters long, the limit is {MAX_TOPIC_LENGTH}"
    if topic.startswith("."):
        return "it starts with '.'"
    if topic.endswith("."):
        return "it ends with '.'"
    for index, segment in enumerate(topic.split(".")):
        if not segment:
            return f"segment {index} is empty ('..')"
        if pattern and segment in ("*", "**"):
            continue
        if _SEGMENT.fullmatch(segment):
            continue
        if "*" in segment:
            if pattern:
                return f"segment {segment!r} mixes '*' with other characters; use '*' or '**' alone"
            return f"segment {segment!r} has a wildcard, which only subscription patterns may use"
        bad = _BAD_CHAR.findall(segment)
        return f"segment {segment!r} contains {bad[0]!r}" if bad else f"bad segment {segment!r}"
    return ""


def compile_pattern(pattern: str) -> Predicate:
    """Compile a subscription pattern into a predicate `topic -> bool`, without a cache.

    The predicate assumes its argument is a valid topic; validate untrusted topics first.

    Raises:
        InvalidTopicError: if the pattern is malformed.
    """
    test = _compile(pattern)
    return lambda topic: bool(test(topic))


def _compile(pattern: str) -> Callable[[str], object]:
    """The cheapest test for the pattern's shape; its result is truthy when a topic matches."""
    validate_pattern(pattern)
    segments: list[str] = []
    for segment in pattern.split("."):
        if not (segment == "**" and segments and segments[-1] == "**"):  # '**.**' is '**'
            segments.append(segment)
    if "*" not in pattern:
        return pattern.__eq__
    if segments == ["**"]:
        return _always
    if segments.count("**") > 1:
        # A regex with several unbounded groups can backtrack polynomially (ReDoS); the
        # segment walk is O(len(topic) * len(pattern)) whatever the input.
        frozen = tuple(segments)
        return lambda topic: _match_segments(frozen, topic.split("."))
    return re.compile(_regex(segments)).fullmatch


def _always(topic: str) -> bool:
    return True


def _regex(segments: list[str]) -> str:
    """Translate pattern segments into a regular expression over the whole topic."""
    parts: list[str] = []
    seen_segment = False  # whether a concrete segment was emitted, so the next needs a dot
    for segment in segments:
        if segment == "**":
            parts.append(r"(?:\.[^.]+)*" if seen_segment else r"(?:[^.]+\.)*")
            continue
        if seen_segment:
            parts.append(r"\.")
        parts.append("[^.]+" if segment == "*" else re.escape(segment))
        seen_segment = True
    return "".join(parts)


def _match_segments(pattern: tuple[str, ...], topic: list[str]) -> bool:
    """Glob-match segment lists, `**` being the star: greedy with one backtrack point."""
    p = t = 0
    star_p, star_t = -1, 0
    while t < len(topic):
        if p < len(pattern) and pattern[p] == "**":
            star_p, star_t = p, t
            p += 1
        elif p < len(pattern) and pattern[p] in ("*", topic[t]):
            p += 1
            t += 1
        elif star_p >= 0:  # let the last '**' swallow one more segment and retry
            star_t += 1
            p, t = star_p + 1, star_t
        else:
            return False
    while p < len(pattern) and pattern[p] == "**":
        p += 1
    return p == len(pattern)


class TopicMatcher:
    """One compiled subscription pattern that remembers its answer for each topic it has seen.

    A repeated topic costs one dict lookup, which is what a pipeline publishing the same few
    topics over and over needs.

    Args:
        pattern: the subscription pattern, e.g. `sales.*.created` or `sales.**`.
        cache_size: topics remembered before the cache is cleared and refilled.

    Raises:
        InvalidTopicError: if the pattern is malformed.
    """

    __slots__ = ("_cache", "_cache_size", "_test", "pattern")

    def __init__(self, pattern: str, *, cache_size: int = 4_096) -> None:
        self.pattern = pattern
        self._test = _compile(pattern)
        self._cache: dict[str, bool] = {}
        self._cache_size = cache_size

    def matches(self, topic: str) -> bool:
        """Whether `topic` matches this pattern; `topic` is assumed valid.

        Raises:
            InvalidTopicError: if `topic` is not a str at all (e.g. `None`).
        """
        # dict.get, not try/except KeyError: raising costs more than the match on a miss.
        result = self._cache.get(topic)
        if result is None:
            if type(topic) is not str:  # only a miss pays for the check
                raise InvalidTopicError(
                    repr(topic), f"a topic is a str, not {type(topic).__name__}"
                )
            result = True if self._test(topic) else False  # noqa: SIM210 (bool() is a slower call)
            if len(self._cache) >= self._cache_size:
                self._cache.clear()
            self._cache[topic] = result
        return result

    def __repr__(self) -> str:
        return f"TopicMatcher({self.pattern!r})"


def matches(pattern: str, topic: str) -> bool:
    """Whether `topic` matches the subscription `pattern`; both are compiled and cached.

    Raises:
        InvalidTopicError: if the pattern or the topic is malformed.
    """
    matcher = _matchers.get(pattern)
    if matcher is None:
        matcher = TopicMatcher(pattern)
        if len(_matchers) >= _MATCHER_CACHE_SIZE:
            _matchers.clear()
        _matchers[pattern] = matcher
    result = matcher._cache.get(topic)  # the hot path: a pattern and topic seen before
    if result is None:
        result = matcher.matches(validate_topic(topic))
    return result
