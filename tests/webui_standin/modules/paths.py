"""modules.paths: where the WebUI keeps things. Tests point models_path at a temporary folder."""
import os
import tempfile

script_path = os.path.join(tempfile.gettempdir(), "webui-standin")
data_path = script_path
models_path = os.path.join(script_path, "models")
