"""The RBM family: the CD-1 update and the free energy against hand computations, the MovieLens
readers on tiny files in both formats, and debug=fast runs of rbm and rbm_cf."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from conftest import event_tags, read_metrics, run_train

from nnlab.data.ratings import RatingsDataModule, read_ratings_file
from nnlab.errors import ConfigError, DataError
from nnlab.models.rbm import RBM, RBMCF

W0 = [[0.5, -1.0], [2.0, 0.25], [-0.75, 1.5]]  # 3 visible x 2 hidden
B0, C0 = [0.1, -0.2, 0.3], [-0.5, 0.4]


def tiny_rbm(**kwargs) -> RBM:
    rbm = RBM("rbm", input_shape=(1, 1, 3), n_hidden=2, **kwargs)
    rbm.W.data = torch.tensor(W0)
    rbm.b.data, rbm.c.data = torch.tensor(B0), torch.tensor(C0)
    return rbm


def sig(x):
    return 1 / (1 + math.exp(-x))


def test_cd1_update_matches_hand_computation():
    lr, wd = 0.1, 0.01
    rbm = tiny_rbm(cd_k=1, weight_decay=wd)
    v0 = [[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]
    # the same uniforms the model draws, in its order: hidden states, then visible states, per step
    g = torch.Generator().manual_seed(3)
    u_h, u_v = torch.rand(2, 2, generator=g).tolist(), torch.rand(2, 3, generator=g).tolist()

    def p_h(v):
        return [sig(C0[j] + sum(v[i] * W0[i][j] for i in range(3))) for j in range(2)]

    dW, db, dc, changed = [[0.0] * 2 for _ in range(3)], [0.0] * 3, [0.0] * 2, False
    for n, v in enumerate(v0):
        ph0 = p_h(v)
        h = [1.0 if u_h[n][j] < ph0[j] else 0.0 for j in range(2)]
        pv = [sig(B0[i] + sum(h[j] * W0[i][j] for j in range(2))) for i in range(3)]
        v1 = [1.0 if u_v[n][i] < pv[i] else 0.0 for i in range(3)]
        changed |= v1 != v
        ph1 = p_h(v1)
        for i in range(3):
            db[i] += (v[i] - v1[i]) / 2
            for j in range(2):
                dW[i][j] += (v[i] * ph0[j] - v1[i] * ph1[j]) / 2
        for j in range(2):
            dc[j] += (ph0[j] - ph1[j]) / 2
    assert changed, "pick a seed whose Gibbs step changes v, or the negative phase is not tested"

    stats, _ = rbm.cd_gradient(torch.tensor(v0), generator=torch.Generator().manual_seed(3))
    assert torch.allclose(stats["W"], torch.tensor(dW), atol=1e-6)
    assert torch.allclose(stats["b"], torch.tensor(db), atol=1e-6)
    assert torch.allclose(stats["c"], torch.tensor(dc), atol=1e-6)

    # the update: one SGD step on -(CD statistic) + weight decay on W
    opt = torch.optim.SGD(rbm.parameters(), lr=lr, momentum=0.9)
    rbm.set_gradients(stats)
    opt.step()
    want_W = [[W0[i][j] + lr * (dW[i][j] - wd * W0[i][j]) for j in range(2)] for i in range(3)]
    assert torch.allclose(rbm.W.data, torch.tensor(want_W), atol=1e-6)
    assert torch.allclose(
        rbm.b.data, torch.tensor([B0[i] + lr * db[i] for i in range(3)]), atol=1e-6
    )
    assert torch.allclose(
        rbm.c.data, torch.tensor([C0[j] + lr * dc[j] for j in range(2)]), atol=1e-6
    )


def test_weight_decay_l2_and_l1_on_weights_only():
    rbm = tiny_rbm(weight_decay=0.01, l1_weight_decay=0.1)
    zero = {"W": torch.zeros(3, 2), "b": torch.zeros(3), "c": torch.zeros(2)}
    rbm.set_gradients(zero)
    W = torch.tensor(W0)
    assert torch.allclose(rbm.W.grad, 0.01 * W + 0.1 * W.sign())
    assert not rbm.b.grad.any() and not rbm.c.grad.any()


def test_free_energy_is_minus_log_sum_over_hidden_states():
    rbm = tiny_rbm()
    W, b, c = torch.tensor(W0), torch.tensor(B0), torch.tensor(C0)
    for v in itertools.product([0.0, 1.0], repeat=3):
        v = torch.tensor(v)
        energies = [
            -(v @ b) - (torch.tensor(h) @ c) - v @ W @ torch.tensor(h)
            for h in itertools.product([0.0, 1.0], repeat=2)
        ]
        log_z_v = torch.logsumexp(torch.stack(energies).neg(), 0)
        assert torch.allclose(rbm.free_energy(v[None])[0], -log_z_v, atol=1e-5)


def test_softmax_units_and_expected_rating():
    model = RBMCF("rbm_cf", n_items=4, n_hidden=3, levels=[1, 2, 3, 4, 5])
    ratings = torch.tensor([[0, 5, 1, 0]], dtype=torch.uint8)
    v, mask = model.visible_data((ratings,))
    assert v.shape == (1, 20) and v.sum() == 2 and v[0, 5 + 4] == 1 and v[0, 10 + 0] == 1
    p = model.visible_probs(model.hidden_probs(v), mask).view(1, 4, 5)
    assert torch.allclose(
        p.sum(-1), mask
    )  # a distribution over K levels for rated items, nothing elsewhere
    sample = model.sample_visible(p.flatten(1)).view(1, 4, 5)
    assert torch.equal(sample.sum(-1), mask)
    logits = (model.hidden_probs(v) @ model.W.T + model.b).view(1, 4, 5)
    assert torch.allclose(
        model.predict(ratings), (logits.softmax(-1) * torch.arange(1.0, 6.0)).sum(-1)
    )


def test_sample_grid_any_shape():
    for shape in [(1, 28, 28), (3, 32, 32)]:
        rbm = RBM("rbm", input_shape=shape, n_hidden=8, gibbs_steps=3)
        img = rbm.sample_grid(n=4)
        assert img.shape[0] == 3 and img.min() >= 0 and img.max() <= 1
        assert rbm.sample_grid(n=4, interpolate=True).shape[0] == 3
        with pytest.raises(ConfigError):
            rbm.sample_grid(n=4, label=1)


RATINGS = [
    (1, 10, 5),
    (1, 20, 3),
    (1, 30, 4),
    (1, 40, 1),
    (1, 50, 2),
    (2, 10, 4),
    (2, 30, 2),
    (7, 20, 5),
    (7, 40, 4),
    (7, 50, 1),
    (7, 60, 3),
    (9, 60, 2),
] + [(3, i, 1 + (i // 10) % 5) for i in range(10, 70, 10)]


def write_u_data(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "u.data").write_text(
        "".join(f"{u}\t{i}\t{r}\t88125{n:04d}\n" for n, (u, i, r) in enumerate(RATINGS))
    )
    return folder / "u.data"


def write_ratings_csv(folder):
    folder.mkdir(parents=True, exist_ok=True)
    rows = [
        f"{u},{i},{r - 0.5 if n % 3 == 0 else float(r)},1112486027"
        for n, (u, i, r) in enumerate(RATINGS)
    ]
    (folder / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n" + "\n".join(rows) + "\n"
    )
    return folder / "ratings.csv"


@pytest.mark.parametrize("fmt", ["u.data", "ratings.csv"])
def test_movielens_readers_and_per_user_split(tmp_path, fmt):
    writer = write_u_data if fmt == "u.data" else write_ratings_csv
    path = writer(tmp_path / "ml" / "ml-100k")  # found in a sub-folder of data_dir
    users, items, ratings = read_ratings_file(path)
    assert len(users) == len(RATINGS) and users[0] == 1 and items[1] == 20
    assert ratings[1] == 3 and ratings[0] == (4.5 if fmt == "ratings.csv" else 5)

    dm = RatingsDataModule(
        "movielens",
        format="movielens",
        data_dir=str(tmp_path / "ml"),
        val_fraction=0.2,
        test_fraction=0.2,
        batch_size=2,
        eval_batch_size=3,
    )
    dm.setup()
    assert (dm.n_users, dm.n_items) == (5, 6)
    assert sum(len(dm.ratings(s)) for s in ("train", "val", "test")) == len(RATINGS)
    assert len(dm.ratings("test")) > 0 and len(dm.ratings("val")) > 0
    # every user keeps a training rating; a user's held-out ratings are not among its inputs
    inputs = torch.cat([x for x, _ in dm.val_dataloader()])
    held = torch.cat([y for _, y in dm.test_dataloader()])
    assert inputs.shape == (5, 6) and ((inputs > 0).sum(1) > 0).all()
    assert not ((inputs > 0) & (held > 0)).any()
    # user 3 rated every item: the dense rows carry the levels (half stars go to the lower level on
    # a tie)
    row = (
        inputs[2].long() + held[2].long() + torch.cat([y for _, y in dm.val_dataloader()])[2].long()
    )
    want = [2, 3, 4, 5, 1, 2] if fmt == "u.data" else [1, 3, 4, 4, 1, 2]
    assert row.tolist() == want
    # seeded: the same split again; another split_seed, another split
    again = RatingsDataModule(
        "movielens", data_dir=str(tmp_path / "ml"), val_fraction=0.2, test_fraction=0.2
    )
    again.setup()
    assert torch.equal(again.ratings("test").items, dm.ratings("test").items)
    assert len(list(dm.train_dataloader())) == 2  # 5 users, batches of 2, last one dropped


def test_movielens_missing_files_say_where_to_get_them(tmp_path):
    with pytest.raises(DataError, match="u.data or ratings.csv"):
        RatingsDataModule("movielens", data_dir=str(tmp_path)).prepare_data()


def test_synthetic_ratings_are_low_rank_levels():
    dm = RatingsDataModule(
        "synthetic_ratings", format="synthetic", n_users=50, n_items=40, density=0.3
    )
    dm.setup()
    x, _ = next(iter(dm.train_dataloader()))
    assert x.max() <= 5 and len(dm.ratings("test")) > 0
    assert dm.item_means.shape == (40,) and 1 <= dm.item_means.min() <= dm.item_means.max() <= 5


def test_rbm_fast_run(tmp_path):
    run = run_train(
        tmp_path,
        "model=rbm",
        "dataset=synthetic",
        "debug=fast",
        "accelerator=cpu",
        "model.gibbs_steps=5",
        "model.n_hidden=32",
        "model.n_log_images=16",
    )
    metrics = read_metrics(run)
    assert metrics["status"] == "finished"
    m = metrics["metrics"]
    for key in (
        "train/recon_error",
        "val/recon_error",
        "val/free_energy_gap",
        "val/pseudo_ll",
        "test/pseudo_ll",
    ):
        assert math.isfinite(m[key]), key
    assert 0 < m["val/recon_error"] < 1 and m["val/pseudo_ll"] < 0
    assert metrics["best_checkpoint"]
    images = event_tags(run).Tags()["images"]
    assert {"vis/samples", "vis/filters", "vis/reconstructions"} <= set(images)


def test_rbm_cf_fast_run(tmp_path):
    run = run_train(
        tmp_path,
        "model=rbm_cf",
        "dataset=synthetic_ratings",
        "debug=fast",
        "accelerator=cpu",
        "dataset.n_users=80",
        "dataset.n_items=50",
        "model.n_hidden=16",
    )
    metrics = read_metrics(run)
    assert metrics["status"] == "finished"
    m = metrics["metrics"]
    assert (
        0 < m["test/rmse"] < 4 and 0 < m["test/rmse_item_mean"] < 4 and math.isfinite(m["val/rmse"])
    )
    ckpt = torch.load(metrics["best_checkpoint"], weights_only=True)
    assert ckpt["hyper_parameters"]["n_items"] == 50  # a checkpoint rebuilds the model's shapes


def test_rbm_cf_rmse_is_pooled_over_batches_and_ranks():
    """The RMSE of all held-out ratings (sum the squared errors and counts, then the root), not a
    mean of per-batch (or per-rank) RMSEs; its states are summed across DDP ranks."""
    rmse = RBMCF("rbm_cf", n_items=2).rmse["val_rbm"]
    rmse.update(torch.tensor([1.0]), torch.tensor([3.0]))  # one rating off by 2
    rmse.update(torch.zeros(8), torch.zeros(8))  # eight exact ratings
    assert float(rmse.compute()) == pytest.approx(math.sqrt(4 / 9))  # not (2 + 0) / 2
    assert all(rmse._reductions[k].__name__ == "dim_zero_sum" for k in rmse._defaults)
