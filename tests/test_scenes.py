import hashlib

import numpy as np

from helpers.masks import CLASSES
from helpers.paths import data_dir
from helpers.scenes import SIDES, render_scene, write_dataset


def digests(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_regenerating_gives_byte_identical_files(tmp_path):
    write_dataset(tmp_path)
    assert digests(tmp_path) == digests(data_dir("shapes"))


def test_a_scene_is_an_rgb_image_with_a_palette_mask_of_known_classes():
    image, mask = render_scene(5)
    assert image.mode == "RGB" and mask.mode == "P" and image.size == mask.size
    assert set(image.size) <= set(SIDES)
    values = set(np.unique(np.asarray(mask)).tolist())
    assert 0 in values and len(values) > 1 and values <= set(range(len(CLASSES)))


def test_seeds_and_indices_give_different_scenes():
    same = np.asarray(render_scene(3, seed=0)[0])
    assert np.array_equal(same, np.asarray(render_scene(3, seed=0)[0]))
    assert not np.array_equal(np.asarray(render_scene(3, seed=1)[1]), np.asarray(render_scene(3, seed=0)[1]))
    assert not np.array_equal(np.asarray(render_scene(4, seed=0)[1]), np.asarray(render_scene(3, seed=0)[1]))


def test_a_fixed_size_is_height_then_width():
    image, mask = render_scene(3, size=(40, 60))
    assert np.asarray(image).shape == (40, 60, 3) and np.asarray(mask).shape == (40, 60)
