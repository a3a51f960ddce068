"""The registry of file-format versions (hpcblend.io.versions): old files read (migrated) or refused cleanly, new ones too new.

Old-format files are made here synthetically (h5py, astropy, numpy), the way an older hpcblend wrote them:
a schema-1 catalog whose ``/models`` has no ``component``/``chunk0`` columns and no ``format_version``
(before two-component sources), groups and files without their version attribute or card. For every
format a version newer than this hpcblend's fails with an error naming the file, the group (HDU) and the
version.
"""

import h5py
import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS
from mpi4py import MPI

from hpcblend.errors import CatalogError, InputError, SchemaVersionError
from hpcblend.io.blends import BlendData, read_blend, write_blend
from hpcblend.io.catalog import CatalogWriter, TableSpec, open_catalog, read_table
from hpcblend.io.coadd import read_tract, write_tract
from hpcblend.io.gallery import read_gallery, write_gallery
from hpcblend.io.masks import MASK_PLANES, bad_pixel_mask
from hpcblend.io.models import pack_models, read_model
from hpcblend.io.profiles import read_profiles, write_profiles
from hpcblend.io.schema import ERROR_MESSAGE_BYTES, blend_spec, fixed_width_bytes, model_pixel_spec, model_spec
from hpcblend.io.truth import read_truth, write_truth
from hpcblend.io.versions import (FORMATS, MODELS_VERSION, SCHEMA_VERSION, InputVersionError, check_resumable,
                                  check_version, format_versions)

COMM = MPI.COMM_SELF
BANDS = ("g", "r", "i")


# --------------------------------------------------------------------------- the registry


def test_registry_is_consistent():
    assert set(format_versions()) == set(FORMATS) >= {"catalog", "models", "profile", "gallery", "npz_blend",
                                                       "coadd", "truth"}
    for key, fmt in FORMATS.items():
        assert fmt.current in fmt.readable and set(fmt.history) >= set(fmt.readable), key
        assert check_version(key, fmt.current, "f") == fmt.current
    assert check_version("catalog", np.int64(1), "f") == 1  # HDF5 attributes come back as NumPy integers
    assert check_version("coadd", None, "f") == 1  # files from elsewhere record no version
    with pytest.raises(SchemaVersionError, match="f: /models: no format_version"):
        check_version("models", None, "f", "/models")
    with pytest.raises(InputVersionError, match=r"HBCOADD = 'x' is not an integer"):
        check_version("coadd", "x", "f", "HDU 'PRIMARY'")
    with pytest.raises(SchemaVersionError, match="cannot resume: the catalog has schema_version 1"):
        check_resumable(1, "f")
    check_resumable(SCHEMA_VERSION, "f")


# --------------------------------------------------------------------------- catalog and /models


def _components():
    """Rows of two single-component children and one with two components, and their pixels."""
    rng = np.random.default_rng(2)
    morphs = np.zeros((4, 30, 30), np.float32)
    boxes = np.array([[2, 12, 3, 13], [0, 30, 0, 30], [5, 15, 5, 15], [10, 20, 8, 28]])
    for c, (y0, y1, x0, x1) in enumerate(boxes):
        morphs[c, y0:y1, x0:x1] = rng.random((y1 - y0, x1 - x0))
    sed = rng.uniform(1, 10, (4, len(BANDS)))
    return pack_models([11, 12, 13, 13], [10] * 4, sed, morphs, boxes, (100, 200), BANDS, 0.8,
                       component=[0, 0, 0, 1])


def _write_catalog(path, specs, rows):
    w = CatalogWriter(str(path), COMM, specs, attrs={"bands": ",".join(BANDS)})
    w.write_round(rows, ["u"])
    w.finalize()
    return str(path)


def _make_version_1(path, models, pixels):
    """A catalog as hpcblend wrote it before /models had components: schema 1, /models v1, no format_version."""
    old = [n for n in model_spec(BANDS).dtype.names if n not in ("component", "chunk0")]
    v1 = np.zeros(len(models), dtype=[(n, model_spec(BANDS).dtype.fields[n][0]) for n in old])
    for n in old:
        v1[n] = models[n]
    specs = [TableSpec("models", v1.dtype), TableSpec("model_pixels", model_pixel_spec().dtype)]
    _write_catalog(path, specs, {"models": v1, "model_pixels": pixels})
    with h5py.File(path, "r+") as f:
        f.attrs["schema_version"] = 1
        for name in ("attempts", "checksums"):
            del f["ledger"][name]
        assert "format_version" not in f["models"].attrs and "component" not in f["models"].dtype.names
    return str(path)


def test_models_version_1_is_migrated_on_read(tmp_path):
    models, pixels = _components()
    single = models[models["id"] != 13]  # version 1 had one component per child
    new = _write_catalog(tmp_path / "v2.h5", [model_spec(BANDS), model_pixel_spec()],
                         {"models": models, "model_pixels": pixels})
    old = _make_version_1(tmp_path / "v1.h5", single, pixels[pixels["id"] != 13])
    with h5py.File(new, "r") as f:
        assert int(f["models"].attrs["format_version"]) == MODELS_VERSION == 2
        assert int(f["model_pixels"].attrs["format_version"]) == MODELS_VERSION
    with h5py.File(old, "r") as f:  # what failed before: the reader asked for a column the old table lacks
        with pytest.raises(ValueError, match="no field"):
            f["models"][:]["component"]
    for child in (11, 12):
        a, b = read_model(new, child), read_model(old, child)
        assert len(b.components) == 1 and b.box == a.box and b.parent_id == a.parent_id == 10
        np.testing.assert_array_equal(b.image(), a.image())
    assert len(read_table(old, "models")) == 2  # the table itself still reads as stored


def test_models_without_version_attribute_but_with_components_are_version_2(tmp_path):
    """Schema-2 catalogs written before /models recorded its version: the layout says it is version 2."""
    models, pixels = _components()
    path = _write_catalog(tmp_path / "c.h5", [model_spec(BANDS), model_pixel_spec()],
                          {"models": models, "model_pixels": pixels})
    with h5py.File(path, "r+") as f:
        del f["models"].attrs["format_version"]
        del f["model_pixels"].attrs["format_version"]
    assert len(read_model(path, 13).components) == 2


@pytest.mark.parametrize("table", ["models", "model_pixels"])
def test_models_too_new_is_refused(tmp_path, table):
    models, pixels = _components()
    path = _write_catalog(tmp_path / "c.h5", [model_spec(BANDS), model_pixel_spec()],
                          {"models": models, "model_pixels": pixels})
    with h5py.File(path, "r+") as f:
        f[table].attrs["format_version"] = MODELS_VERSION + 1
    with pytest.raises(SchemaVersionError) as err:
        read_model(path, 11)
    msg = str(err.value)
    assert path in msg and f"/{table}" in msg and f"format_version is {MODELS_VERSION + 1}" in msg
    assert "newer" in msg and "upgrade hpcblend" in msg


def test_catalog_schema_too_new_and_too_old(tmp_path):
    path = _write_catalog(tmp_path / "c.h5", [blend_spec()], {"blends": blend_spec().empty(1)})
    for version, words in ((SCHEMA_VERSION + 1, ("newer", "upgrade hpcblend")), (0, ("older", "re-run"))):
        with h5py.File(path, "r+") as f:
            f.attrs["schema_version"] = version
        with pytest.raises(SchemaVersionError) as err:
            open_catalog(path)
        msg = str(err.value)
        assert path in msg and f"schema_version is {version}" in msg and all(w in msg for w in words)
    with h5py.File(path, "r+") as f:
        f.attrs["schema_version"] = "two"
    with pytest.raises(CatalogError, match="schema_version = 'two' is not an integer"):
        open_catalog(path)


# --------------------------------------------------------------------------- /profile, /gallery


def _plain_catalog(path):
    return _write_catalog(path, [blend_spec()], {"blends": blend_spec().empty(1)})


def test_profile_versions(tmp_path):
    path = _plain_catalog(tmp_path / "c.h5")
    write_profiles(path, [{"rank": 0, "stacks": {"stage:fit;a.py:f:1": 3}, "stage_seconds": {"fit": 1.0}}])
    with h5py.File(path, "r+") as f:
        assert int(f["profile"].attrs["profile_version"]) == FORMATS["profile"].current
        del f["profile"].attrs["profile_version"]  # no attribute: the first layout
    assert read_profiles(path)[0]["stacks"] == {"stage:fit;a.py:f:1": 3}
    with h5py.File(path, "r+") as f:
        f["profile"].attrs["profile_version"] = 7
    with pytest.raises(SchemaVersionError) as err:
        read_profiles(path)
    msg = str(err.value)
    assert path in msg and "/profile" in msg and "profile_version is 7" in msg and "upgrade hpcblend" in msg


def test_gallery_versions(tmp_path):
    path = _plain_catalog(tmp_path / "c.h5")
    images = np.ones((1, 4, 4), np.float32)
    write_gallery(path, [{"blend_id": 5, "images": images, "child_boxes": [[0, 0, 4, 4]], "child_bad": [False],
                          "bands": ("g",)}])
    assert read_gallery(path)[0]["blend_id"] == 5
    with h5py.File(path, "r+") as f:
        f["gallery"].attrs["gallery_version"] = 9
    with pytest.raises(SchemaVersionError) as err:
        read_gallery(path)
    assert path in str(err.value) and "/gallery gallery_version is 9" in str(err.value)


# --------------------------------------------------------------------------- npz blends


def _blend():
    psf = np.zeros((1, 3, 3))
    psf[0, 1, 1] = 1.0
    return BlendData(id=1, source="x", bands=("g",), images=np.ones((1, 6, 6), np.float32),
                     variance=np.ones((1, 6, 6), np.float32), mask=None, footprint=np.ones((6, 6), bool),
                     psfs=psf, peaks=np.array([[3, 3]]))


def test_npz_blend_versions(tmp_path):
    path = write_blend(tmp_path / "7.npz", _blend())
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    assert int(arrays.pop("format_version")) == FORMATS["npz_blend"].current
    np.savez(tmp_path / "8.npz", **arrays)  # files from elsewhere record no version
    assert read_blend(tmp_path / "8.npz").id == 8
    for version in (99, 1.5):
        np.savez(tmp_path / "9.npz", format_version=np.asarray(version), **arrays)
        with pytest.raises(InputVersionError) as err:
            read_blend(tmp_path / "9.npz")
        assert isinstance(err.value, InputError) and "9.npz" in str(err.value)
        assert "format_version" in str(err.value) and str(version) in str(err.value)


# --------------------------------------------------------------------------- coadd FITS, truth table


def _tract(directory):
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.0, 2.0]
    w.wcs.crpix = [5.5, 5.5]
    w.wcs.cd = [[-0.168 / 3600.0, 0.0], [0.0, 0.168 / 3600.0]]
    psf = np.zeros((1, 3, 3))
    psf[0, 1, 1] = 1.0
    return write_tract(directory, ("g",), np.ones((1, 10, 10)), np.ones((1, 10, 10)), None, w, psf, tract=3)


@pytest.mark.parametrize("which", ["coadds", "psfs"])
def test_coadd_versions(tmp_path, which):
    paths = _tract(tmp_path)
    assert fits.getheader(paths.coadds["g"], 0)["HBCOADD"] == FORMATS["coadd"].current
    target = getattr(paths, which)["g"]
    with fits.open(target, mode="update") as hdul:
        del hdul[0].header["HBCOADD"]  # a file from the LSST pipeline: no card
    assert read_tract(tmp_path).tract == 3
    with fits.open(target, mode="update") as hdul:
        hdul[0].header["HBCOADD"] = 2
    with pytest.raises(InputVersionError) as err:
        read_tract(tmp_path)
    msg = str(err.value)
    assert target in msg and "HDU 'PRIMARY'" in msg and "HBCOADD is 2" in msg and "upgrade hpcblend" in msg


def test_truth_versions(tmp_path):
    path = str(tmp_path / "truth.fits")
    write_truth(path, Table({"id": np.arange(1, 4), "x": np.zeros(3)}), {"SEED": 4})
    t = read_truth(tmp_path)
    assert list(t["id"]) == [1, 2, 3] and t.meta["SEED"] == 4 and t.meta["HBTRUTH"] == FORMATS["truth"].current
    with fits.open(path, mode="update") as hdul:
        del hdul[0].header["HBTRUTH"]  # written before the card existed
    assert len(read_truth(path)) == 3
    with fits.open(path, mode="update") as hdul:
        hdul[0].header["HBTRUTH"] = 5
    with pytest.raises(InputVersionError, match=r"truth\.fits: HDU 'PRIMARY' HBTRUTH is 5.*newer"):
        read_truth(path)


# --------------------------------------------------------------------------- helpers introduced with the registry


def test_fixed_width_bytes_and_bad_pixel_mask():
    assert fixed_width_bytes("é" * 200, ERROR_MESSAGE_BYTES) == ("é" * 200).encode()[:ERROR_MESSAGE_BYTES]
    assert fixed_width_bytes("/a/" + "d" * 300 + "/7.npz", 256, keep="tail").endswith(b"/7.npz")
    assert fixed_width_bytes("short", 64, keep="tail") == b"short"
    with pytest.raises(ValueError):
        fixed_width_bytes("x", 4, keep="middle")
    var = np.ones((1, 2, 3), np.float32)
    var[0, 0, 0] = 0
    img = np.zeros_like(var)
    img[0, 1, 1] = np.nan
    mask = np.zeros(var.shape, np.int32)
    mask[0, 1, 2] = 1 << MASK_PLANES["SAT"]
    assert bad_pixel_mask(var, mask).tolist() == [[[True, False, False], [False, False, True]]]
    assert bad_pixel_mask(var, mask, images=img).tolist() == [[[True, False, False], [False, True, True]]]
    assert bad_pixel_mask(var, mask, ()).tolist() == [[[True, False, False], [False, False, False]]]
    assert bad_pixel_mask(var, mask, ["CROSSTALK"], mask_planes={"CROSSTALK": 1}).tolist() == \
        bad_pixel_mask(var, mask, ["SAT"]).tolist()
