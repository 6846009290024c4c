"""spo-studio's AUTOMATIC1111 / Forge extension: glue over `trainer/` only.

Entry points A1111 loads: `scripts/spo_studio.py` (at the repository root for "Install from
URL", or in this folder when only this folder is copied or linked into `extensions/`), and
`preload.py` (the `--spo-models-dir` option). `script.py` holds the always-visible "SPO"
script; `settings.py`, `spm_files.py`, `guided.py` and `scorer_tab.py` hold the host-free parts.
Plugin code imports the library as `spo_studio`, never as `trainer` (the rule and why: _library.py);
A1111 loads this package as `spo_studio_webui`.
"""
from ._library import ensure_library

ensure_library()  # `spo_studio` = the checkout's trainer/ beside this folder, if any (else the installed one)
