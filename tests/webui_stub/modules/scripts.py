"""Stand-in of modules/scripts.py: the Script base class and AlwaysVisible."""

from modules import errors

AlwaysVisible = object()


class Script:
    filename = None
    args_from = None
    args_to = None
    infotext_fields = None
    paste_field_names = None
    is_img2img = False

    def title(self):
        raise NotImplementedError()

    def show(self, is_img2img):
        return True

    def ui(self, is_img2img):
        pass

    def after_component(self, component, **kwargs):
        pass

    def before_process(self, p, *args):
        pass

    def process(self, p, *args):
        pass

    def process_batch(self, p, *args, **kwargs):
        pass

    def postprocess_batch(self, p, *args, **kwargs):
        pass

    def postprocess(self, p, processed, *args):
        pass


class ScriptRunner:
    """Runs the AlwaysVisible scripts' hooks with their arguments, as the WebUI's runner does: each call
    inside its own try/except that reports the error (``errors.report``) and goes on with the next script
    and the job (scripts.py:820-882 in v1.10.1)."""

    def __init__(self, scripts_and_args):
        self.items = list(scripts_and_args)

    def _each(self, hook, call):
        for s, args in self.items:
            try:
                call(getattr(s, hook), args)
            except Exception:
                errors.report(f"Error running {hook}: {getattr(s, 'filename', None) or type(s).__name__}",
                              exc_info=True)

    def before_process(self, p):
        self._each("before_process", lambda fn, args: fn(p, *args))

    def process(self, p):
        self._each("process", lambda fn, args: fn(p, *args))

    def process_batch(self, p, **kwargs):
        self._each("process_batch", lambda fn, args: fn(p, *args, **kwargs))

    def postprocess_batch(self, p, images, **kwargs):
        self._each("postprocess_batch", lambda fn, args: fn(p, *args, images=images, **kwargs))

    def postprocess(self, p, processed):
        self._each("postprocess", lambda fn, args: fn(p, processed, *args))
