"""The model a running pipeline scores with: the registry's active version, followed live."""

from __future__ import annotations

import logging
from pathlib import Path

from flowwarden.models import registry
from flowwarden.models.registry import LoadedModel

log = logging.getLogger(__name__)


class ModelWatcher:
    """Follow the model registry's active version and hand changes to the engine.

    With no ``model_dir``, the model shipped in the package (``load_default``); else the
    registry's active version, polled cheaply (``active_version``) and loaded on a change.
    A model that fails to load is logged and the current one kept: a bad promote must not
    stop detection.
    """

    def __init__(self, model_dir: Path | None) -> None:
        self.model_dir = model_dir
        self.version: str | None = None

    def initial(self) -> LoadedModel | None:
        try:
            if self.model_dir is None:
                model: LoadedModel | None = registry.load_default()
            else:
                version = registry.active_version(self.model_dir)
                model = registry.load_version(self.model_dir, version) if version else None
        except Exception as exc:  # a broken registry must not stop the stage
            log.error("model load failed dir=%s error=%s", self.model_dir, exc)
            return None
        self.version = model.version if model is not None else None
        return model

    def changed(self) -> tuple[bool, LoadedModel | None]:
        """(True, new model) when the active version moved; (False, None) otherwise."""
        if self.model_dir is None:
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
