"""modules.rng: one seeded generator per image, so an image is the same alone or in a batch."""
import torch


class ImageRNG:
    def __init__(self, shape, seeds, subseeds=None, subseed_strength=0.0, seed_resize_from_h=0, seed_resize_from_w=0):
        self.shape = tuple(map(int, shape))
        self.seeds = seeds
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]

    def next(self):
        """Tensor[B, *shape]: the next draw of every image's own generator (the first is x_T)."""
        return torch.stack([torch.randn(self.shape, generator=g) for g in self.generators])
