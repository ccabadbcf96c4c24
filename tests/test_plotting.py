"""Figures that only benchmark scripts draw (the others are drawn, and so checked, by the commands' tests)."""

from PIL import Image

from ddpm import plotting


def test_fld_vs_images_draws_the_learning_curve(tmp_path):
    path = plotting.fld_vs_images(
        tmp_path / "curve.png",
        [57_600, 115_200, 227_200],
        [31.3, 17.0, 9.8],
        floor=0.668,
        law=(4.8e5, 0.88),
        target=(3.0, 2.0e6),
        budget=(227_200, "the hour"),
        title="a learning curve",
    )
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == (600, 400)
