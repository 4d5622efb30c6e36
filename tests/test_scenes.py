import hashlib

import numpy as np
from PIL import Image

from helpers.datasets import CLUTTER
from helpers.masks import CLASSES
from helpers.paths import data_dir
from helpers.scenes import SIDES, render_scene, write_dataset


def digests(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name not in CLUTTER}  # .DS_Store, ...


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


def test_a_seed_and_a_size_reach_every_pair_written_into_new_folders(tmp_path):
    root = tmp_path / "new" / "shapes"  # folders made as needed, and written again over themselves
    for _ in range(2):
        write_dataset(root, count=3, val_count=1, seed=2, size=(40, 60))
    assert (root / "train.txt").read_text() == "0001\n0002\n" and (root / "val.txt").read_text() == "0003\n"
    with Image.open(root / "masks" / "0003.png") as mask:
        assert mask.size == (60, 40)  # PIL gives (width, height)
        assert np.array_equal(np.asarray(mask), np.asarray(render_scene(3, seed=2, size=(40, 60))[1]))
    assert np.array_equal(np.asarray(render_scene(3)[1]), np.asarray(render_scene(3, seed=0)[1]))


def test_the_command_writes_the_pairs_asked_for(tmp_path, monkeypatch, capsys):
    from helpers import scenes

    out = tmp_path / "more"
    monkeypatch.setattr("sys.argv", ["scenes", "--out", str(out), "--count", "3", "--val-count", "2",
                                     "--seed", "1", "--side", "32"])
    scenes.main()
    assert capsys.readouterr().out == f"wrote 3 pairs to {out}\n"
    assert (out / "val.txt").read_text() == "0002\n0003\n"
    with Image.open(out / "images" / "0001.jpg") as image:
        assert image.size == (32, 32)
    with Image.open(out / "masks" / "0001.png") as mask:
        assert np.array_equal(np.asarray(mask), np.asarray(render_scene(1, seed=1, size=(32, 32))[1]))
