"""A small stand-in of the WebUI v1.10.1 API surface that ORT Turbo uses (not WebUI code).

Signatures and behaviours follow the project's notes in shared/docs/webui-host-api.md; only what
the extension touches is here. Tests put tests/webui_stub on sys.path so `import modules` finds it.
"""
