import numpy as np
import pytest
import yaml

from clip2scene_core.vocabulary import IGNORE, Vocabulary, VocabularyError, load_vocabulary, shipped_vocabularies


@pytest.mark.parametrize("name, classes, first", [("nuscenes", 16, "barrier"), ("semantickitti", 19, "car"),
                                                  ("scannet", 20, "wall")])
def test_shipped_vocabularies_load(name, classes, first):
    vocabulary = load_vocabulary(name)
    assert len(vocabulary) == classes and vocabulary.names[0] == first
    assert vocabulary.colors.shape == (classes, 3) and all(c.prompts for c in vocabulary.classes)


def test_standard_mappings():
    kitti = load_vocabulary("semantickitti")
    # moving car -> car, lane marking -> road, moving bus -> other-vehicle; outlier/other-structure ignored
    raw = np.array([10, 252, 60, 257, 1, 52, 0, 99, 81])
    assert [kitti.names[i] if i >= 0 else None for i in kitti.raw_to_class(raw)] == \
        ["car", "car", "road", "other-vehicle", None, None, None, None, "traffic-sign"]
    nuscenes = load_vocabulary("nuscenes")
    assert [nuscenes.names[i] for i in nuscenes.raw_to_class([2, 3, 4, 6, 15, 16])] == \
        ["pedestrian"] * 4 + ["bus"] * 2
    assert nuscenes.raw_to_class([0, 31, 5, 7, 8]).tolist() == [IGNORE] * 5
    assert sorted(shipped_vocabularies()) == shipped_vocabularies()


def write(tmp_path, data):
    path = tmp_path / "vocab.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("data, message", [
    ({"classes": [{"name": "car"}]}, "key 'name' is missing"),
    ({"name": "v", "classes": []}, "'classes' is empty"),
    ({"name": "v", "classes": [{"name": "car"}, {"name": "car"}]}, "class name 'car' appears twice"),
    ({"name": "v", "classes": [{"name": "car", "ids": [1]}, {"name": "bus", "ids": [1]}]},
     "raw id 1 is in both 'car' and 'bus'"),
    ({"name": "v", "classes": [{"name": "car", "color": [300, 0, 0]}]}, "class 'car': key 'color'"),
    ({"name": "v", "classes": [{"name": "car", "prompt": ["x"]}]}, r"class 'car': unknown key\(s\) \['prompt'\]"),
    ({"name": "v", "classes": [{"name": "car", "prompts": []}]}, "class 'car': key 'prompts'"),
    ({"name": "v", "classes": [{"name": "car", "ids": ["7"]}]}, "class 'car': key 'ids'"),
    ({"name": "v", "classes": [{"name": ""}]}, r"classes\[0\]: key 'name' is missing or empty"),
    ({"name": "v", "clases": []}, r"unknown key\(s\) \['clases'\]"),
])
def test_errors_name_the_key_and_class(tmp_path, data, message):
    with pytest.raises(VocabularyError, match=message):
        Vocabulary.load(write(tmp_path, data))


def test_defaults_and_round_trip(tmp_path):
    vocabulary = Vocabulary.load(write(tmp_path, {"name": "v", "classes": [{"name": "car"}, {"name": "tree",
                                                                                            "prompts": "a tree"}]}))
    assert vocabulary.classes[0].prompts == ["car"] and vocabulary.classes[1].prompts == ["a tree"]
    assert vocabulary.colors[0].tolist() != vocabulary.colors[1].tolist()
    assert not vocabulary.covers_ids and vocabulary.raw_to_class([1, 2]).tolist() == [IGNORE, IGNORE]
    again = Vocabulary.from_dict(vocabulary.to_dict())
    assert again.to_dict() == vocabulary.to_dict()
    assert Vocabulary.from_names(["a", "b"]).names == ["a", "b"]
    with pytest.raises(VocabularyError, match="does not exist"):
        load_vocabulary(tmp_path / "missing.yaml")
    with pytest.raises(VocabularyError, match="shipped vocabularies"):
        load_vocabulary("klingon")
