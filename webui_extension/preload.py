"""A1111 runs `preload(parser)` of every extension before it parses the command line."""


def preload(parser):
    """Add `--spo-models-dir` (default: `models/spo`): the folder of step-aware preference models."""
    if any("--spo-models-dir" in a.option_strings for a in parser._actions):
        return  # installed twice (the whole repository and webui_extension/): one option is enough
    parser.add_argument(
        "--spo-models-dir",
        type=str,
        default=None,
        help="folder of SPO step-aware preference models (SPM files); default: models/spo",
    )
