"""The CLIP teacher on a tiny CLIP loaded through the real open_clip loading code (no network)."""

from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F

from clip2scene_core.frame import Camera, Frame
from clip2scene_core.segmenter import Segmenter
from clip2scene_core.teacher import (ClipConfig, ClipWeightsError, PixelPredictions, TeacherOutput, build_teacher,
                                      predict_points)
from clip2scene_core.teacher.clip_model import DenseClipEncoder, load_clip, resample_positional_embedding
from clip2scene_core.teacher.labels import LabelImageTeacher, NoisyTeacher, confusable
from clip2scene_core.teacher.maskclip import MaskClipTeacher, preprocess
from clip2scene_core.teacher.text import TEMPLATES, ClipTextEncoder, HashTextEncoder
from clip2scene_core.vocabulary import IGNORE, Vocabulary, load_vocabulary
from clip_fixtures import TINY_MODEL, write_tiny_clip
from frames import CAMERA_TO_LIDAR, yaw_pose


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder, checkpoint = write_tiny_clip(tmp_path_factory.mktemp("clip"))
    return ClipConfig(model=TINY_MODEL, pretrained=str(checkpoint), model_config_dir=str(folder), image_size=(64, 96))


@pytest.fixture(scope="module")
def model(tiny):
    return load_clip(tiny)[0]


def diagonal_mask(length: int) -> torch.Tensor:
    mask = torch.full((length, length), float("-inf"))
    return mask.fill_diagonal_(0.0)


@pytest.mark.parametrize("value_path", ["residual", "v_only"])
def test_dense_path_equals_last_block_with_diagonal_attention(model, value_path):
    encoder = DenseClipEncoder(model.visual, value_path)
    images = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    tokens, grid = encoder._tokens(images)
    visual = model.visual
    for block in visual.transformer.resblocks[:-1]:
        tokens = block(tokens)
    last = visual.transformer.resblocks[-1]
    mask = diagonal_mask(tokens.shape[1])
    if value_path == "residual":
        reference = last(tokens, attn_mask=mask)           # open_clip's own block, each token attending to itself
    else:
        reference = last.attention(last.ln_1(tokens), attn_mask=mask)
    reference = F.normalize(visual.ln_post(reference[:, 1:]) @ visual.proj, dim=-1)
    dense = encoder(images)
    assert dense.shape == (2, 32, 4, 6) and grid == (4, 6)
    assert torch.allclose(dense.flatten(2).transpose(1, 2), reference, atol=1e-5)


def test_pooled_path_reproduces_encode_image(model):
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(DenseClipEncoder(model.visual).pooled(images), model.encode_image(images), atol=1e-6)


def test_dense_and_pooled_paths_share_the_tokens_before_the_last_block(model):
    encoder = DenseClipEncoder(model.visual)
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    tokens, grid = encoder.tokens(images)
    assert torch.allclose(encoder.dense(tokens, grid), encoder(images), atol=1e-6)
    assert torch.allclose(encoder.pool(tokens), model.encode_image(images), atol=1e-6)


def test_positional_embedding_resampling(model):
    positional = model.visual.positional_embedding
    assert resample_positional_embedding(positional, (4, 4)) is positional
    resampled = resample_positional_embedding(positional, (6, 10))
    assert resampled.shape == (1 + 60, positional.shape[1]) and torch.equal(resampled[0], positional[0])


def test_checkpoint_file_loads_the_same_weights(tiny, model):
    again, mean, std = load_clip(tiny)
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name
    assert mean.shape == (3,) and std.shape == (3,)


def test_pretrained_tag_found_in_the_hugging_face_cache(tiny, tmp_path, monkeypatch):
    # A user who ran open_clip once has the tag's file in the HF cache: it must load offline from there.
    repo = tmp_path / "hub" / "models--clip2scene--tiny-test"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (snapshot / "open_clip_pytorch_model.bin").write_bytes(open(tiny.pretrained, "rb").read())
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, TINY_MODEL,
                        {"cached": {"hf_hub": "clip2scene/tiny-test/", "quick_gelu": False}})
    config = ClipConfig(model=TINY_MODEL, pretrained="cached", cache_dir=str(tmp_path / "hub"),
                        model_config_dir=tiny.model_config_dir)
    loaded, _, _ = load_clip(config)
    reference, _, _ = load_clip(tiny)
    assert torch.equal(loaded.visual.proj, reference.visual.proj)
    # The same tag with an empty cache: a clear error naming what was looked for, nothing downloaded.
    config.cache_dir = str(tmp_path / "empty")
    with pytest.raises(ClipWeightsError, match=r"clip2scene/tiny-test/open_clip_model.safetensors.*allow_download"):
        load_clip(config)


def test_missing_weights_errors():
    with pytest.raises(ClipWeightsError, match=r"ViT-B-16/openai are not on this machine.*clip.pretrained"):
        load_clip(ClipConfig(model="ViT-B-16", pretrained="openai", cache_dir="/nonexistent"))
    with pytest.raises(ClipWeightsError, match="checkpoint file /no/such/file.pt does not exist"):
        load_clip(ClipConfig(model="ViT-B-16", pretrained="/no/such/file.pt"))
    with pytest.raises(ClipWeightsError, match="neither a checkpoint file nor a pretrained tag"):
        load_clip(ClipConfig(model="ViT-B-16", pretrained="not-a-tag"))
    with pytest.raises(ValueError, match="unknown CLIP model"):
        load_clip(ClipConfig(model="ViT-Z-99"))


def test_text_embeddings_ensemble_85_templates_and_cache_per_class(model, tiny, tmp_path):
    assert len(TEMPLATES) == 85 and len(set(TEMPLATES)) == 85 and all("{}" in t for t in TEMPLATES)
    encoder = ClipTextEncoder(model, TINY_MODEL, tiny.weights_id, cache_dir=tmp_path)
    vocabulary = Vocabulary.from_names(["car", "tree", "road"])
    embeddings = encoder.embed(vocabulary)
    assert embeddings.shape == (3, 32) and torch.allclose(embeddings.norm(dim=1), torch.ones(3))
    tokens = open_clip.get_tokenizer(TINY_MODEL)([t.format("tree") for t in TEMPLATES])
    with torch.no_grad():
        expected = F.normalize(F.normalize(model.encode_text(tokens), dim=-1).mean(0), dim=0)
    assert torch.allclose(embeddings[1], expected, atol=1e-5)
    assert encoder.embedded_classes == 3
    changed = Vocabulary.from_names(["car", "tree", "sidewalk"])
    again = encoder.embed(changed)
    assert encoder.embedded_classes == 4  # only "sidewalk" went through the text tower
    assert torch.equal(again[:2], embeddings[:2])
    fresh = ClipTextEncoder(model, TINY_MODEL, tiny.weights_id, cache_dir=tmp_path)
    assert torch.equal(fresh.embed(changed), again) and fresh.embedded_classes == 0


def test_weights_of_the_same_name_and_size_do_not_share_cached_embeddings(tiny, tmp_path):
    _, other = write_tiny_clip(tmp_path / "other", seed=1)  # also tiny.pt, of the same size
    assert other.name == Path(tiny.pretrained).name and other.stat().st_size == Path(tiny.pretrained).stat().st_size
    other_config = ClipConfig(model=TINY_MODEL, pretrained=str(other), model_config_dir=tiny.model_config_dir)
    assert other_config.weights_id != tiny.weights_id
    copied = tmp_path / "copy" / "tiny.pt"
    copied.parent.mkdir()
    copied.write_bytes(Path(tiny.pretrained).read_bytes())
    assert ClipConfig(model=TINY_MODEL, pretrained=str(copied)).weights_id == tiny.weights_id


@pytest.mark.parametrize("name", ["nuscenes", "semantickitti", "scannet"])
def test_shipped_vocabularies_embed(model, tiny, tmp_path, name):
    vocabulary = load_vocabulary(name)
    embeddings = ClipTextEncoder(model, TINY_MODEL, tiny.weights_id, cache_dir=tmp_path).embed(vocabulary)
    assert embeddings.shape == (len(vocabulary), 32) and torch.isfinite(embeddings).all()
    assert HashTextEncoder().embed(vocabulary).shape == (len(vocabulary), 512)


def camera(name, width, height, yaw=0.0, image=None, labels=None) -> Camera:
    image = image if image is not None else np.random.default_rng(0).integers(0, 255, (height, width, 3), np.uint8)
    K = [[width / 2, 0, width / 2 - 0.5], [0, width / 2, height / 2 - 0.5], [0, 0, 1]]
    return Camera(name, image, K, np.linalg.inv(yaw_pose(yaw) @ CAMERA_TO_LIDAR), label_image=labels)


def test_maskclip_teacher_on_cameras_of_any_size(tiny, tmp_path):
    vocabulary = Vocabulary.from_names(["car", "tree", "road"])
    teacher = MaskClipTeacher(vocabulary, tiny, text_cache_dir=tmp_path)
    cameras = [camera("front", 160, 90), camera("left", 120, 120, yaw=np.pi / 2)]
    output = teacher.predict(cameras)
    assert output.features.shape == (2, 32, 4, 6)
    uv = np.array([[0.0, 0.0], [80, 45], [159, 89]])
    pixel = output.at(0, uv)
    assert pixel.features.shape == (3, 32) and torch.allclose(pixel.features.norm(dim=1), torch.ones(3), atol=1e-5)
    expected = (pixel.features @ teacher.text_embeddings.T).argmax(1)
    assert torch.equal(pixel.labels, expected) and ((0 < pixel.confidence) & (pixel.confidence <= 1)).all()
    labels = output.label_image(1)
    assert labels.shape == (120, 120) and labels.min() >= 0 and labels.max() < 3
    assert np.array_equal(output.at(1, np.array([[60.0, 60.0]])).labels.numpy(), labels[60:61, 60])
    # The image-level embedding of each view: CLIP's pooled one of the preprocessed crop (the pooled path equals
    # encode_image, test above), normalised.
    embeddings = output.image_embeddings()
    x, _ = preprocess([cameras[0].image], tiny.image_size, tiny.resize, teacher.mean, teacher.std, "cpu")
    with torch.no_grad():
        reference = F.normalize(teacher.encoder.pooled(x), dim=1)
    assert embeddings.shape == (2, 32) and torch.allclose(embeddings[:1], reference, atol=1e-5)


def test_crop_mode_leaves_pixels_outside_the_crop_unlabelled(tiny, tmp_path):
    config = ClipConfig(**{**tiny.__dict__, "resize": "crop", "image_size": (64, 64)})
    teacher = MaskClipTeacher(Vocabulary.from_names(["a", "b"]), config, text_cache_dir=tmp_path)
    output = teacher.predict([camera("wide", 200, 100)])
    pixel = output.at(0, np.array([[2.0, 50], [100, 50], [197, 50]]))
    assert pixel.labels.tolist()[0] == IGNORE and pixel.labels.tolist()[2] == IGNORE and pixel.labels[1] >= 0


def label_vocabulary() -> Vocabulary:
    names = {"car": 17, "truck": 23, "road": 24, "tree": 30}
    return Vocabulary.from_dict({"name": "t", "classes": [{"name": name, "ids": [i]} for name, i in names.items()]})


def test_label_teacher_maps_raw_ids_and_uses_text_embeddings():
    raw = np.full((20, 30), 24)
    raw[5:10, 5:15] = 17
    raw[0, 0] = 99  # not in the vocabulary
    teacher = LabelImageTeacher(label_vocabulary(), HashTextEncoder(64))
    output = teacher.predict([camera("front", 30, 20, labels=raw)])
    pixel = output.at(0, np.array([[7.0, 7.0], [0.2, 0.3], [25, 15]]))
    assert pixel.labels.tolist() == [0, IGNORE, 2]
    assert torch.equal(pixel.features[0], teacher.text_embeddings[0])
    assert torch.equal(pixel.features[1], torch.zeros(64))
    # A view's image-level embedding: the area-weighted mix of its classes (car 1/6 of this image, road the rest).
    view = np.full((48, 64), 24)
    view[:16, :32] = 17
    mix = F.normalize(teacher.text_embeddings[0] * 1 / 6 + teacher.text_embeddings[2] * 5 / 6, dim=0)
    pooled = teacher.predict([camera("front", 64, 48, labels=view)]).image_embeddings()
    assert pooled.shape == (1, 64) and torch.allclose(pooled[0], mix, atol=1e-6)
    with pytest.raises(ValueError, match="has no label image"):
        teacher.predict([camera("front", 30, 20)])
    with pytest.raises(ValueError, match="lists no 'ids'"):
        LabelImageTeacher(Vocabulary.from_names(["car"]), HashTextEncoder(8))


def test_noisy_teacher_corrupts_at_the_rate_deterministically():
    rng = np.random.default_rng(3)
    raw = np.full((90, 160), 24)
    raw[:30] = 30
    for _ in range(6):
        r, c = rng.integers(30, 80), rng.integers(0, 140)
        raw[r:r + 10, c:c + 20] = rng.choice([17, 23])
    cam = camera("front", 160, 90, labels=raw)
    base = LabelImageTeacher(label_vocabulary(), HashTextEncoder(16))
    truth = base.class_images([cam])[0]
    for rate in (0.1, 0.3, 0.5):
        noisy = NoisyTeacher(base, rate, seed=1).predict([cam]).label_image(0)
        wrong = (noisy != truth).mean()
        assert 0.5 * rate < wrong < 1.5 * rate, (rate, wrong)
        assert set(np.unique(noisy)) <= {0, 1, 2, 3}
        assert np.array_equal(noisy, NoisyTeacher(base, rate, seed=1).predict([cam]).label_image(0))
        assert not np.array_equal(noisy, NoisyTeacher(base, rate, seed=2).predict([cam]).label_image(0))
    assert np.array_equal(NoisyTeacher(base, 0.0).predict([cam]).label_image(0), truth)
    with pytest.raises(ValueError, match="noise rate"):
        NoisyTeacher(base, 1.5)


def test_noisy_teacher_features_behave_like_maskclip():
    """A noisy point near the label's embedding, the true class close behind where the label is wrong, the
    confusable classes nearer than the others, and noise that is smooth across the image."""
    vocabulary = load_vocabulary("nuscenes")
    height, width = 72, 128
    raw = np.full((height, width), 24)           # driveable surface below ...
    raw[:36] = 30                                # ... vegetation above
    raw[40:60, 20:60] = 17                       # a car
    cam = camera("front", width, height, labels=raw)
    cam.stamp_ns = 5
    teacher = NoisyTeacher(LabelImageTeacher(vocabulary, HashTextEncoder()), 0.3, seed=1)
    output = teacher.predict([cam])
    rows, cols = np.mgrid[0:height, 0:width]
    uv = np.stack([cols.ravel(), rows.ravel()], axis=1).astype(np.float32)
    pixels = output.at(0, uv)
    truth = vocabulary.raw_to_class(raw).ravel()
    labels = pixels.labels.numpy()
    assert torch.allclose(pixels.features.norm(dim=1), torch.ones(len(uv)), atol=1e-5)
    scores = (pixels.features @ teacher.text_embeddings.T).numpy()
    assert (scores.argmax(1) == labels).all()                  # the pseudo label is the feature's argmax
    wrong = labels != truth
    assert 0.1 < wrong.mean() < 0.5
    ranked = np.argsort(-scores, axis=1)
    assert (ranked[wrong, 1] == truth[wrong]).mean() > 0.9     # CLIP's second guess: the true class
    # Confusable classes are closer than the others (car: truck, bus, ...; road: sidewalk, terrain, ...).
    partners = np.zeros_like(scores, dtype=bool)
    for index, others in enumerate(confusable(vocabulary)):
        partners[labels == index] = np.isin(np.arange(len(vocabulary)), others)
    others = ~partners & (np.arange(len(vocabulary))[None, :] != labels[:, None])
    right = ~wrong
    assert scores[right][partners[right]].mean() > scores[right][others[right]].mean() + 0.05
    assert 0.3 < scores[~wrong, :][np.arange((~wrong).sum()), labels[~wrong]].mean() < 0.9  # near, not on, the text
    # Smooth noise: neighbouring pixels of one class agree more than distant ones.
    grid = pixels.features.reshape(height, width, -1)
    near = F.cosine_similarity(grid[5:30, 10:100], grid[5:30, 11:101], dim=2).mean()
    far = F.cosine_similarity(grid[5:30, 10:30], grid[5:30, 100:120], dim=2).mean()
    assert near > far + 0.05
    again = teacher.predict([cam]).at(0, uv)
    assert torch.equal(again.features, pixels.features)        # deterministic per camera and stamp
    assert (pixels.confidence > 0).all() and (pixels.confidence <= 1).all()


class FixedOutput(TeacherOutput):
    """Every pixel of camera i gets label i with confidence confidences[i] (to check fusion alone)."""

    def __init__(self, confidences):
        self.confidences = confidences

    def at(self, camera_index, uv):
        n = len(uv)
        return PixelPredictions(torch.full((n, 4), float(camera_index)), torch.full((n,), camera_index),
                                torch.full((n,), self.confidences[camera_index]))

    def label_image(self, camera_index):
        raise NotImplementedError


def test_points_take_the_most_confident_camera():
    # 90-degree cameras looking along x and 60 degrees to its left: they overlap between 15 and 45 degrees.
    cameras = [camera("front", 40, 40), camera("left", 40, 40, yaw=np.pi / 3)]
    points = np.array([[10.0, -2, 0], [10, 4, 0], [1, 10, 0], [-10, 0, 0]])  # front, both, left, none
    predictions = predict_points(FixedOutput([0.6, 0.9]), points, cameras, with_features=True)
    assert predictions.camera.tolist() == [0, 1, 1, -1] and predictions.labels.tolist() == [0, 1, 1, IGNORE]
    assert predictions.confidence.tolist() == pytest.approx([0.6, 0.9, 0.9, 0.0])
    assert predictions.features[1].tolist() == [1.0] * 4 and predictions.features[3].tolist() == [0.0] * 4
    assert predict_points(FixedOutput([0.9, 0.6]), points, cameras).camera.tolist() == [0, 0, 1, -1]


def test_label_teacher_points_end_to_end():
    front = camera("front", 40, 40, labels=np.full((40, 40), 17))
    teacher = LabelImageTeacher(label_vocabulary(), HashTextEncoder(8))
    predictions = predict_points(teacher.predict([front]), np.array([[10.0, 0, 0], [-10, 0, 0]]), [front])
    assert predictions.labels.tolist() == [0, IGNORE] and predictions.seen.tolist() == [True, False]
    # A raw id the vocabulary does not cover: in view, but unlabelled (and still an in-view point in evaluation).
    unknown = camera("front", 40, 40, labels=np.full((40, 40), 99))
    predictions = predict_points(teacher.predict([unknown]), np.array([[10.0, 0, 0], [-10, 0, 0]]), [unknown])
    assert predictions.seen.tolist() == [False, False] and predictions.in_view.tolist() == [True, False]
    frame = Frame(points=np.array([[10.0, 0, 0], [-10, 0, 0]], np.float32), stamp_ns=0, cameras=[unknown])
    segmentation = Segmenter(label_vocabulary(), "teacher", teacher=teacher).segment(frame)
    assert segmentation.labels.tolist() == [IGNORE, IGNORE] and segmentation.seen.tolist() == [True, False]


def test_teacher_names(tiny, tmp_path):
    vocabulary = label_vocabulary()
    assert isinstance(build_teacher("labels", vocabulary, text_encoder="hash"), LabelImageTeacher)
    noisy = build_teacher("noisy:0.25", vocabulary, text_encoder="hash", seed=3)
    assert isinstance(noisy, NoisyTeacher) and noisy.rate == 0.25 and noisy.seed == 3
    assert isinstance(build_teacher("maskclip", vocabulary, tiny, text_cache_dir=tmp_path), MaskClipTeacher)
    clip_text = build_teacher("labels", vocabulary, tiny, text_encoder="auto", text_cache_dir=tmp_path)
    assert isinstance(clip_text.text_encoder, ClipTextEncoder)
    for bad, message in [("noisy:lots", "noisy:RATE"), ("magic", "unknown teacher"), ("maskclip:x", "no argument")]:
        with pytest.raises(ValueError, match=message):
            build_teacher(bad, vocabulary, tiny, text_encoder="hash")
