"""Stand-in of modules/ui_components.py: InputAccordion, a checkbox shown as an accordion."""

import gradio as gr


class InputAccordion(gr.Checkbox):
    def __init__(self, value, **kwargs):
        self.accordion_label = kwargs.pop("label", "")
        super().__init__(value=value, label=self.accordion_label, visible=False, elem_id=kwargs.get("elem_id"))
        self.accordion = gr.Accordion(self.accordion_label, open=kwargs.get("open", value),
                                      elem_id=f"{kwargs.get('elem_id')}-accordion")

    def __enter__(self):
        self.accordion.__enter__()
        return self

    def __exit__(self, *args):
        self.accordion.__exit__(*args)

    def get_block_name(self):
        return "checkbox"


class ToolButton(gr.Button):
    def get_block_name(self):
        return "button"
