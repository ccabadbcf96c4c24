"""Post-hoc EMA (Karras et al. 2024, sec. 3 and appendix C): σ_rel ↔ γ, the power-function EMA against its
profile, the profiles' inner products against quadrature, a reconstructed EMA against one tracked directly
and against ema-pytorch's; then a tiny run that keeps snapshots, resumes exactly, and samples a post-hoc
EMA from the command line."""

import json
import shutil

import numpy as np
import pytest
import torch
from scipy import integrate

from ddpm import run, training
from ddpm.cli import main
from ddpm.config import SIGMA_REL_MAX, apply_overrides
from ddpm.engine import checkpoint as ckpt
from ddpm.engine import posthoc_ema
from ddpm.engine.posthoc_ema import (
    PowerEMA,
    gamma_from_sigma_rel,
    posthoc_coefficients,
    power_beta,
    power_profile,
    profile_inner_product,
    sigma_rel_from_gamma,
)

# --------------------------------------------------------------------------- σ_rel ↔ γ (sec. 3.1)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 6.94, 16.97, 100.0])
def test_sigma_rel_is_the_profiles_standard_deviation_over_t(gamma):
    """σ_rel(γ) = (γ+1)^½ (γ+2)^−1 (γ+3)^−½ is the standard deviation of p_t(τ) divided by t, at any t."""
    t = 37.0
    mass, mean, square = (
        integrate.quad(lambda tau, k=k: tau**k * power_profile(tau, t, gamma), 0, t, epsabs=0, epsrel=1e-12)[
            0
        ]
        for k in (0, 1, 2)
    )
    assert mass == pytest.approx(1.0, abs=1e-10)
    assert np.sqrt(square - mean**2) / t == pytest.approx(float(sigma_rel_from_gamma(gamma)), rel=1e-9)
    paper = np.sqrt(gamma + 1) / (gamma + 2) / np.sqrt(gamma + 3)  # the formula as the paper prints it
    assert float(sigma_rel_from_gamma(gamma)) == pytest.approx(paper, rel=1e-14)


def test_gamma_and_sigma_rel_round_trip():
    for sigma_rel in [1e-3, 0.01, 0.05, 0.10, 0.15, 0.2, 0.28, SIGMA_REL_MAX]:
        assert float(sigma_rel_from_gamma(gamma_from_sigma_rel(sigma_rel))) == pytest.approx(
            sigma_rel, rel=1e-12
        )
    for gamma in [0.0, 0.1, 1.0, 6.94, 50.0, 1000.0]:
        assert gamma_from_sigma_rel(float(sigma_rel_from_gamma(gamma))) == pytest.approx(
            gamma, rel=1e-9, abs=1e-12
        )
    assert gamma_from_sigma_rel(SIGMA_REL_MAX) == 0.0  # the running mean of all weights


@pytest.mark.parametrize("bad", [0.0, -0.1, 0.29, 1.0])
def test_gamma_refuses_a_length_no_power_profile_has(bad):
    with pytest.raises(ValueError, match="σ_rel must lie in"):
        gamma_from_sigma_rel(bad)


# --------------------------------------------------------------------------- the EMA and its profile


@pytest.mark.parametrize("gamma", [0.0, 1.83, 6.94])
def test_iterated_power_ema_gives_each_step_the_profiles_mass(gamma):
    """θ̂_t = β_t θ̂_{t−1} + (1 − β_t) θ_t with β_t = (1 − 1/t)^(γ+1), iterated from any θ̂_0, gives θ_i the
    weight (i^(γ+1) − (i−1)^(γ+1)) / t^(γ+1): the integral of p_t over (i−1, i]."""
    t = 50
    model = torch.nn.Linear(t, 1, bias=False).double()
    ema = PowerEMA(model, [float(sigma_rel_from_gamma(gamma))])
    with torch.no_grad():
        ema.models[0].weight.fill_(123.0)  # the initialisation: β_1 = 0 forgets it
        for step in range(1, t + 1):
            model.weight.copy_(torch.nn.functional.one_hot(torch.tensor(step - 1), t).double()[None])
            ema.update(model, step)
    weights = ema.models[0].weight[0].numpy()
    i = np.arange(1, t + 1, dtype=np.float64)
    g = ema.gammas[0]
    assert np.allclose(weights, (i ** (g + 1) - (i - 1) ** (g + 1)) / t ** (g + 1), rtol=1e-12, atol=1e-15)
    for k in (1, t // 2, t):
        mass = integrate.quad(lambda tau: power_profile(tau, t, g), k - 1, k, epsrel=1e-12)[0]
        assert weights[k - 1] == pytest.approx(mass, rel=1e-9)
    assert weights.sum() == pytest.approx(1.0, abs=1e-12)


def test_power_beta_starts_from_nothing():
    assert power_beta(1, 6.94) == 0.0
    assert power_beta(2, 0.0) == 0.5  # γ = 0: the running mean weighs the two steps equally
    assert power_beta(10, 1.0) == pytest.approx(0.9**2)


@pytest.mark.parametrize(
    "t_a, gamma_a, t_b, gamma_b",
    [(100, 6.94, 100, 6.94), (60, 16.97, 100, 6.94), (100, 0.0, 40, 1.83), (7, 0.5, 3, 30.0)],
)
def test_profile_inner_product_matches_quadrature(t_a, gamma_a, t_b, gamma_b):
    """⟨p_a, p_b⟩ in closed form (appendix C, eq. 151) is the integral of the product, either way round."""
    quad = integrate.quad(
        lambda tau: power_profile(tau, t_a, gamma_a) * power_profile(tau, t_b, gamma_b),
        0,
        min(t_a, t_b),
        epsabs=0,
        epsrel=1e-12,
        limit=200,
    )[0]
    assert float(profile_inner_product(t_a, gamma_a, t_b, gamma_b)) == pytest.approx(quad, rel=1e-8)
    assert profile_inner_product(t_b, gamma_b, t_a, gamma_a) == pytest.approx(
        profile_inner_product(t_a, gamma_a, t_b, gamma_b), rel=1e-14
    )


def test_profile_inner_product_stays_finite_for_long_runs():
    """t^(γ+1) overflows float64 for t = 10⁶ and γ = 97 (σ_rel 0.01); the ratios do not."""
    value = profile_inner_product(1e6, 97.0, 5e5, 97.0)
    assert np.isfinite(value) and value > 0


# --------------------------------------------------------------------------- reconstruction


STORED = (0.05, 0.10)  # the paper's two EMA lengths
T, EVERY = 4000, 100  # 40 snapshots of each


def random_walk_run(targets, dtype=torch.float64):
    """A small tensor doing a Gaussian random walk for T steps, its power EMAs of σ_rel STORED snapshotted
    every EVERY steps, and power EMAs of σ_rel ``targets`` tracked directly: (θ_T, snapshots, steps,
    gammas, direct EMAs)."""
    generator = torch.Generator().manual_seed(0)
    model = torch.nn.Linear(40, 25, bias=False).to(dtype)
    stored = PowerEMA(model, STORED)
    direct = PowerEMA(model, targets)
    snapshots, steps, gammas = [], [], []
    for t in range(1, T + 1):
        with torch.no_grad():
            model.weight.add_(torch.randn(model.weight.shape, generator=generator, dtype=dtype))
        stored.update(model, t)
        direct.update(model, t)
        if t % EVERY == 0:
            for ema, gamma in zip(stored.models, stored.gammas):
                snapshots.append(ema.weight.detach().clone())
                steps.append(t)
                gammas.append(gamma)
    return model.weight.detach(), snapshots, steps, gammas, direct


def combine(coefficients, snapshots):
    return sum(float(x) * s for x, s in zip(coefficients, snapshots))


def test_reconstructed_ema_matches_one_tracked_directly():
    """σ_rel 0.03 (outside the stored pair), 0.07 (between) and 0.15 (outside), rebuilt at step T from
    snapshots of 0.05 and 0.10, against the power EMA of that σ_rel tracked through the same walk: equal
    within 0.2 % of the EMA's distance from the raw weights (a larger error in the profile, or a wrong
    coefficient anywhere above, shows up far beyond that)."""
    targets = (0.03, 0.07, 0.15)
    theta, snapshots, steps, gammas, direct = random_walk_run(targets)
    for sigma_rel, gamma, ema in zip(targets, direct.gammas, direct.models):
        x, profile_error = posthoc_coefficients(steps, gammas, T, gamma)
        assert profile_error < 0.01, sigma_rel
        scale = (ema.weight - theta).norm()
        assert (combine(x, snapshots) - ema.weight).norm() / scale < 2e-3, sigma_rel


def test_a_stored_profile_is_reproduced_exactly():
    theta, snapshots, steps, gammas, _ = random_walk_run(())
    x, profile_error = posthoc_coefficients(steps, gammas, T, gammas[-1])
    assert profile_error < 1e-6
    assert torch.allclose(combine(x, snapshots), snapshots[-1], rtol=0, atol=1e-6)


def test_weights_that_never_change_are_reproduced():
    """The coefficients sum to 1, so a constant is its own average, however poor the profile's match."""
    x, profile_error = posthoc_coefficients([100, 200], [6.94, 6.94], 200, 0.5)
    assert x.sum() == pytest.approx(1.0, abs=1e-12) and profile_error > 0.05


def test_reconstruction_agrees_with_ema_pytorch(tmp_path):
    """A differential test against lucidrains' ema-pytorch (``PostHocEMA``), fed the same random walk.

    Its γ and its least-squares weights (which it leaves unscaled: we scale them to sum to 1 as the paper's
    code does) agree with ours to rounding. Its EMAs differ a little: ``KarrasEMA`` takes
    β = (1 − 1/(n+1))^(γ+1) at its n-th update (the paper's β at t = n+1) and starts from the weights of
    the first update, so its synthesised EMA is ours within 0.1 % of the EMA's distance from the raw weights.
    """
    ema_pytorch = pytest.importorskip("ema_pytorch")
    from ema_pytorch.post_hoc_ema import sigma_rel_to_gamma, solve_weights

    for sigma_rel in (0.01, 0.05, 0.07, 0.10, 0.2, 0.28):
        assert gamma_from_sigma_rel(sigma_rel) == pytest.approx(sigma_rel_to_gamma(sigma_rel), rel=1e-12)

    target = 0.07
    generator = torch.Generator().manual_seed(0)
    model = torch.nn.Linear(40, 25, bias=False).double()
    theirs = ema_pytorch.PostHocEMA(
        model,
        sigma_rels=STORED,
        update_every=1,
        checkpoint_every_num_steps=EVERY,
        checkpoint_folder=str(tmp_path),
        checkpoint_dtype=torch.float64,
    )
    ours = PowerEMA(model, STORED)
    snapshots, steps, gammas = [], [], []
    for t in range(1, T + 1):
        with torch.no_grad():
            model.weight.add_(torch.randn(model.weight.shape, generator=generator, dtype=torch.float64))
        theirs.update()
        ours.update(model, t)
        if t % EVERY == 0:
            for ema, gamma in zip(ours.models, ours.gammas):
                snapshots.append(ema.weight.detach().clone())
                steps.append(t)
                gammas.append(gamma)
    gamma = gamma_from_sigma_rel(target)
    x, _ = posthoc_coefficients(steps, gammas, T, gamma)
    w = solve_weights(
        torch.tensor(steps), torch.tensor(gammas), torch.tensor([T]), torch.tensor([gamma])
    ).squeeze(-1)
    assert np.allclose(x, (w / w.sum()).numpy(), rtol=0, atol=1e-6)
    synthesised = theirs.synthesize_ema_model(sigma_rel=target).ema_model.weight.detach()
    scale = (synthesised - model.weight.detach()).norm()
    assert (combine(x, snapshots) - synthesised).norm() / scale < 1e-3


# --------------------------------------------------------------------------- a run that keeps snapshots

POSTHOC = ["train.posthoc_ema=[0.05,0.1]", "train.posthoc_every=4"]


def tiny_cfg(steps, extra=POSTHOC):
    from ddpm.presets import get_preset
    from tests.conftest import TINY

    cfg = apply_overrides(get_preset("spiral"), [*TINY, *extra])
    cfg.train.max_steps = steps
    return cfg


def quiet(*_):
    pass


def hashes(folder) -> dict[str, str]:
    """The SHA-256 of each safetensors file of a checkpoint or snapshot (state.json holds timings)."""
    lines = (line.split("  ") for line in (folder / ckpt.SUMS).read_text().splitlines())
    return {name: digest for digest, name in lines if name.endswith(".safetensors")}


def snapshot_hashes(run_dir) -> dict[str, dict[str, str]]:
    return {p.name: hashes(p) for p in ckpt.list_step_folders(posthoc_ema.snapshot_dir(run_dir))}


@pytest.fixture(scope="module")
def posthoc_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("posthoc") / "run"
    training.train(tiny_cfg(20), out, log=quiet)
    return out


def test_off_by_default_and_changes_nothing_else_when_on(posthoc_run, tmp_path):
    """Off, a run writes what it wrote before; on, it trains the same weights and EMA."""
    training.train(tiny_cfg(20, extra=()), tmp_path, log=quiet)
    latest = ckpt.latest_checkpoint(tmp_path)
    assert not posthoc_ema.snapshot_dir(tmp_path).exists()
    assert sorted(p.name for p in latest.iterdir()) == [
        "SHA256SUMS",
        "ema.safetensors",
        "model.safetensors",
        "optimizer.safetensors",
        "state.json",
    ]
    assert "posthoc_ema" not in ckpt.load_state(latest)
    on = hashes(ckpt.latest_checkpoint(posthoc_run))
    assert hashes(latest) == {
        name: on[name] for name in ("model.safetensors", "ema.safetensors", "optimizer.safetensors")
    }


def test_a_run_keeps_snapshots_and_its_power_emas(posthoc_run):
    """Snapshots every 4 steps and at the last; the checkpoint holds the running power EMAs, which are the
    last snapshot's."""
    snapshots = posthoc_ema.list_snapshots(posthoc_run)
    assert [s.step for s in snapshots] == [4, 8, 12, 16, 20]
    assert snapshots[0].sigma_rels == (0.05, 0.1)
    assert snapshots[0].gammas == (gamma_from_sigma_rel(0.05), gamma_from_sigma_rel(0.1))
    latest = ckpt.latest_checkpoint(posthoc_run)
    assert ckpt.load_state(latest)["posthoc_ema"] == [0.05, 0.1]
    in_checkpoint = hashes(latest)
    assert {k: in_checkpoint[k] for k in hashes(snapshots[-1].path)} == hashes(snapshots[-1].path)


def test_an_interrupted_run_resumes_bit_identically(posthoc_run, tmp_path, monkeypatch):
    """Stopped at step 13 (Ctrl-C), with a stale snapshot of step 16 left behind (as a run that crashed
    between a snapshot and its checkpoint would leave), and resumed: the same weights, EMA, power EMAs and
    snapshots as the uninterrupted run."""
    from ddpm.engine.trainer import Trainer

    original = Trainer.train_step

    def interrupted(self):
        loss = original(self)
        if self.step == 13:
            raise KeyboardInterrupt
        return loss

    out = tmp_path / "run"
    monkeypatch.setattr(Trainer, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        training.train(tiny_cfg(20), out, log=quiet)
    monkeypatch.setattr(Trainer, "train_step", original)
    assert ckpt.latest_checkpoint(out).name == "step-00000013"
    shutil.copytree(
        posthoc_ema.snapshot_dir(out) / "step-00000004", posthoc_ema.snapshot_dir(out) / "step-00000016"
    )
    training.train(tiny_cfg(20), out, log=quiet)
    assert hashes(ckpt.latest_checkpoint(out)) == hashes(ckpt.latest_checkpoint(posthoc_run))
    assert snapshot_hashes(out) == snapshot_hashes(posthoc_run)


def test_a_checkpoint_without_the_power_emas_is_refused(posthoc_run, tmp_path, capsys):
    """config.json edited to keep other power EMAs: they cannot start mid-run (one line, exit 2)."""
    out = tmp_path / "run"
    shutil.copytree(posthoc_run, out)
    cfg = json.loads((out / "config.json").read_text())
    cfg["train"]["posthoc_ema"] = [0.05, 0.2]
    (out / "config.json").write_text(json.dumps(cfg))
    message = refused(capsys, ["train", out / "config.json", "--out", out, "--max-steps", "24"])
    assert (
        "kept power EMAs of σ_rel [0.05, 0.1], but the config asks for train.posthoc_ema [0.05, 0.2]"
        in message
    )


def test_restart_removes_the_snapshots(posthoc_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(posthoc_run, out)
    training.train(tiny_cfg(6), out, restart=True, log=quiet)
    assert [s.step for s in posthoc_ema.list_snapshots(out)] == [4, 6]


def test_a_stored_length_is_rebuilt_as_its_last_snapshot(posthoc_run):
    loaded = run.load_run(posthoc_run, ema_sigma_rel=0.05)
    last = ckpt.load_tensors(
        posthoc_ema.snapshot_dir(posthoc_run) / "step-00000020" / "power-ema-0.safetensors"
    )
    assert loaded.step == 20 and loaded.posthoc.profile_error < 1e-6
    for name, value in loaded.model.state_dict().items():
        assert torch.allclose(value, last[name], rtol=0, atol=1e-6), name


def test_an_earlier_snapshot_is_rebuilt_from_the_snapshots_up_to_it(posthoc_run):
    rebuilt = posthoc_ema.reconstruct(posthoc_run, 0.1, step=12)
    assert rebuilt.step == 12 and [s.step for s in rebuilt.snapshots] == [4, 8, 12]
    stored = ckpt.load_tensors(
        posthoc_ema.snapshot_dir(posthoc_run) / "step-00000012" / "power-ema-1.safetensors"
    )
    assert all(torch.allclose(rebuilt.tensors[k], v, rtol=0, atol=1e-6) for k, v in stored.items())
    with pytest.raises(ValueError, match="no post-hoc EMA snapshot of step 13"):
        posthoc_ema.reconstruct(posthoc_run, 0.1, step=13)


def test_cli_samples_a_post_hoc_ema(posthoc_run, tmp_path, capsys):
    out = tmp_path / "x.npy"
    assert main(["sample", str(posthoc_run), "--n", "50", "--out", str(out), "--ema-sigma-rel", "0.07"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith(f"wrote {out} (post-hoc EMA σ_rel 0.07 at step 20, from 5 snapshots")
    assert np.isfinite(np.load(out)).all()
    assert main(["info", str(posthoc_run), "--json"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["posthoc_ema"] == {"sigma_rel": [0.05, 0.1], "snapshot_steps": [4, 8, 12, 16, 20]}


def refused(capsys, argv) -> str:
    from tests.test_config_faults import refused as one_line_refusal

    return one_line_refusal(capsys, argv)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--ema-sigma-rel", "0.3"], "--ema-sigma-rel 0.3: σ_rel must lie in (0, 1/√12 ≈ 0.28867], got 0.3"),
        (["--ema-sigma-rel", "0"], "--ema-sigma-rel 0: σ_rel must lie in"),
        (["--ema-sigma-rel", "nan"], "--ema-sigma-rel nan: σ_rel must lie in"),
        (
            ["--ema-sigma-rel", "0.1", "--weights", "model"],
            "a post-hoc EMA replaces the EMA, not --weights model",
        ),
    ],
)
def test_cli_refuses_a_bad_length_in_one_line(posthoc_run, tmp_path, capsys, flags, message):
    assert message in refused(capsys, ["sample", posthoc_run, "--out", tmp_path / "x.png", *flags])


def test_cli_refuses_a_run_without_snapshots_or_with_a_damaged_one(posthoc_run, tmp_path, capsys):
    from tests.test_faults import _resum

    out = tmp_path / "run"
    shutil.copytree(posthoc_run, out)
    argv = ["sample", out, "--out", tmp_path / "x.png", "--ema-sigma-rel", "0.1"]
    damaged = posthoc_ema.snapshot_dir(out) / "step-00000008" / "power-ema-1.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:-10])
    assert refused(capsys, argv).endswith(
        "power-ema-1.safetensors: failed its SHA-256 check (truncated or corrupted)"
    )
    shutil.rmtree(damaged.parent)
    state = posthoc_ema.snapshot_dir(out) / "step-00000012" / "state.json"
    state.write_text(json.dumps({"step": 12, "sigma_rel": [0.05, 0.1], "gamma": [-3.0, "x"]}))
    _resum(state.parent)  # damage past the checksum, for the parser
    assert "step-00000012/state.json: not a post-hoc EMA snapshot's state" in refused(capsys, argv)
    shutil.rmtree(posthoc_ema.snapshot_dir(out))
    assert "has no post-hoc EMA snapshots" in refused(capsys, argv)


def test_eval_measures_a_post_hoc_ema_and_names_its_report(tmp_path, mnist_lenet, capsys):
    from tests.conftest import DATA

    out = tmp_path / "run"
    sets = [f"data.root={DATA}", "diffusion.T=50", "sample.steps=3", "train.sample_n=4", *POSTHOC]
    assert (
        main(
            [
                "train",
                "mnist-tiny",
                "--out",
                str(out),
                "--max-steps",
                "4",
                *(a for s in sets for a in ("--set", s)),
            ]
        )
        == 0
    )
    capsys.readouterr()
    argv = ["eval", str(out), "--n", "30", "--sampler", "ddpm", "--spacing", "uniform", "--steps", "2"]
    assert main([*argv, "--ema-sigma-rel", "0.1", "--json"]) == 0
    printed = capsys.readouterr().out
    report = json.loads(printed.strip().splitlines()[-1])
    assert "post-hoc EMA σ_rel" in printed
    assert report["ema_sigma_rel"] == 0.1 and report["ema_profile_error"] < 1e-6  # a stored length
    assert report["checkpoint_step"] == 4
    assert (out / "eval" / "ddpm-2-n30-ema0.1-s0.json").is_file()
