"""Topic names, subscription patterns and matching."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dp.errors import InvalidTopicError
from dp.events import (
    MAX_TOPIC_LENGTH,
    TopicMatcher,
    compile_pattern,
    matches,
    validate_pattern,
    validate_topic,
)


@pytest.mark.parametrize(
    "topic", ["sales", "sales.orders.created", "a-b.c_d.E9", "x" * MAX_TOPIC_LENGTH]
)
def test_valid_topics_pass(topic: str) -> None:
    """Dot-separated segments of letters, digits, '_' and '-' are topics."""
    assert validate_topic(topic) == topic


@pytest.mark.parametrize(
    ("topic", "reason"),
    [
        ("", "it is empty"),
        (".sales", "it starts with '.'"),
        ("sales.", "it ends with '.'"),
        ("sales..created", "segment 1 is empty"),
        ("sales.orders created", "segment 'orders created' contains ' '"),
        ("sales/orders", "segment 'sales/orders' contains '/'"),
        ("sales.*.created", "only subscription patterns may use"),
        ("sales.**", "only subscription patterns may use"),
        ("x" * (MAX_TOPIC_LENGTH + 1), "256 characters long, the limit is 255"),
        (42, "expected a str, got int"),
        (["sales"], "expected a str, got list"),
    ],
)
def test_invalid_topics_say_why(topic: str, reason: str) -> None:
    """Each way a topic can be malformed is reported with the topic and the reason."""
    with pytest.raises(InvalidTopicError) as caught:
        validate_topic(topic)
    assert reason in caught.value.reason
    assert caught.value.topic == str(topic)
    assert repr(str(topic)) in str(caught.value)


@pytest.mark.parametrize("pattern", ["sales", "sales.*.created", "sales.**", "**", "*", "a.**.z"])
def test_valid_patterns_pass(pattern: str) -> None:
    """Patterns are topics whose segments may also be '*' or '**'."""
    assert validate_pattern(pattern) == pattern


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        ("", "it is empty"),
        (".sales.*", "it starts with '.'"),
        ("sales.*.", "it ends with '.'"),
        ("sales..*", "segment 1 is empty"),
        ("sales*", "segment 'sales*' mixes '*' with other characters"),
        ("sales.***", "segment '***' mixes '*'"),
        ("sales.#", "segment '#' contains '#'"),
        ("*" * (MAX_TOPIC_LENGTH + 1), "the limit is 255"),
    ],
)
def test_invalid_patterns_say_why(pattern: str, reason: str) -> None:
    """Each way a pattern can be malformed is reported, and the error says it is a pattern."""
    with pytest.raises(InvalidTopicError, match="invalid topic pattern") as caught:
        validate_pattern(pattern)
    assert reason in caught.value.reason


@pytest.mark.parametrize(
    ("pattern", "topic", "expected"),
    [
        ("sales.orders.created", "sales.orders.created", True),
        ("sales.orders.created", "sales.orders", False),
        ("sales.*.created", "sales.orders.created", True),
        ("sales.*.created", "sales.created", False),
        ("sales.*.created", "sales.eu.orders.created", False),
        ("sales.*", "sales", False),
        ("*", "sales", True),
        ("*", "sales.orders", False),
        ("sales.**", "sales", True),
        ("sales.**", "sales.eu.orders.created", True),
        ("sales.**", "salesforce.orders", False),
        ("**.created", "created", True),
        ("**.created", "sales.orders.created", True),
        ("**.created", "sales.orders.created.late", False),
        ("a.**.z", "a.z", True),
        ("a.**.z", "a.b.c.z", True),
        ("a.**.z", "a.b.c", False),
        ("**", "anything.at.all", True),
        ("**.*", "one", True),
        ("*.**", "one.two", True),
        ("**.orders.**", "sales.orders.created", True),
        ("**.orders.**", "sales.order.created", False),
        ("a.**.b.**.c", "a.x.b.y.y.c", True),
        ("a.**.b.**.c", "a.b.c", True),
        ("a.**.b.**.c", "a.c.b", False),
        ("a.**.**.b", "a.b", True),
    ],
)
def test_matching(pattern: str, topic: str, expected: bool) -> None:
    """'*' is exactly one segment, '**' any number of segments including none."""
    assert matches(pattern, topic) is expected
    assert TopicMatcher(pattern).matches(topic) is expected
    assert compile_pattern(pattern)(topic) is expected


def reference_match(pattern: list[str], topic: list[str]) -> bool:
    """The definition of matching, written as plainly as possible."""
    if not pattern:
        return not topic
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        return any(reference_match(rest, topic[i:]) for i in range(len(topic) + 1))
    return bool(topic) and head in ("*", topic[0]) and reference_match(rest, topic[1:])


segments = st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=7)
pattern_segments = st.lists(st.sampled_from(["a", "b", "*", "**"]), min_size=1, max_size=6)


@given(pattern=pattern_segments, topic=segments)
def test_compiled_patterns_agree_with_the_definition(pattern: list[str], topic: list[str]) -> None:
    """Every compiled pattern shape (literal, regex, segment walk) matches as defined."""
    predicate = compile_pattern(".".join(pattern))
    assert predicate(".".join(topic)) is reference_match(pattern, topic)


def test_many_double_stars_do_not_backtrack_exponentially() -> None:
    """A pattern with several '**' against a long non-matching topic still answers."""
    assert not matches("**.a.**.a.**.a.**.b", ".".join(["a"] * 120))


def test_matches_validates_the_topic() -> None:
    """The convenience function rejects a malformed topic instead of answering False."""
    with pytest.raises(InvalidTopicError, match="segment 1 is empty"):
        matches("sales.*.created", "sales..created")


@pytest.mark.parametrize("pattern", ["sales", "sales.*", "**", "a.**.b.**"])
def test_matcher_refuses_a_topic_that_is_not_a_str(pattern: str) -> None:
    """`None` (or any non-str) is not a topic: an error, never a match, whatever the pattern."""
    with pytest.raises(InvalidTopicError, match="a topic is a str, not NoneType"):
        TopicMatcher(pattern).matches(None)  # type: ignore[arg-type]


def test_matcher_rejects_an_invalid_pattern() -> None:
    """A TopicMatcher cannot be built from a malformed pattern."""
    with pytest.raises(InvalidTopicError, match=re.escape("invalid topic pattern 'sales.**x'")):
        TopicMatcher("sales.**x")


def test_matcher_stays_correct_past_its_cache_size() -> None:
    """When its cache is full the matcher starts a new one and keeps answering correctly."""
    matcher = TopicMatcher("sales.*.created", cache_size=4)
    topics = [f"sales.r{i}.created" for i in range(10)] + [f"sales.r{i}" for i in range(10)]
    assert [matcher.matches(t) for t in topics * 2] == [True] * 10 + [False] * 10 + [True] * 10 + [
        False
    ] * 10
