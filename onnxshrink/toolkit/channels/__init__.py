"""Structured pruning on the ONNX graph: which channels must be removed together, removing them, and
repairing the consumers afterwards.

    analysis = analyze_channels(model)                       # groups, and declined groups with reasons
    group = analysis.prunable[0]
    scores = channel_importance(analysis, group, "l2")
    removal = remove_channels(analysis, {group.id: select_channels(group, scores, 8)})
    reconstruct_consumers(original, model, removal, feeds)   # optional, needs calibration data
"""

from onnxshrink.toolkit.channels.analysis import (
    ChannelAnalysis,
    ChannelGroup,
    ChannelSlot,
    analyze_channels,
    channel_importance,
    check_removal,
    select_channels,
)
from onnxshrink.toolkit.channels.reconstruct import reconstruct_consumers
from onnxshrink.toolkit.channels.removal import ChannelRemoval, SinkChange, remove_channels

__all__ = [
    "ChannelAnalysis",
    "ChannelGroup",
    "ChannelRemoval",
    "ChannelSlot",
    "SinkChange",
    "analyze_channels",
    "channel_importance",
    "check_removal",
    "reconstruct_consumers",
    "remove_channels",
    "select_channels",
]
