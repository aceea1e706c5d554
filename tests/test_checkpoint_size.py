"""Every model's checkpoint is its weights, the optimiser's state and a little metadata: its size is
bounded by the parameter count (plus the autoencoders' compact copy of a few test images), never by
the size of the dataset (a stored view of a split used to drag the whole split's storage along)."""

from __future__ import annotations

import math

import pytest
import torch

SMALL = {  # small nets, so that a 2,000-image test split (1.6 MB) would dominate a leaky checkpoint
    "ae": ("model.hidden_dims=[16]", "model.latent_dim=4"),
    "sparse_ae": ("model.hidden_dims=[]", "model.latent_dim=16"),
    "dae": ("model.hidden_dims=[16]", "model.latent_dim=4"),
    "cae": ("model.hidden_dims=[]", "model.latent_dim=8"),
    "stacked_ae": ("model.hidden_dims=[16]", "model.latent_dim=8", "model.pretrain=false"),
    "vae": ("model.hidden_dims=[16]", "model.latent_dim=2"),
    "gan": ("model.g_dims=[16]", "model.d_dims=[16]", "model.latent_dim=8"),
    "dcgan": ("model.g_dims=[8,4]", "model.d_dims=[4,8]", "model.latent_dim=8"),
    "cgan": ("model.g_dims=[16]", "model.d_dims=[16]", "model.latent_dim=8"),
    "lenet": (),
    "lstm": ("model.hidden_size=16",),
    "rbm": ("model.n_hidden=16",),
    "rbm_cf": ("model.n_hidden=16", "dataset=synthetic_ratings", "dataset.n_items=50"),
}
STORED = (
    256  # test images an autoencoder keeps (uint8) so that sample_grid works from its checkpoint
)


def checkpoint_of(name: str, overrides, path) -> tuple[int, int, int]:
    """(checkpoint bytes, weight and buffer bytes, bytes of one stored image) after one step."""
    import pytorch_lightning as pl
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate

    GlobalHydra.instance().clear()
    images = "dataset=synthetic_ratings" not in overrides
    data = ["dataset=synthetic", "dataset.n_test=2000"] if images else []
    with initialize_config_module("nnlab.configs", version_base="1.3"):
        cfg = compose("train", [f"model={name}", *data, *overrides])
    datamodule = instantiate(cfg.dataset, data_dir="data", seed=0)
    model = instantiate(cfg.model, _recursive_=False, _convert_="all")
    trainer = pl.Trainer(
        max_steps=1,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(model, datamodule=datamodule)
    trainer.save_checkpoint(path)
    state = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return path.stat().st_size, state, math.prod(cfg.dataset.get("shape") or [0])


@pytest.mark.parametrize("name", SMALL)
def test_checkpoint_size_is_bounded_by_the_parameters(tmp_path, name):
    size, state, image = checkpoint_of(name, SMALL[name], tmp_path / "last.ckpt")
    # weights and buffers, Adam's two moments of every weight, 64 kB of metadata, the stash
    bound = 3 * state + 64_000 + STORED * image
    assert size <= bound, (name, size, state)
    if name in ("ae", "vae"):  # the stash is a compact uint8 copy that sample_grid reads back
        stored = torch.load(tmp_path / "last.ckpt", weights_only=True)["nnlab_test_images"]
        assert stored["images"].dtype == torch.uint8 and len(stored["images"]) == STORED
        assert stored["images"].untyped_storage().nbytes() == STORED * image
