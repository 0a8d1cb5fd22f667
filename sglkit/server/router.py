"""Data-parallel router: which replica runs a request (tokenizer manager -> ``Router.select`` -> that replica).

With ``--dp-size N`` the HTTP process drives N replicas of the runtime, each with its own scheduler, KV pool and
radix cache. The tokenizer manager asks :meth:`Router.select` once per tokenized request, passing the number of
requests in flight on each replica, and sends the request to the replica it names. Pure logic: no sockets, no
processes, no clocks (a counter orders accesses), so every policy is unit-testable in microseconds.

Policies (``--load-balance-method``, as SGLang's router):

* ``cache_aware`` (the default, as in SGLang's router): keep, per replica, an *approximate* radix tree of the
  token ids it was recently sent (approximate because the router never hears about the replica's own
  evictions; it bounds its trees instead). When the load is balanced, the request goes to the replica whose
  tree matches the longest prefix of its token ids if that match covers more than ``cache_threshold`` of the
  request (its KV is probably still cached there, so its prefill is mostly skipped); otherwise to the
  least-loaded replica (ties: the smallest tree, i.e. the most cache room, then rotation). When the load is
  imbalanced -- ``max - min > balance_abs_threshold`` and ``max > min * balance_rel_threshold`` in-flight
  requests -- prefix affinity is ignored and the least-loaded replica is chosen, so one hot prefix cannot pile
  every request onto one replica. Either way the request's ids are then inserted into the chosen replica's
  tree. Why the default: workloads with shared prefixes (system prompts, few-shot examples, multi-turn chat)
  are the common case, and sending them where the prefix is cached saves the prefill that dominates CPU
  latency; with no shared prefixes it degrades to ``shortest_queue``.
* ``shortest_queue``: the replica with the fewest requests in flight (ties: rotation).
* ``round_robin``: replicas in turn, 0, 1, ..., N-1, 0, ...

Memory is bounded: each tree holds at most ``max_tree_tokens`` token ids (the server uses the replica's KV pool
size, the most its radix cache can hold); past that, least recently used leaves are evicted down to
``EVICT_TO`` of the bound.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Sequence
from typing import Any

from sglkit.cache.radix_cache import common_prefix_len

LOAD_BALANCE_METHODS = ("cache_aware", "shortest_queue", "round_robin")
"""The ``--load-balance-method`` choices (``sglkit.server_args`` repeats them for argparse)."""

CACHE_THRESHOLD = 0.5
"""cache_aware: a prefix match must cover more than this share of the request's tokens to win."""
BALANCE_ABS_THRESHOLD = 32
"""cache_aware: the load is imbalanced when max - min in-flight requests exceeds this ..."""
BALANCE_REL_THRESHOLD = 1.5
"""... and max exceeds min times this."""
MAX_TREE_TOKENS = 1 << 18
"""Default bound of one replica's tree, in token ids (the server passes the replica's KV pool size)."""
EVICT_TO = 0.9
"""A tree over its bound is cut down to this share of it (so eviction does not run on every insert)."""


class _Node:
    """One edge of an approximate prefix tree: a run of token ids, its children by first id, its last access."""

    __slots__ = ("key", "children", "parent", "last_access")

    def __init__(self, key: tuple[int, ...], parent: _Node | None, last_access: int = 0) -> None:
        self.key = key
        self.children: dict[int, _Node] = {}
        self.parent = parent
        self.last_access = last_access


class ApproxPrefixTree:
    """Token-id prefixes one replica was sent recently: a radix tree of at most ``max_tokens`` ids.

    ``match`` reads (no side effect); ``insert`` adds a sequence and marks its whole path as used now; when the
    tree outgrows ``max_tokens``, least recently used leaves go first (a parent is never older than its
    children, so an evicted leaf is never a prefix of something newer).
    """

    def __init__(self, max_tokens: int = MAX_TREE_TOKENS) -> None:
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be positive, got {max_tokens!r}.")
        self.max_tokens = max_tokens
        self.root = _Node((), None)
        self.size = 0  # token ids stored
        self._clock = itertools.count(1)

    def match(self, ids: Sequence[int]) -> int:
        """Length of the longest prefix of ``ids`` in the tree."""
        node, i = self.root, 0
        while i < len(ids):
            child = node.children.get(ids[i])
            if child is None:
                break
            k = common_prefix_len(child.key, ids, i)
            i += k
            if k < len(child.key):
                break
            node = child
        return i

    def insert(self, ids: Sequence[int]) -> None:
        """Add ``ids`` (its first ``max_tokens`` ids) and mark its path as the most recently used."""
        ids = ids[: self.max_tokens]
        now = next(self._clock)
        node, i = self.root, 0
        while i < len(ids):
            child = node.children.get(ids[i])
            if child is None:
                node.children[ids[i]] = _Node(tuple(ids[i:]), node, now)
                self.size += len(ids) - i
                break
            k = common_prefix_len(child.key, ids, i)
            if k < len(child.key):  # split: ``upper`` keeps the shared part, ``child`` the rest below it
                upper = _Node(child.key[:k], node, child.last_access)
                node.children[ids[i]] = upper
                child.key, child.parent = child.key[k:], upper
                upper.children[child.key[0]] = child
                child = upper
            child.last_access = now
            node, i = child, i + k
        if self.size > self.max_tokens:
            self.evict(int(self.max_tokens * EVICT_TO))

    def evict(self, target: int) -> None:
        """Remove least recently used leaves until at most ``target`` ids remain."""
        heap = [(leaf.last_access, id(leaf), leaf) for leaf in self._leaves()]
        heapq.heapify(heap)
        while self.size > target and heap:
            _, _, leaf = heapq.heappop(heap)
            parent = leaf.parent
            del parent.children[leaf.key[0]]
            self.size -= len(leaf.key)
            if parent is not self.root and not parent.children:
                heapq.heappush(heap, (parent.last_access, id(parent), parent))

    def clear(self) -> None:
        """Forget everything (the replica's cache was flushed)."""
        self.root = _Node((), None)
        self.size = 0

    def _leaves(self) -> list[_Node]:
        leaves, stack = [], list(self.root.children.values())
        while stack:
            node = stack.pop()
            if node.children:
                stack.extend(node.children.values())
            else:
                leaves.append(node)
        return leaves


class Router:
    """Picks a replica for each request by ``method`` (one of :data:`LOAD_BALANCE_METHODS`; see the module doc).

    ``cache_threshold``, ``balance_abs_threshold`` and ``balance_rel_threshold`` tune ``cache_aware``;
    ``max_tree_tokens`` bounds each replica's tree. ``decisions`` counts why each request went where it went
    (``prefix``, ``load``, ``imbalance``, ``round_robin``, ``shortest_queue``).
    """

    def __init__(
        self,
        num_replicas: int,
        method: str = "cache_aware",
        *,
        cache_threshold: float = CACHE_THRESHOLD,
        balance_abs_threshold: int = BALANCE_ABS_THRESHOLD,
        balance_rel_threshold: float = BALANCE_REL_THRESHOLD,
        max_tree_tokens: int = MAX_TREE_TOKENS,
    ) -> None:
        if num_replicas < 1:
            raise ValueError(f"num_replicas must be at least 1, got {num_replicas!r}.")
        if method not in LOAD_BALANCE_METHODS:
            raise ValueError(f"method must be one of {LOAD_BALANCE_METHODS}, got {method!r}.")
        self.num_replicas = num_replicas
        self.method = method
        self.cache_threshold = cache_threshold
        self.balance_abs_threshold = balance_abs_threshold
        self.balance_rel_threshold = balance_rel_threshold
        uses_trees = method == "cache_aware" and num_replicas > 1
        self.trees = [ApproxPrefixTree(max_tree_tokens) for _ in range(num_replicas)] if uses_trees else []
        self.decisions: dict[str, int] = {}
        self._next = 0  # round-robin position, also the rotating tie-break

    def select(self, input_ids: Sequence[int], loads: Sequence[int]) -> int:
        """The replica (0 .. N-1) for a request with these token ids, given each replica's in-flight count."""
        if len(loads) != self.num_replicas:
            raise ValueError(f"Expected {self.num_replicas} loads, got {len(loads)}.")
        if self.num_replicas == 1:
            return 0
        if self.method == "round_robin":
            replica, self._next = self._next, (self._next + 1) % self.num_replicas
            return self._count(replica, "round_robin")
        if self.method == "shortest_queue":
            return self._count(self._least_loaded(loads), "shortest_queue")
        return self._cache_aware(input_ids, loads)

    def _cache_aware(self, input_ids: Sequence[int], loads: Sequence[int]) -> int:
        if self.is_imbalanced(loads):
            replica, reason = self._least_loaded(loads), "imbalance"
        else:
            matches = [tree.match(input_ids) for tree in self.trees]
            best = max(range(self.num_replicas), key=lambda r: (matches[r], -loads[r], -r))
            if input_ids and matches[best] / len(input_ids) > self.cache_threshold:
                replica, reason = best, "prefix"
            else:
                replica, reason = self._least_loaded(loads), "load"
        self.trees[replica].insert(input_ids)
        return self._count(replica, reason)

    def is_imbalanced(self, loads: Sequence[int]) -> bool:
        """cache_aware's switch to pure load balancing: both balance thresholds exceeded."""
        low, high = min(loads), max(loads)
        return high - low > self.balance_abs_threshold and high > low * self.balance_rel_threshold

    def _least_loaded(self, loads: Sequence[int]) -> int:
        """Fewest in-flight requests; ties: the smallest tree (most cache room), then rotation."""
        n = self.num_replicas
        order = [(self._next + k) % n for k in range(n)]
        sizes = [tree.size for tree in self.trees] if self.trees else [0] * n
        replica = min(order, key=lambda r: (loads[r], sizes[r]))
        self._next = (replica + 1) % n
        return replica

    def _count(self, replica: int, reason: str) -> int:
        self.decisions[reason] = self.decisions.get(reason, 0) + 1
        return replica

    def reset(self, replicas: Sequence[int] | None = None) -> None:
        """Forget what ``replicas`` (default: all) cached: their caches were flushed or their weights changed."""
        for r in range(self.num_replicas) if replicas is None else replicas:
            if self.trees:
                self.trees[r].clear()

    def info(self) -> dict[str, Any]:
        """The policy, its parameters, the decision counts and each tree's size (for /get_server_info)."""
        out: dict[str, Any] = {"load_balance_method": self.method, "decisions": dict(self.decisions)}
        if self.method == "cache_aware":
            out.update(
                cache_threshold=self.cache_threshold,
                balance_abs_threshold=self.balance_abs_threshold,
                balance_rel_threshold=self.balance_rel_threshold,
                tree_tokens=[tree.size for tree in self.trees],
            )
        return out
