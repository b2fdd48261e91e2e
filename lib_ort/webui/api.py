"""HTTP routes for a headless WebUI (``--api``/``--nowebui``), added at app start.

They follow the WebUI's own API: present only when it serves its API (``--api``, or ``--nowebui``, which
implies it), and behind the same HTTP Basic check when ``--api-auth user:password[,user:password...]``
is set (modules/api/api.py: ``Api.auth``), nothing extra otherwise. Without that, anyone who can reach
the port could start exports (filling the disk) or delete artefacts while ``/sdapi`` answers 401.

Errors come back as HTTP errors whose detail says what went wrong, never as a 200 with a traceback.
The status follows the error's type (``http_status``), so a client can tell "not now" from "not here".
"""

from __future__ import annotations

from secrets import compare_digest

from ..errors import (ArtefactError, DiskFull, ExportBusy, NoCheckpointLoaded, NotEnoughMemory, OrtTurboError,
                      RuntimeUnavailable)
from . import service, settings

#: error type -> HTTP status; the first match in this order wins (DiskFull is an ExportError)
STATUS_BY_ERROR = (
    (NoCheckpointLoaded, 409),  # load a checkpoint, then ask again
    (ExportBusy, 409),  # one export at a time
    (RuntimeUnavailable, 503),  # this WebUI cannot run what it would make: install or choose another provider
    (DiskFull, 507),
    (NotEnoughMemory, 503),  # not now: free memory (unload the checkpoint, close programs) and ask again
    (ArtefactError, 409),
)


def http_status(exc: Exception) -> int:
    return next((status for kind, status in STATUS_BY_ERROR if isinstance(exc, kind)), 500)


def _provider(body: dict | None) -> str:
    """The provider key a request names by label ("CUDA"), choice ("Automatic") or key ("cuda")."""
    from fastapi import HTTPException

    choice = (body or {}).get("provider", "Automatic")
    if choice in settings.PROVIDER_CHOICES:
        return settings.resolve_provider(choice)
    if choice in settings.PROVIDERS.values():
        return choice
    raise HTTPException(400, f"unknown provider {choice!r}; use one of "
                             f"{', '.join([*settings.PROVIDERS.values(), *settings.PROVIDER_CHOICES])}")


def _answer(export, *args, **kwargs):
    from fastapi import HTTPException

    try:
        return export(*args, **kwargs)
    except (OrtTurboError, ValueError) as exc:
        raise HTTPException(http_status(exc), str(exc)) from exc


def serves_api(cmd_opts) -> bool:
    """Whether the WebUI serves its own API (webui.py: ``create_api`` under ``--api`` or ``--nowebui``)."""
    return bool(getattr(cmd_opts, "api", False) or getattr(cmd_opts, "nowebui", False))


def api_credentials(cmd_opts) -> dict[str, str]:
    """user -> password from ``--api-auth`` ("user:password,..."), as the WebUI reads it; {} when unset."""
    spec = getattr(cmd_opts, "api_auth", None)
    if not spec:
        return {}
    return dict(entry.split(":", 1) for entry in spec.split(","))


def auth_dependencies(cmd_opts) -> list:
    """The route dependencies that make a request pass the WebUI's API authentication: [] without
    ``--api-auth``; otherwise HTTP Basic, 401 with ``WWW-Authenticate`` for a wrong or missing login."""
    credentials = api_credentials(cmd_opts)
    if not credentials:
        return []
    from fastapi import Depends, HTTPException
    from fastapi.security import HTTPBasic

    def authenticate(login=Depends(HTTPBasic())):  # HTTPBasicCredentials (no annotation: lazy imports)
        expected = credentials.get(login.username)
        # bytes: compare_digest refuses non-ASCII str, which would answer 500 instead of 401
        if expected is not None and compare_digest(login.password.encode(), expected.encode()):
            return True
        raise HTTPException(401, "Incorrect username or password", headers={"WWW-Authenticate": "Basic"})

    return [Depends(authenticate)]


def add_routes(app, cmd_opts) -> None:
    """``POST /ort-turbo/v1/export`` (the UNet) and ``/ort-turbo/v1/export-vae`` take
    ``{"provider": "Automatic" | "CUDA" | "cuda" | ...}`` (the VAE also ``"precision"``).

    ``cmd_opts`` is the WebUI's ``shared.cmd_opts``: no routes when it serves no API, its authentication
    when it has one."""
    from fastapi import Body, HTTPException

    from . import vae as ort_vae

    if not serves_api(cmd_opts):
        return
    guard = auth_dependencies(cmd_opts)

    def export(body: dict = Body(...)):
        return _answer(service.export_loaded_checkpoint, _provider(body))

    def export_vae(body: dict = Body(...)):
        return _answer(ort_vae.export_loaded_vae, _provider(body), precision=(body or {}).get("precision"))

    def artefacts():
        return service.artefact_rows()

    def delete(artefact_id: str):
        try:
            service.delete_artefact(artefact_id)
        except ArtefactError as exc:
            raise HTTPException(404, str(exc)) from exc
        return {"deleted": artefact_id}

    app.add_api_route("/ort-turbo/v1/export", export, methods=["POST"], dependencies=guard)
    app.add_api_route("/ort-turbo/v1/export-vae", export_vae, methods=["POST"], dependencies=guard)
    app.add_api_route("/ort-turbo/v1/artefacts", artefacts, methods=["GET"], dependencies=guard)
    app.add_api_route("/ort-turbo/v1/artefacts/{artefact_id}", delete, methods=["DELETE"], dependencies=guard)
