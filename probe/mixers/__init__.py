"""The architecture registry: arch name -> MixerSpec. One family per module; this dict is the only list.

A hybrid is a comma-separated pattern of these names (`hyena,hyena,attention`), repeated over the layers.
"""
from __future__ import annotations

from . import attention, conv, linear_attention, monarch, simplicial, ssm
from .base import Mixer, MixerSpec, State, state_numel

MIXERS: dict[str, MixerSpec] = {
    **attention.ARCHS,
    **linear_attention.ARCHS,
    **ssm.ARCHS,
    **conv.ARCHS,
    **monarch.ARCHS,
    **simplicial.ARCHS,
}

__all__ = ["MIXERS", "Mixer", "MixerSpec", "State", "state_numel"]
