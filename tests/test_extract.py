"""The extractor: parity with open_clip/timm, decode-once, logits, bad samples, refusals."""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from embedstore.errors import EmbedstoreError, FingerprintMismatch, StoreError
from embedstore.extract.plan import DatasetPlan, ModelPlan, Plan, Settings, plan_from_args
from embedstore.extract.runner import run_extraction, run_extraction_at, zeroshot_weights
from embedstore.models import load_model
from embedstore.sources import open_dataset, write_dataset
from embedstore.store import Store

CLIP = "openclip:embedstore-tiny@random"
TIMM = "timm:test_vit@random"
QUIET = {"log": lambda msg: None, "progress": False}


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("folder")
    write_dataset(open_dataset("shapes", "synthetic:shapes?n=24&seed=3"), str(root / "shapes"), layout="imagefolder")
    return root / "shapes"


def _extract(store, datasets, models=(CLIP, TIMM), **settings):
    settings = {"workers": 0, "chunk_rows": 8, "batch_size": 4, "dtype": "float32", **settings}
    return run_extraction(store, plan_from_args(list(models), list(datasets), **settings), **QUIET)


def test_cpu_path_equals_open_clip_and_timm(store, image_folder):
    _extract(store, [f"shapes=imagefolder:{image_folder}"])
    clip = load_model(CLIP)
    _, _, preprocess = open_clip.create_model_and_transforms("embedstore-tiny", pretrained=None)
    table = store.sample_table("shapes")
    images = [Image.open(image_folder / loc).convert("RGB") for loc in table["locator"]]
    with torch.inference_mode():
        expected = clip.module.encode_image(torch.stack([preprocess(im) for im in images])).numpy()
    np.testing.assert_allclose(store.read_array("shapes", clip.model_id, "image_emb"), expected, rtol=1e-5, atol=1e-5)

    tokenizer = open_clip.get_tokenizer("embedstore-tiny")
    classnames = store.dataset_info("shapes")["classnames"]
    templates = store.templates("shapes")
    with torch.inference_mode():
        text = clip.module.encode_text(tokenizer([templates[1].format(c=classnames[2])])).numpy()[0]
    np.testing.assert_allclose(store.read_array("shapes", clip.model_id, "text_emb")[2, 1], text, rtol=1e-5, atol=1e-5)

    timm_model = load_model(TIMM)
    import timm.data

    transform = timm.data.create_transform(**timm.data.resolve_model_data_config(timm_model.module))
    with torch.inference_mode():
        logits = timm_model.module(torch.stack([transform(im) for im in images])).numpy()
    np.testing.assert_allclose(store.read_array("shapes", timm_model.model_id, "logits"), logits, rtol=1e-4, atol=1e-5)
    for info in store.list_arrays("shapes"):  # what can move float results in their last bits is recorded
        assert {
            "device": "cpu",
            "batch_size": 4,
            "cpu_threads": torch.get_num_threads(),
        }.items() <= info.settings.items()


def test_a_models_images_per_s_leaves_out_its_warm_up(store, image_folder, monkeypatch):
    from embedstore.models.openclip_adapter import OpenClipAdapter

    encode_image, calls = OpenClipAdapter.encode_image, []

    def slow_first_call(self, images):
        calls.append(len(images))
        if len(calls) == 1:
            time.sleep(1.0)  # what a first call's lazy initialisation costs, exaggerated
        return encode_image(self, images)

    monkeypatch.setattr(OpenClipAdapter, "encode_image", slow_first_call)
    report = _extract(store, [f"shapes=imagefolder:{image_folder}"], models=[CLIP])
    key = "openclip:embedstore-tiny@random:0 on shapes"
    assert calls == [4] * 6 and report.model_encode_seconds[key] > 1.0
    # 16 images after the first two batches, in a small fraction of the second the first one slept
    assert report.model_images_per_s[key] > 10 * 24 / report.model_encode_seconds[key]
    stored = store.query("SELECT seconds, rows_per_s FROM arrays WHERE name = 'image_emb'")[0]
    assert stored == {"seconds": report.model_encode_seconds[key], "rows_per_s": report.model_images_per_s[key]}


def test_stored_clip_logits_equal_logits_recomputed_from_the_store(store, image_folder):
    _extract(store, [f"shapes=imagefolder:{image_folder}"], models=[CLIP], dtype="float16")
    model = store.model_info("openclip:embedstore-tiny@random:0")
    image = store.read_array("shapes", model["model_id"], "image_emb").astype(np.float32)
    text = store.read_array("shapes", model["model_id"], "text_emb")
    weights = zeroshot_weights(text, store.prompt_set("shapes", "default"))
    recomputed = model["logit_scale"] * (image / np.linalg.norm(image, axis=1, keepdims=True)) @ weights.T
    np.testing.assert_allclose(
        store.read_array("shapes", model["model_id"], "logits"), recomputed, rtol=1e-5, atol=1e-4
    )


def test_each_file_is_opened_once_per_pass(store, image_folder):
    opened: list[str] = []

    def hook(event, args):
        if event == "open" and isinstance(args[0], str) and args[0].startswith(str(image_folder)):
            opened.append(args[0])

    sys.addaudithook(hook)
    _extract(store, [f"shapes=imagefolder:{image_folder}"])
    image_opens = [p for p in opened if Path(p).suffix.lower() in {".jpg", ".jpeg", ".png", ".webp"}]
    assert len(image_opens) == 24, "two models, one pass: every image file opened exactly once"
    assert len(set(image_opens)) == 24
    opened.clear()
    _extract(store, [f"shapes=imagefolder:{image_folder}"])  # complete: nothing is read again
    assert [p for p in opened if Path(p).suffix.lower() in {".jpg", ".jpeg", ".png"}] == []


def test_models_sharing_a_preprocess_config_share_one_transform(store, image_folder, monkeypatch):
    from embedstore.extract import reader

    seen = []
    original = reader._CpuTasks.__init__

    def spy(self, dataset, tasks, transforms, options):
        seen.append(len(transforms))
        original(self, dataset, tasks, transforms, options)

    monkeypatch.setattr(reader._CpuTasks, "__init__", spy)
    _extract(store, [f"shapes=imagefolder:{image_folder}"], models=[CLIP, "openclip:embedstore-tiny@random:1"])
    assert seen == [1]


def _bad_folder(root: Path) -> Path:
    """One class folder with every awkward kind of file."""
    folder = root / "bad" / "square"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8))

    def save(name, image, fmt, **kw):
        buffer = io.BytesIO()
        image.save(buffer, fmt, **kw)
        (folder / name).write_bytes(buffer.getvalue())

    save("a_good.jpg", rgb, "JPEG")
    save("b_cmyk.jpg", rgb.convert("CMYK"), "JPEG")
    save("c_gray.png", rgb.convert("L"), "PNG")
    save("d_alpha.png", rgb.convert("RGBA"), "PNG")
    save("e_16bit.png", Image.fromarray((rng.integers(0, 65535, (30, 30))).astype(np.uint16)), "PNG")
    save("f_big.png", Image.new("RGB", (300, 300)), "PNG")
    good = io.BytesIO()
    rgb.save(good, "JPEG")
    (folder / "g_truncated.jpg").write_bytes(good.getvalue()[: len(good.getvalue()) // 3])
    (folder / "h_empty.jpg").write_bytes(b"")
    (folder / "i_text.jpg").write_bytes(b"this is not an image at all")
    return root / "bad"


@pytest.mark.parametrize("decode", ["cpu", "gpu"])
def test_bad_samples_are_recorded_and_the_run_goes_on(store, tmp_path, decode):
    folder = _bad_folder(tmp_path)
    report = _extract(store, [f"bad=imagefolder:{folder}"], models=[CLIP], pixel_limit=200 * 200, decode=decode,
                      device="cpu")  # fmt: skip
    bad = store.query('SELECT s.locator, b.reason FROM bad_samples b JOIN samples s USING (dataset, "row") ORDER BY 1')
    reasons = {Path(r["locator"]).name: r["reason"] for r in bad}
    assert set(reasons) == {"f_big.png", "g_truncated.jpg", "h_empty.jpg", "i_text.jpg"}, reasons
    assert "pixel limit" in reasons["f_big.png"] and (
        "zero-byte" in reasons["h_empty.jpg"] or "empty file" in reasons["h_empty.jpg"]
    )
    assert "truncated" in reasons["g_truncated.jpg"] or "corrupt" in reasons["g_truncated.jpg"]
    assert "not an image" in reasons["i_text.jpg"]
    assert report.bad_samples == {"bad": 4}
    emb = store.read_array("bad", "openclip:embedstore-tiny@random:0", "image_emb")
    rows = store.bad_rows("bad")
    assert np.all(emb[rows] == 0) and np.all(np.abs(emb[np.setdiff1d(np.arange(9), rows)]).sum(axis=1) > 0)


def test_a_run_stopped_before_recording_its_bad_samples_leaves_arrays_unreadable_until_run_again(
    store, tmp_path, monkeypatch
):
    folder = _bad_folder(tmp_path)
    model = "openclip:embedstore-tiny@random:0"

    def stopped(*_args, **_kwargs):
        raise KeyboardInterrupt  # Ctrl-C after the last chunk, before the dataset's bad samples are recorded

    with monkeypatch.context() as patch:
        patch.setattr(Store, "record_bad_samples", stopped)
        with pytest.raises(KeyboardInterrupt):
            _extract(store, [f"bad=imagefolder:{folder}"], models=[CLIP], pixel_limit=200 * 200, device="cpu")
    info = store.list_arrays("bad", model, "image_emb")[0]
    assert store.array_progress(info) == (9, "partial")  # every row written, not finished
    with pytest.raises(StoreError, match="its writer has not finished it"):  # zero rows of bad images are not data
        store.read_array("bad", model, "logits")
    report = _extract(store, [f"bad=imagefolder:{folder}"], models=[CLIP], pixel_limit=200 * 200, device="cpu")
    assert report.bad_samples == {"bad": 4} and len(store.bad_rows("bad")) == 4
    assert store.read_array("bad", model, "logits").shape[0] == 9


def test_templates_added_since_the_text_was_encoded_are_pointed_to_prompts_add(store, image_folder):
    _extract(store, [f"shapes=imagefolder:{image_folder}"], models=[CLIP])
    store.add_prompt_set("shapes", "mine", ["an origami {c}."])  # what prompts add commits before encoding
    with pytest.raises(StoreError, match=r"encodes 8 templates and the dataset now has 9: encode the new ones with"):
        _extract(store, [f"shapes=imagefolder:{image_folder}"], models=[CLIP])


def test_gpu_decode_path_stays_close_to_the_cpu_path(tmp_path, image_folder):
    cpu, gpu = Store.create(tmp_path / "cpu"), Store.create(tmp_path / "gpu")
    _extract(cpu, [f"shapes=imagefolder:{image_folder}"], models=[CLIP], decode="cpu")
    _extract(gpu, [f"shapes=imagefolder:{image_folder}"], models=[CLIP], decode="gpu", device="cpu")
    a = cpu.read_array("shapes", "openclip:embedstore-tiny@random:0", "image_emb")
    b = gpu.read_array("shapes", "openclip:embedstore-tiny@random:0", "image_emb")
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.98, cos.min()


def test_the_cpu_decode_share_sends_exactly_its_rows_to_pil_and_is_part_of_the_image_settings(
    tmp_path, image_folder, monkeypatch
):
    from embedstore.extract import reader
    from embedstore.extract.batched import decode_jpegs, preprocess_batch

    def batched_decoder(files, device):  # marks its images (inverted) so the test can tell whose pixels a row has
        gpu_files.extend(files)
        return [255 - image for image in decode_jpegs(files, device)]

    pil_files, gpu_files = [], []
    pil_decode = reader.decode_rgb
    monkeypatch.setattr(reader, "decode_rgb", lambda data, options: pil_files.append(data) or pil_decode(data, options))
    monkeypatch.setattr(reader, "decode_jpegs", batched_decoder)
    store = Store.create(tmp_path / "s")
    spec = [f"shapes=imagefolder:{image_folder}"]
    _extract(store, spec, models=[CLIP], decode="gpu", device="cpu", cpu_decode_share=0.25)
    dataset = open_dataset("shapes", f"imagefolder:{image_folder}")
    files = [s.data for s in dataset.iter_encoded(0, len(dataset))]
    pil_rows = [r for r in range(24) if reader.cpu_decoded(r, 250)]
    assert pil_files == [files[r] for r in pil_rows] and len(pil_rows) == 6
    assert len(gpu_files) == 18
    # each row's embedding is that of its own decoder's pixels: PIL's for the share, the marked ones for the rest
    model = load_model(CLIP)
    pixels = []
    for row, data in enumerate(files):
        if row in pil_rows:
            image = torch.from_numpy(np.array(pil_decode(data, reader.DecodeOptions()))).permute(2, 0, 1)
        else:
            image = 255 - decode_jpegs([data], "cpu")[0]
        pixels.append(preprocess_batch([image], model.preprocess)[0])
    with torch.inference_mode():
        expected = model.encode_image(torch.stack(pixels)).numpy()
    stored = store.read_array("shapes", "openclip:embedstore-tiny@random:0", "image_emb")
    np.testing.assert_allclose(stored, expected, rtol=1e-4, atol=1e-5)
    info = store.list_arrays("shapes", "openclip:embedstore-tiny@random:0", "image_emb")[0]
    assert info.settings["cpu_decode_share"] == 0.25 and info.settings["workers"] == 0
    text = store.list_arrays("shapes", "openclip:embedstore-tiny@random:0", "text_emb")[0]
    assert "cpu_decode_share" not in text.settings  # the text does not depend on how images are decoded
    said: list[str] = []  # the same share spelled otherwise is the same setting: nothing to do
    plan = plan_from_args([CLIP], spec, workers=0, chunk_rows=8, batch_size=4, dtype="float32", decode="gpu",
                          device="cpu", cpu_decode_share=0.1 + 0.15)  # fmt: skip
    run_extraction(store, plan, log=said.append, progress=False)
    assert "shapes: every array is complete; nothing to do" in said
    with pytest.raises(FingerprintMismatch, match=r"image_emb.*settings changed \(cpu_decode_share: 0.25 -> 0.5\)"):
        _extract(store, spec, models=[CLIP], decode="gpu", device="cpu", cpu_decode_share=0.5)


def test_the_pass_restores_the_cpu_thread_count_also_when_it_fails(store, image_folder, monkeypatch):
    from embedstore.extract import runner

    threads = torch.get_num_threads()
    monkeypatch.setattr(runner.Runtime, "pass_threads", property(lambda self: 1))  # as on a GPU
    seen: list[int] = []
    encode = runner._ModelJob.encode

    def encode_then_fail(self, pixels):
        seen.append(torch.get_num_threads())
        if len(seen) == 2:
            raise RuntimeError("encoder broke")
        return encode(self, pixels)

    monkeypatch.setattr(runner._ModelJob, "encode", encode_then_fail)
    with pytest.raises(RuntimeError, match="encoder broke"):
        _extract(store, [f"shapes=imagefolder:{image_folder}"], models=[CLIP])
    assert seen == [1, 1] and torch.get_num_threads() == threads


def test_templates_a_rerun_names_but_the_store_lacks_are_pointed_to_prompts_add(store, image_folder):
    report = _extract(store, [f"shapes=imagefolder:{image_folder}?templates=simple"], models=[CLIP])
    assert sorted(a.name for a in report.arrays) == ["image_emb", "logits", "text_emb"]  # the summary lists all
    said: list[str] = []
    plan = plan_from_args([CLIP], [f"shapes=imagefolder:{image_folder}?templates=openai"], workers=0, chunk_rows=8,
                          batch_size=4, dtype="float32")  # fmt: skip
    run_extraction(store, plan, log=said.append, progress=False)
    notes = [line for line in said if "already registered with" in line]
    assert len(notes) == 1 and "embedstore prompts add --dataset shapes" in notes[0], said
    assert len(store.templates("shapes")) < 80


def test_a_plan_adding_templates_to_encoded_text_is_refused_and_changes_nothing(store, image_folder):
    _extract(store, [f"shapes=imagefolder:{image_folder}"], models=[CLIP])
    models_before, templates_before = store.query("SELECT * FROM models"), store.templates("shapes")
    settings = Settings(workers=0, chunk_rows=8, batch_size=4, dtype="float32")
    plan = Plan((ModelPlan(CLIP, {"group": "my-group"}),),
                (DatasetPlan("shapes", f"imagefolder:{image_folder}", {}, {"mine": ["a {c} in the rain."]}),),
                settings)  # fmt: skip
    with pytest.raises(EmbedstoreError, match="prompt set 'mine' names 1 template.*embedstore prompts add"):
        run_extraction(store, plan, **QUIET)
    assert store.query("SELECT * FROM models") == models_before and store.templates("shapes") == templates_before
    assert "mine" not in store.prompt_sets("shapes")


def test_changed_dataset_is_refused_with_the_reason(store, tmp_path, image_folder):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(image_folder, folder)
    _extract(store, [f"shapes=imagefolder:{folder}"], models=[CLIP])
    victim = sorted(folder.rglob("*.*"))[0]
    victim.write_bytes(victim.read_bytes() + b"\0")
    with pytest.raises(FingerprintMismatch, match="dataset shapes changed on disk"):
        _extract(store, [f"shapes=imagefolder:{folder}"], models=[CLIP])


def test_changed_settings_are_refused_naming_the_setting(store, image_folder):
    _extract(store, [f"shapes=imagefolder:{image_folder}"], models=[CLIP])  # dtype float32
    with pytest.raises(FingerprintMismatch, match=r"settings changed \(dtype: 'float32' -> 'float16'\)"):
        _extract(store, [f"shapes=imagefolder:{image_folder}"], models=[CLIP], dtype="float16", batch_size=8)


def test_changed_weights_are_refused_with_the_reason(store, tmp_path, image_folder):
    model = load_model(CLIP)
    checkpoint = tmp_path / "tiny.pt"
    torch.save(model.module.state_dict(), checkpoint)
    _extract(store, [f"shapes=imagefolder:{image_folder}"], models=[f"openclip:embedstore-tiny@{checkpoint}"])
    torch.save(load_model("openclip:embedstore-tiny@random:5").module.state_dict(), checkpoint)
    with pytest.raises(FingerprintMismatch, match="changed since"):
        _extract(store, [f"shapes=imagefolder:{image_folder}"], models=[f"openclip:embedstore-tiny@{checkpoint}"])


def test_missing_root_and_weights_stop_before_any_work(store, tmp_path):
    with pytest.raises(EmbedstoreError, match="nowhere"):
        _extract(store, [f"x=imagefolder:{tmp_path / 'nowhere'}"])
    with pytest.raises(EmbedstoreError, match="missing.pt"):
        _extract(store, ["s=synthetic:shapes?n=8"], models=[f"openclip:embedstore-tiny@{tmp_path / 'missing.pt'}"])
    assert store.list_arrays() == [] and store.query("SELECT * FROM datasets") == []


def test_a_store_created_for_a_refused_run_is_removed_again(tmp_path, image_folder):
    said: list[str] = []
    refused = plan_from_args([CLIP], [f"x=imagefolder:{tmp_path / 'nowhere'}"], workers=0)
    with pytest.raises(EmbedstoreError, match="nowhere"):
        run_extraction_at(tmp_path / "new-store", refused, log=said.append, progress=False)
    assert not (tmp_path / "new-store").exists() and "nothing was written" in said[-1]
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmbedstoreError, match="nowhere"):
        run_extraction_at(tmp_path / "empty", refused, log=said.append, progress=False)
    assert (tmp_path / "empty").is_dir() and not any((tmp_path / "empty").iterdir())
    works = plan_from_args([CLIP], [f"shapes=imagefolder:{image_folder}"], workers=0, chunk_rows=8, batch_size=4)
    run_extraction_at(tmp_path / "new-store", works, log=said.append, progress=False)
    with pytest.raises(EmbedstoreError, match="nowhere"):  # an existing store is never removed
        run_extraction_at(tmp_path / "new-store", refused, log=said.append, progress=False)
    assert Store.exists(tmp_path / "new-store") and Store.open(tmp_path / "new-store").list_arrays()


def test_caption_dataset_writes_caption_embeddings(store):
    report = _extract(store, ["caps=synthetic:shapes-captions?n=12&seed=0"], models=[CLIP])
    assert {(a.name, a.status) for a in report.arrays} == {("image_emb", "complete"), ("caption_emb", "complete")}
    captions = store.caption_table("caps")
    emb = store.read_array("caps", "openclip:embedstore-tiny@random:0", "caption_emb")
    assert emb.shape == (len(captions["text"]), 32) and len(captions["text"]) > 12


def test_the_extract_command_ends_with_one_line_on_the_run(tmp_path):
    from click.testing import CliRunner

    from embedstore_cli.main import cli

    args = ["extract", "--store", str(tmp_path / "s"), "--model", CLIP, "--dataset", "d=synthetic:shapes?n=8&size=32",
            "--workers", "0", "--device", "cpu", "--batch-size", "4", "--chunk-rows", "8", "--no-progress"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "8 images in " in result.output and "on cpu (fp32, cpu decode, 0 workers); bad samples: none" in result.output
