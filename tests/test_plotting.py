"""Figures that only benchmark scripts draw (the others are drawn, and so checked, by the commands' tests)."""

from PIL import Image

from ddpm import plotting


def test_fld_vs_images_draws_learning_curves(tmp_path):
    curve = plotting.LearningCurve(
        "old", [57_600, 115_200, 227_200], [31.3, 17.0, 9.8], floor=0.668, law=(4.8e5, 0.88), needed=2.0e6
    )
    faster = curve._replace(label="new", fld=[20.1, 10.2, 5.3], law=(2.1e5, 0.9), needed=9.0e5)
    path = plotting.fld_vs_images(
        tmp_path / "curve.png", [curve, faster], 3.0, budget=(227_200, "the hour"), title="learning curves"
    )
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == (600, 400)
