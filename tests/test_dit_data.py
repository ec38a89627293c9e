"""The DiT's data: digit images and clips whose captions state what the pixels show, the caption tokenizer, and the
image-folder loader with its errors."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from seraphim.algorithms.dit.digits import (
    BACKGROUNDS, COLOURS, DIRECTIONS, POSITIONS, SPEEDS, THICKNESS, DigitGlyphs, DigitImages, DigitVideos,
)
from seraphim.algorithms.dit.errors import DiTInputError
from seraphim.algorithms.dit.evaluate import tracked_velocity
from seraphim.algorithms.dit.image_folder import ImageFolder
from seraphim.algorithms.dit.text import CaptionTokenizer


@pytest.fixture(scope="module")
def glyphs() -> DigitGlyphs:
    return DigitGlyphs.load()


def _parse_image_caption(caption: str) -> dict[str, int]:
    words = caption.split()  # "a thick red 3 in the top left on a dark background"
    return {"thickness": THICKNESS.index(words[1]), "colour": COLOURS.index(words[2]), "digit": int(words[3]),
            "position": POSITIONS.index(" ".join(words[6:8])), "background": BACKGROUNDS.index(words[10])}


def test_image_captions_state_what_the_pixels_show(glyphs):
    images = DigitImages(glyphs)
    attrs = images.sample_attributes(np.random.default_rng(3), 300, "train")
    pixels, captions = images.render(attrs), images.captions(attrs)
    assert pixels.shape == (300, 3, 32, 32) and pixels.min() >= -1 and pixels.max() <= 1
    parsed = [_parse_image_caption(c) for c in captions]
    for name in ("thickness", "colour", "digit", "position", "background"):
        assert [p[name] for p in parsed] == getattr(attrs, name).tolist(), name
    assert np.array_equal(attrs.digit, glyphs.digit[attrs.glyph])
    rgb = (pixels + 1) / 2
    corner = rgb[:, :, 0, 0]  # every glyph leaves the canvas corner as background
    assert np.array_equal(corner.mean(1) > 0.5, attrs.background == BACKGROUNDS.index("light"))
    ink = np.abs(rgb - corner[:, :, None, None]).sum(1)  # (n, H, W)
    ys, xs = np.indices((32, 32))
    cy = (ink * ys).sum((1, 2)) / ink.sum((1, 2))
    cx = (ink * xs).sum((1, 2)) / ink.sum((1, 2))
    assert np.array_equal((cy >= 16) * 2 + (cx >= 16), attrs.position)  # the ink sits in the stated quadrant
    inked = ink > 0.5
    mean_ink_colour = (rgb * inked[:, None]).sum((2, 3)) / inked.sum((1, 2))[:, None]
    assert np.array_equal(mean_ink_colour.argmax(1), attrs.colour)  # red, green, blue: the dominant channel
    thin = attrs.thickness == THICKNESS.index("thin")
    thickened = images.render(replace(attrs, thickness=np.ones_like(attrs.thickness)))  # same glyphs, all thick
    thick_ink = np.abs((thickened + 1) / 2 - corner[:, :, None, None]).sum((1, 2, 3))
    assert (thick_ink[thin] > ink.sum((1, 2))[thin]).all()  # thickening adds ink to every glyph


def test_one_channel_images_ink_against_their_background_and_name_no_colour():
    images = DigitImages(DigitGlyphs.load(16), colours=False)
    attrs = images.sample_attributes(np.random.default_rng(4), 200, "train")
    pixels, captions = images.render(attrs), images.captions(attrs)
    assert pixels.shape == (200, 1, 32, 32) and images.sample_shape == (1, 32, 32)
    assert not any(word in c.split() for c in captions for word in COLOURS) and "colour" not in images.FACTS
    light = attrs.background == BACKGROUNDS.index("light")
    assert np.array_equal(np.median(pixels, axis=(1, 2, 3)) > 0, light)  # the ground fills most of the canvas
    extreme = np.where(light, pixels.min(axis=(1, 2, 3)), -pixels.max(axis=(1, 2, 3)))
    assert (extreme < -0.5).all()  # dark ink on the light ground, light ink on the dark one
    assert (attrs.jitter_y == 0).all() and (attrs.jitter_x == 0).all()  # a 16-pixel glyph fills its quadrant


def test_the_generator_is_deterministic_given_a_seed(glyphs):
    images, videos = DigitImages(glyphs), DigitVideos(glyphs)
    for data in (images, videos):
        a, b, c = (data.batch(np.random.default_rng(seed), 16) for seed in (7, 7, 8))
        assert np.array_equal(a[0], b[0]) and a[1] == b[1]
        assert not np.array_equal(a[0], c[0])
    assert DigitGlyphs.load().heldout.tolist() == glyphs.heldout.tolist()
    assert glyphs.heldout.mean() == pytest.approx(0.2, abs=0.01)


def test_video_captions_state_the_motion_the_pixels_show(glyphs):
    videos = DigitVideos(glyphs, canvas=32, frames=8)
    attrs = videos.sample_attributes(np.random.default_rng(5), 200, "heldout")
    clips, captions = videos.render(attrs), videos.captions(attrs)
    assert clips.shape == (200, 1, 8, 32, 32)
    words = [c.split() for c in captions]  # "a 7 moving up quickly"
    assert [int(w[1]) for w in words] == attrs.digit.tolist()
    assert [DIRECTIONS.index(w[3]) for w in words] == attrs.direction.tolist()
    assert [SPEEDS.index(w[4]) for w in words] == attrs.speed.tolist()
    assert np.allclose(tracked_velocity(clips), attrs.velocity, atol=1e-6)  # the glyph moves exactly as stated
    assert glyphs.heldout[attrs.glyph].all()


def test_with_facts_draws_glyphs_of_the_requested_classes_from_the_split(glyphs):
    images = DigitImages(glyphs)
    digits = np.arange(40) % 10
    attrs = images.with_facts(np.random.default_rng(0), {"digit": digits, "position": np.full(40, 2)}, "heldout")
    assert np.array_equal(glyphs.digit[attrs.glyph], digits) and glyphs.heldout[attrs.glyph].all()
    assert (attrs.position == 2).all()
    with pytest.raises(DiTInputError, match="split must be one of"):
        images.sample_attributes(np.random.default_rng(0), 2, "test")


def test_canvases_too_small_for_the_glyph_or_its_path_are_refused(glyphs):
    with pytest.raises(DiTInputError, match="use canvas >= 28"):
        DigitImages(glyphs, canvas=24)
    with pytest.raises(DiTInputError, match="needs a canvas of at least 28 pixels, got 24"):
        DigitVideos(glyphs, canvas=24, frames=8)


def test_tokenizer_starts_with_bos_pads_cuts_and_maps_unseen_words_to_unk():
    tok = CaptionTokenizer.from_captions(["a red 3 in the top left", "a blue 7"], max_len=6)
    ids = tok.encode(["A red 3", "", "a purple 3 in the top left corner"])
    assert ids.shape == (3, 6)
    bos = tok.tokenizer.token_to_id("[BOS]")
    assert ids[:, 0].tolist() == [bos] * 3
    assert ids[0, 4:].tolist() == [0, 0] and ids[1, 1:].tolist() == [0] * 5  # padding; "" is [BOS] alone
    assert ids[0, 1] == tok.tokenizer.token_to_id("a")  # lower-cased
    assert ids[2, 2] == tok.tokenizer.token_to_id("[UNK]") and ids[2].ne(0).all()  # cut at max_len


def _write_folder(folder, rows, images=("a.png", "b.png")):
    folder.mkdir()
    for i, name in enumerate(images):
        Image.fromarray(np.full((20, 30, 3), 40 * i, dtype=np.uint8)).save(folder / name)
    (folder / "metadata.jsonl").write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows))
    return folder


def test_image_folder_loads_square_images_and_captions(tmp_path):
    folder = _write_folder(tmp_path / "f", [{"file_name": "a.png", "text": "a dark square"},
                                            {"file_name": "b.png", "text": "a grey square"}])
    data = ImageFolder.open(folder, size=16)
    assert data.pixels.shape == (2, 3, 16, 16) and data.texts == ["a dark square", "a grey square"]
    pixels, captions = data.batch(np.random.default_rng(0), 8)
    assert pixels.shape == (8, 3, 16, 16)
    for p, c in zip(pixels, captions):
        assert np.allclose(p, (0 if c == "a dark square" else 40) / 127.5 - 1)
    (folder / "metadata.jsonl").unlink()
    (folder / "metadata.csv").write_text("file_name,text\nb.png,a grey square\n")
    assert ImageFolder.open(folder, size=8).texts == ["a grey square"]


@pytest.mark.parametrize("rows, message", [
    (['{"file_name": "a.png", "text": "x"}', "{not json"], r"metadata.jsonl line 2 is not JSON"),
    ([{"file_name": "a.png"}], r"metadata.jsonl line 1: 'text' must be a non-empty string, got None"),
    ([{"file_name": "a.png", "text": "  "}], r"line 1: 'text' must be a non-empty string"),
    ([{"file_name": "c.png", "text": "x"}], r"metadata.jsonl line 1 names 'c.png', which is not a file in"),
    ([{"file_name": "bad.png", "text": "x"}], r"bad.png \(from metadata.jsonl line 1\) cannot be read as an image"),
    (['["a.png", "x"]'], r"line 1 is a JSON list, not an object"),
    ([], r"metadata.jsonl lists no images"),
])
def test_image_folder_errors_name_the_file_line_and_fix(tmp_path, rows, message):
    folder = _write_folder(tmp_path / "f", rows)
    (folder / "bad.png").write_text("not an image")
    with pytest.raises(DiTInputError, match=message):
        ImageFolder.open(folder, size=8)


def test_image_folder_without_one_metadata_file_is_refused(tmp_path):
    with pytest.raises(DiTInputError, match="does not exist or is not a directory"):
        ImageFolder.open(tmp_path / "missing", size=8)
    folder = _write_folder(tmp_path / "f", [{"file_name": "a.png", "text": "x"}])
    (folder / "metadata.csv").write_text("file_name,caption\na.png,x\n")
    with pytest.raises(DiTInputError, match="has both of metadata.jsonl and metadata.csv; give exactly one"):
        ImageFolder.open(folder, size=8)
    (folder / "metadata.jsonl").unlink()
    with pytest.raises(DiTInputError, match=r"has columns \['file_name', 'caption'\]; it needs \['file_name', 'text'\]"):
        ImageFolder.open(folder, size=8)
    (folder / "metadata.csv").unlink()
    with pytest.raises(DiTInputError, match="has neither of metadata.jsonl and metadata.csv"):
        ImageFolder.open(folder, size=8)
