"""The model a running pipeline scores with: the registry's active version, followed live."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class ModelWatcher:
    """Follow the model registry's active version and hand changes to the engine.

    Calls ``models.registry.load_default()`` when no ``model_dir`` is set, else
    ``models.registry.active_version(model_dir) -> str | None`` (cheap, polled) and
    ``models.registry.load_version(model_dir, version) -> LoadedModel`` on a change. A
    missing registry module or a model that fails to load is logged and the current model
    kept: a bad promote must not stop detection.
    """

    def __init__(self, model_dir: Path | None) -> None:
        self.model_dir = model_dir
        self.version: str | None = None
        self._warned = False

    def _registry(self) -> Any:
        try:
            import flowwarden.models.registry as registry
        except ImportError as exc:
            if not self._warned:
                log.warning("model registry unavailable, isolation_forest inactive: %s", exc)
                self._warned = True
            return None
        return registry

    def initial(self) -> Any:
        registry = self._registry()
        if registry is None:
            return None
        try:
            if self.model_dir is None:
                model = registry.load_default()
            else:
                version = registry.active_version(self.model_dir)
                model = registry.load_version(self.model_dir, version) if version else None
        except Exception as exc:  # a broken registry must not stop the stage
            log.error("model load failed dir=%s error=%s", self.model_dir, exc)
            return None
        self.version = getattr(model, "version", None)
        return model

    def changed(self) -> tuple[bool, Any]:
        """(True, new model) when the active version moved; (False, None) otherwise."""
        if self.model_dir is None:
            return False, None
        registry = self._registry()
        if registry is None:
            return False, None
        try:
            version = registry.active_version(self.model_dir)
            if version == self.version:
                return False, None
            model = registry.load_version(self.model_dir, version) if version else None
        except Exception as exc:
            log.error("model reload failed dir=%s error=%s (keeping %s)", self.model_dir, exc, self.version)
            return False, None
        log.info("model switched from=%s to=%s", self.version, version)
        self.version = version
        return True, model
