"""KV memory (token pool, slot allocator, request-to-token table) and the radix prefix cache."""

from sglkit.cache.memory_pool import MHATokenToKVPool, ReqToTokenPool, TokenToKVPoolAllocator
from sglkit.cache.radix_cache import RadixCache

__all__ = ["ReqToTokenPool", "TokenToKVPoolAllocator", "MHATokenToKVPool", "RadixCache"]
