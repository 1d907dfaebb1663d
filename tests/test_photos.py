"""The bundled real photos load offline as distinct, natural, colour RGB arrays."""

from detector.corpus.photos import bundled_photos, load_photos


def test_bundled_photos_load_offline():
    photos = load_photos()
    names = [n for n, _ in photos]
    assert len(names) == len(set(names)) >= 9  # scikit-image + scikit-learn + matplotlib at least
    for name, array in photos:
        assert array.ndim == 3 and array.shape[2] == 3 and array.dtype.name == "uint8", name
        assert min(array.shape[:2]) >= 256, name  # big enough to cut 128 px crops from


def test_greyscale_photos_are_opt_in():
    plain = {p.name for p in bundled_photos()}
    grey = {p.name for p in bundled_photos(include_greyscale=True)}
    assert "skimage-camera" not in plain and "skimage-camera" in grey
