"""The data-parallel router's policies (sglkit.server.router): pure logic, no processes."""

from __future__ import annotations

import pytest

from sglkit.server.router import ApproxPrefixTree, Router


def ids(start: int, n: int) -> list[int]:
    return list(range(start, start + n))


# ----------------------------------------------------------------------------- the approximate prefix tree
def test_tree_matches_the_longest_prefix_across_splits():
    tree = ApproxPrefixTree()
    tree.insert([1, 2, 3, 4, 5])
    tree.insert([1, 2, 9])  # splits the first edge after [1, 2]
    assert tree.match([1, 2, 3, 4, 5, 6]) == 5
    assert tree.match([1, 2, 9, 9]) == 3
    assert tree.match([1, 2, 7]) == 2
    assert tree.match([1, 2, 3]) == 3  # ends inside an edge
    assert tree.match([7]) == 0 and tree.match([]) == 0
    assert tree.size == 6  # 1 2 | 3 4 5 | 9


def test_tree_stays_within_its_bound_and_evicts_the_least_recently_used():
    tree = ApproxPrefixTree(max_tokens=100)
    tree.insert(ids(0, 40))
    tree.insert(ids(1000, 40))
    tree.insert(ids(0, 40))  # touches the first sequence again: the second is now the oldest
    tree.insert(ids(2000, 40))  # 120 > 100: evict down to 90
    assert tree.size <= 100
    assert tree.match(ids(0, 40)) == 40
    assert tree.match(ids(2000, 40)) == 40
    assert tree.match(ids(1000, 40)) == 0
    for k in range(50):  # a long stream never grows it past the bound
        tree.insert(ids(10_000 * (k + 1), 30))
        assert tree.size <= 100


def test_tree_evicts_a_shared_prefix_only_with_its_last_child():
    tree = ApproxPrefixTree(max_tokens=1000)
    tree.insert(ids(0, 20) + [100])
    tree.insert(ids(0, 20) + [200])
    tree.evict(tree.size - 1)  # drops the older leaf only
    assert tree.match(ids(0, 20) + [200]) == 21
    assert tree.match(ids(0, 20) + [100]) == 20
    tree.evict(0)
    assert tree.size == 0 and tree.match(ids(0, 20)) == 0


def test_an_input_longer_than_the_bound_is_truncated():
    tree = ApproxPrefixTree(max_tokens=10)
    tree.insert(ids(0, 50))
    assert tree.size == 10 and tree.match(ids(0, 50)) == 10


# ----------------------------------------------------------------------------- policies
def test_round_robin_rotates_whatever_the_load():
    router = Router(3, "round_robin")
    assert [router.select(ids(0, 8), [5, 0, 0]) for _ in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    assert router.decisions == {"round_robin": 7}


def test_shortest_queue_picks_the_fewest_in_flight_and_rotates_ties():
    router = Router(3, "shortest_queue")
    assert router.select([1], [4, 2, 3]) == 1
    assert router.select([1], [0, 5, 9]) == 0
    picks = [router.select([1], [0, 0, 0]) for _ in range(3)]
    assert sorted(picks) == [0, 1, 2]  # ties spread over the replicas


def test_cache_aware_sends_a_shared_prefix_to_the_same_replica():
    router = Router(2, "cache_aware")
    prefix = ids(0, 200)
    first = router.select(prefix + [1000], [0, 0])
    other = router.select(ids(5000, 200), [0, 0])  # an unrelated prompt goes to the other (emptier) replica
    assert other != first
    loads = [0, 0]
    for k in range(6):
        assert router.select(prefix + [2000 + k], loads) == first
        loads[first] += 1  # still balanced: 6 apart is under the absolute threshold
    assert router.decisions["prefix"] == 6


def test_cache_aware_below_the_threshold_goes_to_the_least_loaded():
    router = Router(2, "cache_aware", cache_threshold=0.5)
    router.select(ids(0, 10), [0, 0])  # replica 0 has [0..9]
    # 4 of 20 tokens match replica 0 (0.2 <= 0.5): least loaded wins even though it has no match
    assert router.select(ids(0, 4) + ids(500, 16), [0, 1]) == 0
    assert router.select(ids(0, 4) + ids(600, 16), [3, 1]) == 1
    assert router.decisions["load"] == 3  # the first request too (nothing cached anywhere)


def test_cache_aware_falls_back_to_load_balance_when_imbalanced():
    router = Router(2, "cache_aware", balance_abs_threshold=4, balance_rel_threshold=1.5)
    prefix = ids(0, 100)
    hot = router.select(prefix, [0, 0])
    loads = [0, 0]
    loads[hot] = 10  # 10 - 0 > 4 and 10 > 0 * 1.5: imbalanced
    assert router.select(prefix + [1], loads) == 1 - hot
    assert router.decisions["imbalance"] == 1
    loads[1 - hot] = (
        8  # 10 - 8 <= 4: balanced again, affinity wins (both now hold the prefix: the less loaded)
    )
    assert router.select(prefix + [2], loads) == 1 - hot
    assert router.decisions["prefix"] == 1


def test_cache_aware_trees_are_bounded_and_reset():
    router = Router(2, "cache_aware", max_tree_tokens=64)
    for k in range(100):
        router.select(ids(1000 * k, 30), [0, 0])
    assert all(tree.size <= 64 for tree in router.trees)
    router.reset([0])
    assert router.trees[0].size == 0 and router.trees[1].size > 0
    router.reset()
    assert router.info()["tree_tokens"] == [0, 0]


def test_one_replica_and_bad_arguments():
    router = Router(1, "cache_aware")
    assert router.select(ids(0, 5), [7]) == 0 and router.trees == []
    with pytest.raises(ValueError, match="method"):
        Router(2, "random")
    with pytest.raises(ValueError, match="num_replicas"):
        Router(0)
    with pytest.raises(ValueError, match="loads"):
        Router(2).select([1], [0])
