"""modules.shared: command-line options, settings, the loaded model, job state."""
import argparse

cmd_opts = argparse.Namespace(spo_models_dir=None)


class Options:
    """Settings with attribute access, like A1111's `opts` (only what processing reads)."""

    def __init__(self):
        self.data = {"enable_pnginfo": True, "eta_noise_seed_delta": 0, "randn_source": "CPU"}

    def __getattr__(self, name):
        try:
            return self.__dict__["data"][name]
        except KeyError:
            raise AttributeError(name) from None


opts = Options()
sd_model = None


class State:
    interrupted = False
    skipped = False
    sampling_step = 0
    sampling_steps = 0


state = State()
