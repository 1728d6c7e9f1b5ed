"""Planners shared by the sessions that see the same catalog reading with the same masks.

Resolving masks against a catalog (views are traced) and planning statements cost milliseconds;
sessions of the same people on the same database share that work. An entry is keyed by the catalog
reading (its generation), the masks' ids, the policy version and the search path; a new catalog
reading or policy set makes new entries, and old ones are dropped in least-recently-used order.

Pure: it must not load catalogs (``catalog`` does) nor know about sessions.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from pgproxy.masking.plan import Planner
from pgproxy.masking.resolve import MaskedCatalog, build_masked_catalog
from pgproxy.masking.snapshot import CatalogSnapshot
from pgproxy.policy.model import Mask

_ENTRIES = 64

_Key = tuple[str, int, int, tuple[str, ...], int, tuple[str, ...]]


class PlannerRegistry:
    """Masked catalogs and planners, least recently used dropped first."""

    def __init__(self, entries: int = _ENTRIES) -> None:
        self._entries = entries
        self._catalogs: OrderedDict[tuple[str, int, int, tuple[str, ...], int], MaskedCatalog] = OrderedDict()
        self._planners: OrderedDict[_Key, Planner] = OrderedDict()

    def planner(
        self, snapshot: CatalogSnapshot, masks: Sequence[Mask], policy_version: int, search_path: tuple[str, ...]
    ) -> Planner:
        mask_ids = tuple(mask.id for mask in masks)
        catalog_key = (snapshot.database, snapshot.generation, id(snapshot), mask_ids, policy_version)
        key: _Key = (*catalog_key, search_path)
        planner = self._planners.get(key)
        if planner is not None and planner.catalog.snapshot is snapshot:
            self._planners.move_to_end(key)
            return planner
        catalog = self._catalogs.get(catalog_key)
        if catalog is None or catalog.snapshot is not snapshot:
            catalog = build_masked_catalog(snapshot, masks)
            self._catalogs[catalog_key] = catalog
            _trim(self._catalogs, self._entries)
        planner = Planner(catalog, search_path)
        self._planners[key] = planner
        _trim(self._planners, self._entries)
        return planner


def _trim(entries: OrderedDict[_Key, Planner] | OrderedDict[tuple[str, int, int, tuple[str, ...], int], MaskedCatalog],
          limit: int) -> None:
    while len(entries) > limit:
        entries.popitem(last=False)
