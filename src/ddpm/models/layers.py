"""Small building blocks shared by the UNets."""


def num_groups(channels: int, groups: int, min_channels: int = 1) -> int:
    """The largest number of GroupNorm groups, at most ``groups``, that divides ``channels`` and leaves at
    least ``min_channels`` channels in each group."""
    g = max(1, min(groups, channels // min_channels))
    while channels % g:
        g -= 1
    return g
