"""Stand-in of modules/script_callbacks.py: the registries ORT Turbo uses, and a way to fire them."""

import collections

callbacks = collections.defaultdict(list)


def _add(name, fn):
    callbacks[name].append(fn)


def on_list_unets(fn):
    _add("list_unets", fn)


def on_ui_settings(fn):
    _add("ui_settings", fn)


def on_ui_tabs(fn):
    _add("ui_tabs", fn)


def on_app_started(fn):
    _add("app_started", fn)


def on_model_loaded(fn):
    _add("model_loaded", fn)


def model_loaded_callback(sd_model):
    """After a checkpoint is loaded (also mid-job, by the refiner switch): one raising is reported, not fatal."""
    from modules import errors

    for fn in callbacks["model_loaded"]:
        try:
            fn(sd_model)
        except Exception:
            errors.report(f"Error executing callback model_loaded_callback for {fn}", exc_info=True)


def on_after_component(fn):
    _add("after_component", fn)


def after_component_callback(component, **kwargs):
    for fn in callbacks["after_component"]:
        fn(component, **kwargs)


def on_script_unloaded(fn):
    _add("script_unloaded", fn)


def script_unloaded_callback():
    """Before the WebUI reloads its scripts: every callback runs, one raising is reported, not fatal."""
    from modules import errors

    for fn in callbacks["script_unloaded"]:
        try:
            fn()
        except Exception:
            errors.report(f"Error executing callback script_unloaded for {fn}", exc_info=True)


def list_unets_callback():
    res = []
    for fn in callbacks["list_unets"]:
        fn(res)
    return res


def ui_tabs_callback():
    res = []
    for fn in callbacks["ui_tabs"]:
        res += fn() or []
    return res


def app_started_callback(demo, app):
    for fn in callbacks["app_started"]:
        fn(demo, app)


def clear():
    callbacks.clear()
