"""Message ids: the ULID text layout, time order, and uniqueness."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from natter import ids

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def _reference(ms: int, rand: bytes) -> str:
    """The ULID text digit by digit, as the spec writes it."""
    value = (ms << 80) | int.from_bytes(rand, "big")
    return "".join(_ALPHABET[(value >> (5 * i)) & 31] for i in reversed(range(26)))


@given(st.integers(0, 2**48 - 1), st.binary(min_size=10, max_size=10))
def test_id_is_the_ulid_text_of_time_and_randomness(ms: int, rand: bytes) -> None:
    got = ids.new_msg_id(ms, rand)
    assert got == _reference(ms, rand)
    assert len(got) == 26


def test_ids_sort_by_time_and_do_not_repeat() -> None:
    made = [ids.new_msg_id(1_700_000_000_000 + i) for i in range(2000)]
    assert made == sorted(made)
    assert len(set(ids.new_msg_id(1_700_000_000_000) for _ in range(2000))) == 2000


def test_ids_made_together_share_the_time_and_differ() -> None:
    made = ids.new_msg_ids(500, 1_700_000_000_123)
    assert len(set(made)) == 500
    assert {m[:10] for m in made} == {ids.new_msg_id(1_700_000_000_123)[:10]}
    assert ids.new_msg_ids(0) == []
