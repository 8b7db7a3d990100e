"""The host-memory prompt cache on its own: the longest shared prefix wins, the bound holds
with the least recently used out first, and an entry that begins another gives way."""

from __future__ import annotations

from knative.serving._host_cache import Entry, HostCache


def entry(tokens: tuple[int, ...], size: int = 10) -> Entry:
    return Entry(tokens, len(tokens), b"x" * size)


def test_the_entry_sharing_the_longest_prefix_is_found():
    cache = HostCache(100)
    cache.put(entry((1, 2, 3, 4)))
    cache.put(entry((1, 2, 9, 9, 9)))
    found = cache.best([1, 2, 3, 7])
    assert found is not None
    assert found[0].tokens == (1, 2, 3, 4)
    assert found[1] == 3
    assert cache.best([5, 6]) is None


def test_the_least_recently_used_entry_goes_first_past_the_bound():
    cache = HostCache(30)
    for first in (1, 2, 3):
        cache.put(entry((first, 0)))
    got = cache.best([1, 0])
    assert got is not None
    cache.used(got[0])  # (1, 0) is now the most recent
    cache.put(entry((4, 0)))
    assert cache.bytes == 30
    assert cache.best([2, 0]) is None  # the oldest one unused
    assert cache.best([1, 0]) is not None
    assert cache.hits == 1


def test_an_entry_that_begins_another_gives_way_and_a_held_one_is_not_added():
    cache = HostCache(100)
    assert cache.put(entry((1, 2)))
    assert cache.put(entry((1, 2, 3)))
    assert len(cache) == 1
    assert cache.bytes == 10
    assert cache.holds((1, 2))
    assert not cache.put(entry((1, 2)))
    assert not cache.put(entry((7,), size=101))  # alone above the bound
    assert len(cache) == 1
