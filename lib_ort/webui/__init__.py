"""The part of ORT Turbo that talks to the WebUI. Only this sub-package and ``scripts/`` import
the WebUI's ``modules``; everything else in ``lib_ort`` runs without a WebUI."""
