"""Stand-in of modules/options.py: OptionInfo, options_section, Options (with ``save``/``load``: config.json)."""

import json


class OptionInfo:
    def __init__(self, default=None, label="", component=None, component_args=None, onchange=None, section=None,
                 refresh=None, comment_before="", comment_after="", infotext=None, restrict_api=False,
                 category_id=None):
        self.default = default
        self.do_not_save = False
        self.restrict_api = restrict_api
        self.label = label
        self.component = component
        self.component_args = component_args
        self.onchange = onchange
        self.section = section
        self.category_id = category_id
        self.refresh = refresh
        self.comment_after = comment_after
        self.infotext = infotext

    def info(self, text):
        self.comment_after += f"<span class='info'>({text})</span>"
        return self

    def needs_reload_ui(self):
        return self

    def needs_restart(self):
        return self


def options_section(section_identifier, options_dict):
    for v in options_dict.values():
        if len(section_identifier) == 2:
            v.section = section_identifier
        elif len(section_identifier) == 3:
            v.section = section_identifier[0:2]
            v.category_id = section_identifier[2]
    return options_dict


class Options:
    def __init__(self, data_labels):
        super().__setattr__("data_labels", data_labels)
        super().__setattr__("data", {})  # only what the user (or a job) set, as in config.json

    def __getattr__(self, item):
        data = super().__getattribute__("data")
        if item in data:
            return data[item]
        labels = super().__getattribute__("data_labels")
        if item in labels:
            return labels[item].default
        raise AttributeError(item)

    def __setattr__(self, key, value):
        if key in self.data_labels:
            self.data[key] = value
            return
        super().__setattr__(key, value)

    def set(self, key, value, is_api=False, run_callbacks=True):
        """As options.py:144-171: compared with what ``data`` holds (not the default), so a value equal to
        the default is written into ``data``; a raising onchange is reported and the old value put back."""
        from modules import errors

        oldval = self.data.get(key, None)
        if oldval == value:
            return False
        option = self.data_labels[key]
        if option.do_not_save:
            return False
        if is_api and option.restrict_api:
            return False
        setattr(self, key, value)
        if run_callbacks and option.onchange is not None:
            try:
                option.onchange()
            except Exception as e:
                errors.display(e, f"changing setting {key} to {value}")
                setattr(self, key, oldval)
                return False
        return True

    def save(self, filename):
        """As options.py:182-186: ``data`` as it is, whatever a job has put there."""
        from modules import shared

        assert not shared.cmd_opts.freeze_settings, "saving settings is disabled"
        with open(filename, "w", encoding="utf8") as file:
            json.dump(self.data, file, indent=4, ensure_ascii=False)

    def load(self, filename):
        """As options.py:197-202 (without the migrations): ``data`` becomes the file's content."""
        try:
            with open(filename, "r", encoding="utf8") as file:
                self.data = json.load(file)
        except FileNotFoundError:
            self.data = {}

    def get_default(self, key):
        info = self.data_labels.get(key)
        return None if info is None else info.default

    def add_option(self, key, info):
        self.data_labels[key] = info
