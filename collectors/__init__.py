"""flowwarden collectors stage: packets to bidirectional flow records to the ``flows`` topic.

``meter_pcap(path, settings=None) -> DataFrame`` is the offline entry point (imported
lazily so that ``import collectors`` stays cheap).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flowwarden.collectors.offline import meter_capture, meter_pcap

__all__ = ["meter_capture", "meter_pcap"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from flowwarden.collectors import offline

        return getattr(offline, name)
    raise AttributeError(name)
