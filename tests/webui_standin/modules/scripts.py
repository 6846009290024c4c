"""modules.scripts: Script base class, script discovery, and the runner that calls always-on
scripts' hooks with their slice `p.script_args[args_from:args_to]`.

As in A1111: `load_scripts()` clears script callbacks, then imports every `scripts/*.py` of
each extension folder with the folder prepended to sys.path only while the file loads, and
registers every Script subclass found in the module's namespace.
"""
import inspect
import os
import re
import sys
from collections import namedtuple

from modules import errors, script_callbacks, script_loading

AlwaysVisible = object()


class PostprocessBatchListArgs:
    def __init__(self, images):
        self.images = images


class PostprocessImageArgs:
    def __init__(self, image):
        self.image = image


class Script:
    name = None
    filename = None
    args_from = None
    args_to = None
    alwayson = False
    is_txt2img = False
    is_img2img = False
    tabname = None
    infotext_fields = None
    paste_field_names = None
    controls = None

    def title(self):
        raise NotImplementedError()

    def ui(self, is_img2img):
        pass

    def show(self, is_img2img):
        return True

    def setup(self, p, *args):
        pass

    def before_process(self, p, *args):
        pass

    def process(self, p, *args):
        pass

    def before_process_batch(self, p, *args, **kwargs):
        pass

    def process_batch(self, p, *args, **kwargs):
        pass

    def process_before_every_sampling(self, p, *args, **kwargs):
        pass

    def postprocess_batch(self, p, *args, **kwargs):
        pass

    def postprocess_batch_list(self, p, pp, *args, **kwargs):
        pass

    def postprocess_image(self, p, pp, *args):
        pass

    def postprocess(self, p, processed, *args):
        pass

    def elem_id(self, item_id):
        need_tabname = self.show(True) == self.show(False)
        tabkind = "img2img" if self.is_img2img else "txt2img"
        tabname = f"{tabkind}_" if need_tabname else ""
        title = re.sub(r"[^a-z_0-9]", "", re.sub(r"\s", "_", self.title().lower()))
        return f"script_{tabname}{title}_{item_id}"


ScriptClassData = namedtuple("ScriptClassData", ["script_class", "path", "basedir", "module"])
scripts_data: list = []


def load_scripts(extensions_dir):
    """Import `<extension>/scripts/*.py` for every folder in extensions_dir."""
    scripts_data.clear()
    script_callbacks.clear_callbacks()
    for ext in sorted(os.listdir(extensions_dir)):
        basedir = os.path.join(extensions_dir, ext)
        scriptdir = os.path.join(basedir, "scripts")
        if not os.path.isdir(scriptdir):
            continue
        for filename in sorted(os.listdir(scriptdir)):
            path = os.path.join(scriptdir, filename)
            if not (filename.endswith(".py") and os.path.isfile(path)):
                continue
            syspath = sys.path
            try:
                sys.path = [basedir] + sys.path
                module = script_loading.load_module(path)
                for obj in module.__dict__.values():
                    if inspect.isclass(obj) and issubclass(obj, Script):
                        scripts_data.append(ScriptClassData(obj, path, basedir, module))
            except Exception:
                errors.report(f"Error loading script: {filename}", exc_info=True)
            finally:
                sys.path = syspath


class ScriptRunner:
    def __init__(self):
        self.scripts = []
        self.alwayson_scripts = []
        self.inputs = [None]  # position 0: the selectable-script dropdown
        self.infotext_fields = []
        self.paste_field_names = []

    def initialize_scripts(self, is_img2img):
        for data in scripts_data:
            script = data.script_class()
            script.filename = data.path
            script.is_txt2img, script.is_img2img = not is_img2img, is_img2img
            script.tabname = "img2img" if is_img2img else "txt2img"
            if script.show(script.is_img2img) == AlwaysVisible:
                script.alwayson = True
                self.scripts.append(script)
                self.alwayson_scripts.append(script)

    def setup_ui(self):
        for script in self.alwayson_scripts:
            script.args_from = script.args_to = len(self.inputs)
            controls = script.ui(script.is_img2img)
            script.controls = controls
            if controls is None:
                continue
            script.name = script.title().lower()
            if script.infotext_fields is not None:
                self.infotext_fields += script.infotext_fields
            if script.paste_field_names is not None:
                self.paste_field_names += script.paste_field_names
            self.inputs += controls
            script.args_to = len(self.inputs)

    def default_args(self):
        """What the UI would submit untouched (the API's starting point)."""
        return [None] + [c.value for c in self.inputs[1:]]

    def api_args(self, alwayson_scripts: dict):
        """modules/api/api.py init_script_args: defaults, then each script's given args by position."""
        args = self.default_args()
        for name, value in alwayson_scripts.items():
            script = next((s for s in self.scripts if s.title().lower() == name.lower()), None)
            if script is None:
                raise KeyError(f"always on script {name} not found")
            given = value.get("args", [])
            for i in range(min(script.args_to - script.args_from, len(given))):
                args[script.args_from + i] = given[i]
        return args

    def _call(self, method, p, *extra, **kwargs):
        for script in self.alwayson_scripts:
            try:
                getattr(script, method)(p, *extra, *p.script_args[script.args_from:script.args_to], **kwargs)
            except Exception:
                errors.report(f"Error running {method}: {script.filename}", exc_info=True)

    def before_process(self, p):
        self._call("before_process", p)

    def process(self, p):
        self._call("process", p)

    def before_process_batch(self, p, **kwargs):
        self._call("before_process_batch", p, **kwargs)

    def process_batch(self, p, **kwargs):
        self._call("process_batch", p, **kwargs)

    def process_before_every_sampling(self, p, **kwargs):
        self._call("process_before_every_sampling", p, **kwargs)

    def postprocess_batch(self, p, images, **kwargs):
        self._call("postprocess_batch", p, images=images, **kwargs)

    def postprocess_batch_list(self, p, pp, **kwargs):
        self._call("postprocess_batch_list", p, pp, **kwargs)

    def postprocess_image(self, p, pp):
        self._call("postprocess_image", p, pp)

    def postprocess(self, p, processed):
        self._call("postprocess", p, processed)
