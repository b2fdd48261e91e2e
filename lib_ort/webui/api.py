"""HTTP routes for a headless WebUI (``--api``/``--nowebui``), added at app start.

Errors come back as HTTP errors whose detail says what went wrong, never as a 200 with a traceback.
"""

from __future__ import annotations

from ..errors import ArtefactError, OrtTurboError
from . import service, settings


def add_routes(app) -> None:
    from fastapi import Body, HTTPException

    def export(body: dict = Body(...)):
        choice = (body or {}).get("provider", "Automatic")
        by_value = {v: v for v in settings.PROVIDERS.values()}
        if choice in settings.PROVIDER_CHOICES:
            ep = settings.resolve_provider(choice)
        elif choice in by_value:
            ep = choice
        else:
            raise HTTPException(400, f"unknown provider {choice!r}; use one of "
                                     f"{', '.join([*settings.PROVIDERS.values(), *settings.PROVIDER_CHOICES])}")
        try:
            return service.export_loaded_checkpoint(ep)
        except (OrtTurboError, ValueError) as exc:
            raise HTTPException(409 if "no checkpoint" in str(exc) else 500, str(exc)) from exc

    def artefacts():
        return service.artefact_rows()

    def delete(artefact_id: str):
        try:
            service.delete_artefact(artefact_id)
        except ArtefactError as exc:
            raise HTTPException(404, str(exc)) from exc
        return {"deleted": artefact_id}

    app.add_api_route("/ort-turbo/v1/export", export, methods=["POST"])
    app.add_api_route("/ort-turbo/v1/artefacts", artefacts, methods=["GET"])
    app.add_api_route("/ort-turbo/v1/artefacts/{artefact_id}", delete, methods=["DELETE"])
