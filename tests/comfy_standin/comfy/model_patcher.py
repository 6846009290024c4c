"""Stand-in of comfy.model_patcher.ModelPatcher: clone() and add_patches() as LoRA loading uses them."""
import copy


class ModelPatcher:
    def __init__(self, model):
        self.model = model
        self.patches = {}

    def clone(self):
        n = ModelPatcher(self.model)
        n.patches = {k: v[:] for k, v in self.patches.items()}
        return n

    def model_state_dict(self):
        return self.model.state_dict()

    def add_patches(self, patches, strength_patch=1.0, strength_model=1.0):
        p = set()
        model_sd = self.model.state_dict()
        for k in patches:
            key = k if isinstance(k, str) else k[0]
            if key in model_sd:
                p.add(k)
                current = self.patches.get(key, [])
                current.append((strength_patch, patches[k], strength_model, None, None))
                self.patches[key] = current
        return list(p)

    def patched_weight(self, key):
        """Test helper (not ComfyUI API): the weight with its "lora" patches applied, as ComfyUI computes it."""
        w = copy.deepcopy(self.model.state_dict()[key]).float()
        for strength, (kind, (up, down, alpha, _mid, _dora)), strength_model, _o, _f in self.patches.get(key, []):
            assert kind == "lora"
            scale = (alpha / down.shape[0]) if alpha is not None else 1.0
            delta = up.flatten(1).float() @ down.flatten(1).float()
            w = w * strength_model + strength * scale * delta.reshape(w.shape)
        return w
