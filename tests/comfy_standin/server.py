"""Stand-in of ComfyUI's server.PromptServer: the progress-text channel nodes can write to."""


class PromptServer:
    instance = None  # ComfyUI sets this when the web server starts

    def __init__(self):
        PromptServer.instance = self
        self.texts = []

    def send_progress_text(self, text, node_id, sid=None):
        self.texts.append((node_id, text))
