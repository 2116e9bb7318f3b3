"""A KV cache that appends in place: `DynamicCache` whose full-attention layers preallocate their length.

Hugging Face's `DynamicLayer` appends each step's keys and values with `torch.cat`, copying the whole cache
of every layer at every decode step (O(t) per step, O(t^2) per rollout; the largest single cost of a
small model's rollout in a profile at CoT length 256). `PreallocatedLayer` writes each step into a buffer
sized for the whole rollout and hands attention a view of the filled part, so a step copies only its own
keys and values. Everything else (masks, positions, dropping rows with `batch_select_indices`) works as
with the dynamic layer, whose interface it keeps; sliding-window and other special layers are left as
they are.
"""

from __future__ import annotations

from torch import Tensor
from transformers import DynamicCache, PretrainedConfig
from transformers.cache_utils import DynamicLayer


class PreallocatedLayer(DynamicLayer):
    """A `DynamicLayer` that writes into a buffer of `capacity` positions (grown by doubling if exceeded)."""

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = int(capacity)
        self.length = 0

    def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self._keys = self._values = None
        self.length = 0

    def _reserve(self, like_k: Tensor, like_v: Tensor, needed: int) -> None:
        if self._keys is not None and self._keys.shape[-2] >= needed:
            return
        size = max(needed, self.capacity, 2 * (self._keys.shape[-2] if self._keys is not None else 0))
        keys = like_k.new_empty((*like_k.shape[:-2], size, like_k.shape[-1]))
        values = like_v.new_empty((*like_v.shape[:-2], size, like_v.shape[-1]))
        if self._keys is not None and self.length:
            keys[..., : self.length, :] = self._keys[..., : self.length, :]
            values[..., : self.length, :] = self._values[..., : self.length, :]
        self._keys, self._values = keys, values

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        """Write the new states after the filled part and return views of all filled positions."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        self._reserve(key_states, value_states, end)
        self._keys[..., self.length : end, :] = key_states
        self._values[..., self.length : end, :] = value_states
        self.length = end
        self.keys, self.values = self._keys[..., :end, :], self._values[..., :end, :]
        return self.keys, self.values

    def reset(self) -> None:
        self._keys = self._values = None
        self.length = 0
        super().reset()

    def crop(self, tokens_to_remove: int) -> None:
        super().crop(tokens_to_remove)
        if self.is_initialized and self.keys is not None and self.keys.numel():
            self.length = self.keys.shape[-2]

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.length:
            self._keys = self._keys.repeat_interleave(repeats, dim=0)
            self._values = self._values.repeat_interleave(repeats, dim=0)
            self.keys, self.values = self._keys[..., : self.length, :], self._values[..., : self.length, :]

    def batch_select_indices(self, indices: Tensor) -> None:
        if self.length:
            self._keys, self._values = self._keys[indices], self._values[indices]
            self.keys, self.values = self._keys[..., : self.length, :], self._values[..., : self.length, :]


def preallocated_cache(config: PretrainedConfig, capacity: int) -> DynamicCache:
    """A `DynamicCache` for `config` whose plain full-attention layers are `PreallocatedLayer(capacity)`."""
    cache = DynamicCache(config=config)
    cache.layers = [
        PreallocatedLayer(capacity) if type(layer) is DynamicLayer else layer for layer in cache.layers
    ]
    return cache
