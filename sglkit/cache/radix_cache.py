"""Radix prefix cache (RadixAttention's tree): token-id prefixes -> KV pool slots, shared across requests.

Data flow: the scheduler asks ``match_prefix`` for the longest cached prefix of a waiting request, locks the
matched node while the request runs, and hands the request's KV back with ``cache_unfinished_req`` (after a
prefill chunk) or ``cache_finished_req`` (finished or retracted). Under memory pressure it calls ``evict``.
The tree holds token ids and int64 slot indices only: no model tensors, so it is unit-testable on CPU.

Mutation contract
-----------------
* Ownership: every slot is owned by exactly one of the allocator (free), the tree, or a running request
  (slots written into ``req_to_token`` beyond ``len(req.prefix_indices)``). With no request running,
  ``allocator.available_size() + cache.total_size() == allocator.size``.
* Indices returned by ``match_prefix`` are only valid while their last node is locked (``inc_lock_ref``):
  an unlocked node may be evicted (its slots freed and reused) by the next ``evict``.
* ``match_prefix`` may split a node (when the match ends inside it); a split keeps the original node object
  as the lower part, so a node a request holds still ends where it did and locks stay correct.
* ``insert`` never frees anything: it returns how many leading tokens were already cached, and the caller
  frees its own duplicate slots for those tokens (except the ones that are the tree's own, i.e. its prefix).
  Slots past that length become the tree's; the tree keeps a copy of ``value``, never a view.
* ``cache_finished_req`` / ``cache_unfinished_req`` free duplicates and (finished) the request's
  ``req_to_token`` row; the request's own uncached slots are never freed by the tree.
* ``evict`` frees only unlocked leaves, least recently used first; ``evict(0)`` is always safe.
* ``reset`` raises ``RuntimeError`` if any node is locked; otherwise every tree slot goes back to the allocator.
* ``disable=True``: the tree stays empty; ``match_prefix`` gives (empty, root); a request owns all of its KV
  (``prefix_indices`` included) and ``cache_finished_req`` frees all of it.
* Returned tensors are int64 on the allocator's device; ``evict`` uses a monotonic counter, not wall time.

Index ranges of a request's ``kv = req_to_token[req.req_pool_idx, :req.kv_len]`` (P = len(prefix_indices),
N = value returned by ``insert``, K = kv_len; P <= N <= K because the prefix is locked, hence still cached):

    range        | before the call                     | cache_finished_req     | cache_unfinished_req
    -------------+-------------------------------------+------------------------+----------------------------
    kv[0:P]      | tree's slots (locked via last_node) | unlocked, stay in tree | stay in tree, still locked
    kv[P:N]      | request's own; tree already had     | freed (duplicates)     | freed; row rewritten with
                 | these tokens under other slots      |                        | the tree's slots
    kv[N:K]      | request's own, new to the tree      | now the tree's         | now the tree's, locked
    row          | req_to_token_pool slot              | freed                  | kept (prefix := kv[0:K])
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from sglkit.cache.memory_pool import ReqToTokenPool, TokenToKVPoolAllocator

if TYPE_CHECKING:
    from sglkit.core.req import Req

_node_ids = itertools.count()


class TreeNode:
    """One edge of the radix tree: a run of token ids (``key``) and their KV slots (``value``, same length)."""

    def __init__(
        self,
        key: list[int] | None = None,
        value: torch.Tensor | None = None,
        parent: TreeNode | None = None,
        last_access_time: int = 0,
    ) -> None:
        self.id = next(_node_ids)
        self.children: dict[int, TreeNode] = {}  # first token id of the child's key -> child
        self.parent = parent
        self.key: list[int] = key if key is not None else []
        self.value: torch.Tensor = value if value is not None else torch.empty(0, dtype=torch.int64)
        self.lock_ref = 0  # number of running requests whose matched path passes through this node
        self.last_access_time = last_access_time  # the cache's monotonic counter at the last match / insert

    def is_leaf(self) -> bool:
        """True when the node has no children."""
        return not self.children

    def __lt__(self, other: TreeNode) -> bool:
        return (self.last_access_time, self.id) < (other.last_access_time, other.id)

    def __repr__(self) -> str:
        return f"TreeNode(id={self.id}, len={len(self.key)}, lock_ref={self.lock_ref}, t={self.last_access_time})"


def common_prefix_len(node_key: Sequence[int], key: Sequence[int], start: int) -> int:
    """Length of the common prefix of ``node_key`` and ``key[start:]`` (also used by the data-parallel router)."""
    n = min(len(node_key), len(key) - start)
    i = 0
    while i < n and node_key[i] == key[start + i]:
        i += 1
    return i


class RadixCache:
    """Radix tree over token ids whose edges hold KV slots; LRU eviction of unlocked leaves."""

    def __init__(
        self,
        req_to_token_pool: ReqToTokenPool,
        token_to_kv_pool_allocator: TokenToKVPoolAllocator,
        disable: bool = False,
    ) -> None:
        self.req_to_token_pool = req_to_token_pool
        self.token_to_kv_pool_allocator = token_to_kv_pool_allocator
        self.disable = disable
        self.device = token_to_kv_pool_allocator.device  # tensors the cache returns live here
        self._clock = itertools.count(1)
        self.num_evicted_tokens = 0  # cumulative, for dashboards
        self.reset()

    # ----------------------------------------------------------------------------------------- sizes
    def evictable_size(self) -> int:
        """Tokens held by unlocked nodes."""
        return self._evictable_size

    def protected_size(self) -> int:
        """Tokens held by locked nodes."""
        return self._protected_size

    def total_size(self) -> int:
        """All tokens (= KV slots) held by the tree."""
        return self._evictable_size + self._protected_size

    # ----------------------------------------------------------------------------------------- lookup
    def match_prefix(self, key: list[int]) -> tuple[torch.Tensor, TreeNode]:
        """Longest cached prefix of ``key``: (KV slots [n] int64, last matched node).

        Splits a node when the match ends inside it, so the returned node always ends exactly at ``n``.
        Refreshes access times along the path. The slots stay valid only while the node is locked.
        """
        if self.disable or not key:
            return self._empty(), self.root_node
        now = next(self._clock)
        node = self.root_node
        node.last_access_time = now
        values: list[torch.Tensor] = []
        pos = 0
        while pos < len(key):
            child = node.children.get(key[pos])
            if child is None:
                break
            n = common_prefix_len(child.key, key, pos)
            if n < len(child.key):
                child = self._split_node(child, n)  # the unmatched tail keeps its old access time
            child.last_access_time = now
            values.append(child.value)
            node = child
            pos += n
        if not values:
            return self._empty(), node
        return torch.cat(values), node

    def _empty(self) -> torch.Tensor:
        return torch.empty(0, dtype=torch.int64, device=self.device)

    def insert(self, key: list[int], value: torch.Tensor) -> int:
        """Insert ``key -> value`` ([len(key)] int64 slots); returns how many leading tokens were already cached.

        The slots ``value[:returned]`` are not taken by the tree: unless they are the tree's own, they are
        duplicates the caller must free. The tree keeps a copy of ``value[returned:]``.
        """
        if self.disable:
            return 0
        if value.numel() != len(key):
            raise ValueError(f"insert: key has {len(key)} tokens but value has {value.numel()} slots")
        now = next(self._clock)
        node = self.root_node
        node.last_access_time = now
        pos = 0
        while pos < len(key):
            child = node.children.get(key[pos])
            if child is None:
                break
            n = common_prefix_len(child.key, key, pos)
            if n < len(child.key):
                child = self._split_node(child, n)  # the unmatched tail keeps its old access time
            child.last_access_time = now
            node = child
            pos += n
        if pos < len(key):
            leaf = TreeNode(list(key[pos:]), value[pos:].to(self.device, torch.int64, copy=True), node, now)
            node.children[key[pos]] = leaf
            self._evictable_size += len(leaf.key)
        return pos

    def _split_node(self, child: TreeNode, n: int) -> TreeNode:
        """Cut ``child`` after its first ``n`` tokens (0 < n < len); returns the new upper node."""
        upper = TreeNode(child.key[:n], child.value[:n].clone(), child.parent, child.last_access_time)
        upper.lock_ref = child.lock_ref  # every lock through child also passes through upper
        upper.children = {child.key[n]: child}
        child.parent.children[child.key[0]] = upper
        child.parent = upper
        child.key = child.key[n:]
        child.value = child.value[n:].clone()
        return upper

    # ------------------------------------------------------------------------------- request hand-off
    def cache_finished_req(self, req: Req) -> None:
        """Hand a finished (or retracted) request's KV to the tree and free its ``req_to_token`` row."""
        kv = self._req_kv(req)
        if self.disable:
            self.token_to_kv_pool_allocator.free(kv)
        else:
            token_ids = req.fill_ids[: req.kv_len]
            num_prefix = len(req.prefix_indices)
            new_prefix_len = self.insert(token_ids, kv)
            self.token_to_kv_pool_allocator.free(kv[num_prefix:new_prefix_len])
            self.dec_lock_ref(req.last_node)
        self.req_to_token_pool.free(req.req_pool_idx)

    def cache_unfinished_req(self, req: Req) -> None:
        """After a prefill chunk: cache ``fill_ids[:kv_len]`` and make it the request's locked prefix."""
        kv = self._req_kv(req)
        if self.disable:
            req.prefix_indices = kv
            return
        token_ids = req.fill_ids[: req.kv_len]
        num_prefix = len(req.prefix_indices)
        new_prefix_len = self.insert(token_ids, kv)
        self.token_to_kv_pool_allocator.free(kv[num_prefix:new_prefix_len])
        new_indices, new_node = self.match_prefix(token_ids)
        if new_indices.numel() != req.kv_len:
            raise RuntimeError(f"cache_unfinished_req: matched {new_indices.numel()} of {req.kv_len} tokens")
        self.req_to_token_pool.write(req.req_pool_idx, num_prefix, new_indices[num_prefix:])
        self.inc_lock_ref(new_node)
        self.dec_lock_ref(req.last_node)
        req.prefix_indices = new_indices
        req.last_node = new_node

    def _req_kv(self, req: Req) -> torch.Tensor:
        """A copy (not a view) of the request's slots: req_to_token[req_pool_idx, :kv_len] -> [kv_len]."""
        row = self.req_to_token_pool.req_to_token[req.req_pool_idx, : req.kv_len]
        return row.to(device=self.device, dtype=torch.int64, copy=True)

    # ---------------------------------------------------------------------------------------- locking
    def inc_lock_ref(self, node: TreeNode | None) -> None:
        """Lock the path node..root (root excluded) so it cannot be evicted. None / root: no-op."""
        while node is not None and node is not self.root_node:
            if node.lock_ref == 0:
                self._evictable_size -= len(node.key)
                self._protected_size += len(node.key)
            node.lock_ref += 1
            node = node.parent

    def dec_lock_ref(self, node: TreeNode | None) -> None:
        """Undo one ``inc_lock_ref(node)``. None / root: no-op."""
        while node is not None and node is not self.root_node:
            if node.lock_ref <= 0:
                raise RuntimeError(f"dec_lock_ref on an unlocked node {node!r}")
            node.lock_ref -= 1
            if node.lock_ref == 0:
                self._evictable_size += len(node.key)
                self._protected_size -= len(node.key)
            node = node.parent

    # --------------------------------------------------------------------------------------- eviction
    def evict(self, num_tokens: int) -> int:
        """Free at least ``num_tokens`` slots if possible, removing unlocked leaves LRU-first; returns slots freed.

        A parent that becomes an unlocked leaf joins the candidates. ``evict(0)`` is always safe (frees nothing).
        """
        if self.disable or num_tokens <= 0:
            return 0
        heap = [n for n in self._iter_nodes() if n.is_leaf() and n.lock_ref == 0]
        heapq.heapify(heap)
        num_freed = 0
        while num_freed < num_tokens and heap:
            leaf = heapq.heappop(heap)
            self.token_to_kv_pool_allocator.free(leaf.value)
            num_freed += len(leaf.key)
            self._evictable_size -= len(leaf.key)
            parent = leaf.parent
            del parent.children[leaf.key[0]]
            leaf.parent = None
            if parent is not self.root_node and parent.is_leaf() and parent.lock_ref == 0:
                heapq.heappush(heap, parent)
        self.num_evicted_tokens += num_freed
        return num_freed

    def reset(self) -> None:
        """Flush: drop every node and return its slots to the allocator. RuntimeError if any node is locked."""
        if getattr(self, "root_node", None) is not None:
            if self._protected_size > 0:
                raise RuntimeError(f"cannot reset the radix cache: {self._protected_size} tokens are locked")
            for node in self._iter_nodes():
                self.token_to_kv_pool_allocator.free(node.value)
        self.root_node = TreeNode()
        self.root_node.lock_ref = 1  # the root is never evicted (inc/dec skip it)
        self._evictable_size = 0
        self._protected_size = 0

    # ------------------------------------------------------------------------------------- inspection
    def _iter_nodes(self) -> list[TreeNode]:
        """Every node except the root, parents before children."""
        out: list[TreeNode] = []
        stack = list(self.root_node.children.values())
        while stack:
            node = stack.pop()
            out.append(node)
            stack.extend(node.children.values())
        return out

    def num_nodes(self) -> int:
        """Nodes in the tree, root excluded."""
        return len(self._iter_nodes())

    def pretty_print(self, max_tokens: int = 8) -> str:
        """The tree as indented text (keys cut to ``max_tokens``), for debugging; also returned, not printed."""
        lines = [
            f"root  total={self.total_size()} evictable={self.evictable_size()} protected={self.protected_size()}"
        ]

        def visit(node: TreeNode, depth: int) -> None:
            for child in sorted(node.children.values(), key=lambda c: c.key[0]):
                key = child.key if len(child.key) <= max_tokens else [*child.key[:max_tokens], "..."]
                lines.append(
                    f"{'  ' * depth}{key} len={len(child.key)} lock={child.lock_ref} t={child.last_access_time}"
                )
                visit(child, depth + 1)

        visit(self.root_node, 1)
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"RadixCache(total={self.total_size()}, evictable={self.evictable_size()}, "
            f"protected={self.protected_size()}, disable={self.disable})"
        )
