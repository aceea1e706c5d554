"""The VAE's own figures: latent walks between test images, the 2-D manifold and the attribute
vector (Kingma & Welling 2014, figure 4; White 2016, "Sampling generative networks")."""

from __future__ import annotations

import torch

from nnlab import viz
from nnlab.figures import FigureCallback
from nnlab.models.vae import VAE


class Interpolation(FigureCallback):
    """`interpolation`: rows of test image | walk between the two codes | test image."""

    tag = "interpolation"

    def applies(self, model) -> bool:
        return isinstance(model, VAE)

    def draw(self, model, data):
        return model.sample_grid(model.interp_steps * 4, interpolate=True)


class Manifold(FigureCallback):
    """`manifold`: the decoder over a grid of the latent plane (latent_dim == 2)."""

    tag = "manifold"

    def applies(self, model) -> bool:
        return isinstance(model, VAE) and model.latent_dim == 2

    def draw(self, model, data):
        return viz.grid(model.manifold(), nrow=model.manifold_size)


class AttributeEdit(FigureCallback):
    """`attribute`: test images of the source class, each row: image | decode(mu + alpha *
    (mean code of the target class - mean code of the source class)) for every alpha
    (model.attribute_source, attribute_target, attribute_alphas; class means over the validation
    split). Nothing when either class is absent from the data."""

    tag = "attribute"

    def applies(self, model) -> bool:
        return isinstance(model, VAE)

    def draw(self, model, data):
        src, tgt = model.attribute
        means = class_mean_codes(model, data, "val")
        x, _ = data.images("test", model.n_log_images // 2, label=src)
        if src not in means or tgt not in means or len(x) == 0:
            return None
        alphas = torch.tensor(model.attribute_alphas, device=x.device).view(1, -1, 1)
        z = model.encode(x).unsqueeze(1) + alphas * (means[tgt] - means[src])  # (B, alphas, D)
        edited = model.decode_images(z.flatten(0, 1)).unflatten(0, (len(x), alphas.shape[1]))
        image = viz.grid(torch.cat([x.unsqueeze(1), edited], 1).flatten(0, 1), nrow=1 + len(z[0]))
        names = [str(c) for c in (data.classes or range(max(src, tgt) + 1))]
        cols = ["input", *(f"a={a:g}" for a in model.attribute_alphas)]
        source, target = names[src], names[tgt]
        title = f"{source} -> {target}: z + a * (mean z of {target} - mean z of {source})"
        return viz.labelled(image, x.shape[-2:], cols=cols, title=title)


def class_mean_codes(model: VAE, data, split: str, max_images: int = 10000) -> dict:
    """{class: mean mu-code} over (the first max_images of) a split."""
    images, labels = data.images(split, max_images)
    codes = torch.cat([model.encode(chunk) for chunk in images.split(1000)])
    return {int(c): codes[labels == c].mean(0) for c in labels.unique()}
