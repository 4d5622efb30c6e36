"""The benchmark's GPU pieces: JPEGs decoded by torchcodec in the main process, and its ceiling; on the CPU,
and on CUDA (nvJPEG) where there is a GPU."""

import json

import pytest
import torch

from helpers.bench import bench_data, gpu_decode_ceiling, gpu_decode_pipeline, gpu_decode_pipelines, shares

pytest.importorskip("torchcodec", reason="torchcodec is installed by requirements-teacher.txt")
CPU = torch.device("cpu")
DEVICES = [CPU, pytest.param(torch.device("cuda"), id="cuda",
                             marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]


@pytest.mark.parametrize("stored, ahead", [(False, False), (True, False), (True, True)],
                         ids=["png masks", "stored masks", "read ahead"])
@pytest.mark.parametrize("device", DEVICES)
def test_gpu_decode_pipeline_delivers_normalised_images_with_aligned_masks(tmp_path, device, stored, ahead):
    from helpers.datasets import pair_files
    from helpers.gpu_decode import write_masks

    root = bench_data(8, 48, tmp_path / "data")
    if stored:
        write_masks(pair_files(root / "images", root / "masks"), tmp_path / "masks", (32, 32))
    masks = tmp_path / "masks" if stored else None
    pipeline = gpu_decode_pipeline(root, 32, batch_size=4, device=device, masks=masks, ahead=ahead)
    assert len(pipeline.loader(0)) == 2  # two batches of four, read ahead or not
    for batch in pipeline.loader(0):
        images, masks = pipeline.finish(batch)
        assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32
        assert images.device.type == masks.device.type == device.type
        assert masks.shape == (4, 32, 32) and masks.dtype == torch.int64
        assert set(masks.unique().tolist()) <= {0, 1, 2, 3}
    # the same batch twice: where a mask came out mirrored the second time, so did its image
    torch.manual_seed(0)
    first, second = pipeline.finish(batch), pipeline.finish(batch)
    mirrored = [i for i in range(4) if not torch.equal(first[1][i], second[1][i])]
    assert mirrored and all(torch.equal(first[0][i].flip(-1), second[0][i]) for i in mirrored)
    assert all(torch.equal(first[0][i], second[0][i]) for i in range(4) if i not in mirrored)


def test_the_benchmark_adds_three_gpu_decode_pipelines_and_each_delivers_the_same_kind_of_batch(tmp_path):
    root = bench_data(8, 48, tmp_path / "data")
    chosen = gpu_decode_pipelines(root, 32, 4, CPU, tmp_path / "work")
    assert list(chosen) == ["gpu decode", "gpu decode, masks stored", "gpu decode, read ahead"]
    assert (tmp_path / "work" / "masks" / "masks.npy").is_file()  # stored for the last two
    for name, pipeline in chosen.items():
        images, masks = pipeline.finish(next(iter(pipeline.loader(0))))
        assert images.shape == (4, 3, 32, 32) and masks.shape == (4, 32, 32), name


@pytest.mark.parametrize("device", DEVICES)
def test_gpu_decode_ceiling_counts_images_per_second_and_gives_the_pipeline_its_share(tmp_path, device):
    root = bench_data(8, 48, tmp_path / "data")
    speed = gpu_decode_ceiling(root, device, batch_size=4, rounds=1)
    assert speed > 0
    limits = {"decode only": 1.0, "memory only": 1.0, "gpu decode only": speed}
    assert shares({"gpu decode": {0: speed / 2}}, limits) == {"gpu decode": pytest.approx(0.5)}


def test_gpu_decode_ceiling_decodes_every_image_in_batches_and_keeps_the_best_round(tmp_path, monkeypatch):
    from helpers import bench

    root = bench_data(10, 48, tmp_path / "data")
    batches, ticks = [], iter([0.0, 5.0, 10.0, 12.0])  # rounds of 5 and 2 seconds
    monkeypatch.setattr(bench, "decode_jpegs", lambda batch, device: batches.append(len(batch)))
    monkeypatch.setattr(bench.time, "perf_counter", lambda: next(ticks))
    assert gpu_decode_ceiling(root, CPU, batch_size=4, rounds=2) == 10 / 2.0
    assert batches == [4] + [4, 4, 2] * 2  # a warm-up batch, then every image in each round


def test_feed_stages_times_each_stage_of_both_pipelines(tmp_path, capsys, monkeypatch):
    """tools/feed_stages.py, which tools/gpu_run.sh runs on a GPU: every stage gets its line, and the same
    figure in the results file --json writes."""
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "tools"))
    import feed_stages

    feed_stages.main(["--device", "cpu", "--count", "64", "--side", "48", "--size", "32", "--workers", "0",
                      "--data", str(tmp_path / "data"), "--json", str(tmp_path / "stages.json")])
    recorded = json.loads((tmp_path / "stages.json").read_text())
    assert recorded["command"].startswith("python tools/feed_stages.py --device cpu")
    assert recorded["machine"]["date"] and recorded["batch_size"] == 32
    printed = capsys.readouterr().out
    assert list(recorded["ms_per_batch"])[-1].startswith("device gathers")  # measured last
    for stage in ("gather into pinned, 1 threads", "threads, mapped each epoch", "gather, copy and flip",
                  "the same and to_device",
                  "device gathers: gather and flip", "device gathers: the same and to_device",
                  "gpu decode: loader alone, 0 workers", "gpu decode: loader and decode_jpegs, 0 workers",
                  "gpu decode: whole pipeline, 0 workers", "masks stored: loader alone, 0 workers",
                  "masks stored: whole pipeline, 0 workers", "read ahead: whole pipeline, 0 workers"):
        assert f"{stage}: " in printed and " ms per batch of 32 " in printed, stage
        label = next(label for label in recorded["ms_per_batch"] if label.endswith(stage))
        assert f"{label}: {recorded['ms_per_batch'][label]:7.3f} ms" in printed  # the figure printed


def test_feed_stages_keeps_the_other_stages_if_the_gpu_gathers_end_the_process(tmp_path, monkeypatch):
    """The GPU's gathers from mapped RAM have never run on a GPU: the results file is written before."""
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "tools"))
    import feed_stages

    def fault(*args):
        raise SystemExit("a fault that ends the process")

    monkeypatch.setattr(feed_stages, "device_gather_stages", fault)
    with pytest.raises(SystemExit):
        feed_stages.main(["--device", "cpu", "--count", "32", "--side", "48", "--size", "32", "--workers",
                          "0", "--data", str(tmp_path / "data"), "--json", str(tmp_path / "stages.json")])
    kept = json.loads((tmp_path / "stages.json").read_text())["ms_per_batch"]
    assert any(label.startswith("memmap") for label in kept) and any("gpu decode" in label for label in kept)


def test_feed_stages_reports_a_map_the_gpu_refuses_and_keeps_the_other_stages(tmp_path, capsys,
                                                                              monkeypatch):
    from pathlib import Path

    from helpers import formats
    from helpers.bench import bench_data

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "tools"))
    import feed_stages

    def refused(*args):
        raise formats.PageLockRefused("Cannot page-lock the map in /data for the GPU (CUDA error 801)")

    monkeypatch.setattr(formats, "host_mapped", refused)
    root = bench_data(64, 48, tmp_path / "data")
    times = feed_stages.memmap_stages(root, 32, torch.device("cpu"), tmp_path / "memmap")
    assert "memmap: the same and to_device" in times
    assert not feed_stages.device_gather_stages(tmp_path / "memmap", torch.device("cpu"))
    assert "device gathers: not measured: Cannot page-lock" in capsys.readouterr().out
