"""modules.script_callbacks: named callback lists; load_scripts() clears them before scripts run."""
from collections import namedtuple

ScriptCallback = namedtuple("ScriptCallback", ["script", "callback"])
callback_map = {"callbacks_ui_tabs": [], "callbacks_ui_settings": [], "callbacks_infotext_pasted": []}


def clear_callbacks():
    for callbacks in callback_map.values():
        callbacks.clear()


def on_ui_tabs(callback, *, name=None):
    """callback() -> None or [(gradio component, tab title, elem_id), ...]"""
    callback_map["callbacks_ui_tabs"].append(ScriptCallback(name, callback))


def on_ui_settings(callback, *, name=None):
    callback_map["callbacks_ui_settings"].append(ScriptCallback(name, callback))


def on_infotext_pasted(callback, *, name=None):
    callback_map["callbacks_infotext_pasted"].append(ScriptCallback(name, callback))


def ui_tabs_callback():
    res = []
    for c in callback_map["callbacks_ui_tabs"]:
        res += c.callback() or []
    return res
