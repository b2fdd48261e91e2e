"""Stand-in of modules/scripts.py: the Script base class and AlwaysVisible."""

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
    """Runs the AlwaysVisible scripts' hooks with their arguments, as the WebUI's runner does."""

    def __init__(self, scripts_and_args):
        self.items = list(scripts_and_args)

    def before_process(self, p):
        for s, args in self.items:
            s.before_process(p, *args)

    def process(self, p):
        for s, args in self.items:
            s.process(p, *args)

    def process_batch(self, p, **kwargs):
        for s, args in self.items:
            s.process_batch(p, *args, **kwargs)

    def postprocess_batch(self, p, images, **kwargs):
        for s, args in self.items:
            s.postprocess_batch(p, *args, images=images, **kwargs)

    def postprocess(self, p, processed):
        for s, args in self.items:
            s.postprocess(p, processed, *args)
