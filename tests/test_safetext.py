"""`dp.safetext`: text of objects dp does not trust, never raising, never unbounded."""

from __future__ import annotations

from dp.safetext import describe_exception, safe_repr, safe_str, safe_traceback


class _Nasty(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str")

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def test_an_exception_whose_str_raises_is_described_by_a_placeholder() -> None:
    """`Nasty: <exception str() failed: RuntimeError>`, not a second exception."""
    assert describe_exception(_Nasty()) == "_Nasty: <exception str() failed: RuntimeError>"
    assert safe_repr(_Nasty()) == "<object repr() failed: RuntimeError>"


def test_an_empty_message_gives_the_type_alone() -> None:
    """`ValueError()` is described as `ValueError`, as the engine always did."""
    assert describe_exception(ValueError()) == "ValueError"


def test_huge_text_is_cut_and_says_how_much_was_dropped() -> None:
    """A 1 MB message is cut to its first 4 KiB, with a count of what was dropped."""
    text = describe_exception(ValueError("x" * 1_000_000))
    assert len(text) < 5000
    assert text.endswith(f"... [{1_000_000 - 4096} characters dropped]")
    assert len(safe_str("y" * 100, limit=10)) < 50


def test_a_traceback_with_a_cycle_of_hostile_causes_is_formatted() -> None:
    """A cause that leads back to its effect, and unprintable on top: still a traceback."""
    outer, inner = ValueError("outer"), _Nasty()
    outer.__cause__, inner.__context__ = inner, outer
    try:
        raise outer
    except ValueError as exc:
        text = safe_traceback(exc)
    assert "ValueError: outer" in text
    assert "_Nasty" in text


def test_a_str_subclass_gives_its_plain_characters() -> None:
    """A str subclass with a hostile __str__ is returned as the plain str it holds; as the
    argument of an exception (whose __str__ calls it) it gives the placeholder."""

    class Sly(str):
        def __str__(self) -> str:
            raise RuntimeError("sly")

    assert safe_str(Sly("plain")) == "plain"
    assert safe_str(ValueError(Sly("plain"))) == "<object str() failed: RuntimeError>"
