"""Simulated beamline devices: a tomography detector, rotation stage, sample stage, shutter.

The detector's image on trigger is the exact projection of a phantom at the rotation
stage's current angle, times a beam (flat-field) profile with per-pixel gain, plus dark
current, read noise and Poisson noise. With the shutter closed it sees only dark current;
with the sample moved out of the beam it sees the flat field. The plans drive these with
standard bluesky stubs, so the same plans drive EPICS devices unchanged.

Like a beamline detector, the simulated one can put its images in the events (``assets=
"inline"``) or write them to HDF5 files (areaDetector layout, dataset ``/entry/data/data``)
and emit asset documents: Resource/Datum with spec ``AD_HDF5`` as ophyd's areaDetector HDF5
plugin does (``"resource"``), or StreamResource/StreamDatum as ophyd-async detectors do
(``"stream"``). Files are written in SWMR mode and flushed after each frame, so readers in
this or another process see every frame as soon as it is taken.
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from ophyd import Component as Cpt
from ophyd import Device, Signal
from ophyd.sim import SynAxis
from ophyd.status import Status
from scipy import ndimage

from ..errors import BadInputError
from .phantoms import make_foam
from .volume import Sample, as_sample

SHUTTER_OPEN, SHUTTER_CLOSED = 1, 0
ASSET_MODES = ("inline", "resource", "stream")
IMAGE_DATASET = "/entry/data/data"  # where the areaDetector HDF5 plugin puts frames
NO_ASSET_DIR = "assets={assets!r} writes HDF5 files: pass asset_dir=<directory> for them."


class ImageSignal(Signal):
    """A Signal holding a 2D image whose description carries shape and numpy dtype."""

    def describe(self) -> dict:
        description = super().describe()
        value = np.asarray(self.get())
        description[self.name].update(dtype="array", shape=list(value.shape), dtype_numpy=value.dtype.str)
        return description


class SimTomoDetector(Device):
    """A detector that images a phantom in a parallel beam.

    Parameters
    ----------
    phantom : phantom, ndarray or object with ``attenuation()``
        The sample (see :func:`tomolive.sim.volume.as_sample`): a foam or rock phantom, a 3D
        attenuation volume ``(n_slices, ny, nx)`` per pixel, or an object whose
        ``attenuation()`` returns one; detector size is ``(shape[0], shape[2])``.
    rotation, sample_x : SynAxis
        Rotation stage (degrees) and the sample translation that moves it out of the beam.
    shutter : Signal
        ``SHUTTER_OPEN`` (1) or ``SHUTTER_CLOSED`` (0).
    photons : float or None
        Mean photon count per pixel in the open beam; ``None`` for noise-free images.
    dark_counts, read_noise : float
        Dark-current offset and Gaussian read noise (counts).
    sample_in : float
        ``sample_x`` position where the sample sits in the beam; any position further
        than ``out_tolerance`` from it counts as out of the beam.
    seed : int
        Seed of the noise generator.
    beam_drift : float
        How fast the beam's profile drifts: after ``k`` frames since :meth:`stage` the beam is
        multiplied by ``1 + beam_drift * k * u``, ``u`` from -1 to 1 across the detector (a
        tilt that grows through the scan, as a monochromator warming up). 0: a steady beam.
    ring_defects : float
        Fraction of pixels whose response to the sample-attenuated beam differs from their
        response to the open beam (gain off by ``ring_strength``, a relative standard deviation):
        the flats do not correct them, so each adds a ring to its slice. 0: none.
    ring_strength : float
        Relative standard deviation of those pixels' gain error.
    ring_width : int
        Columns each defect spans (1: one pixel; more: a scratch or dust on the scintillator).
    assets : {"inline", "resource", "stream"}
        Where images go: in the events; or in HDF5 files announced by Resource/Datum
        (``external: "FILESTORE:"``, spec ``AD_HDF5``) or by StreamResource/StreamDatum
        documents (``external: "STREAM:"``). Between ``stage()`` and ``unstage()`` a new file
        (and Resource or StreamResource) starts whenever the :meth:`frame_kind` changes, as
        beamlines tag dark/flat/projection frames; so each of ``tomo_scan``'s streams has its
        own file, which bluesky-tiled-plugins' TiledWriter needs (it maps one file to one
        stream).
    asset_dir : path, optional
        Directory of the HDF5 files; required unless ``assets="inline"``.
    """

    image = Cpt(ImageSignal, value=np.zeros((1, 1), dtype=np.uint16), kind="normal")

    def __init__(
        self,
        prefix: str = "",
        *,
        name: str,
        phantom: Sample | np.ndarray,
        rotation: SynAxis,
        sample_x: SynAxis,
        shutter: Signal,
        photons: float | None = 5000.0,
        dark_counts: float = 100.0,
        read_noise: float = 2.0,
        sample_in: float = 0.0,
        out_tolerance: float = 1.0,
        seed: int = 0,
        beam_drift: float = 0.0,
        ring_defects: float = 0.0,
        ring_strength: float = 0.05,
        ring_width: int = 1,
        assets: str = "inline",
        asset_dir: str | Path | None = None,
        **kwargs,
    ):
        super().__init__(prefix, name=name, **kwargs)
        if photons is not None and photons <= 0:
            raise BadInputError(f"photons must be positive or None (noise-free); got {photons!r}.")
        self.assets, self.asset_dir = _check_assets(assets, asset_dir)
        self._staged_assets = False
        self._writer: _AssetWriter | None = None
        self._writer_kind: str | None = None
        self._asset_docs: deque[tuple[str, dict]] = deque()
        self._datum_id: str | None = None
        if not 0.0 <= ring_defects <= 1.0:
            raise BadInputError(f"ring_defects must be a fraction in [0, 1]; got {ring_defects!r}.")
        self.phantom = phantom = as_sample(phantom)
        self.beam_drift = float(beam_drift)
        self.frames_taken = 0  # since stage(): the clock of the beam drift
        self.rotation, self.sample_x, self.shutter = rotation, sample_x, shutter
        self.photons, self.dark_counts, self.read_noise = photons, dark_counts, read_noise
        self.sample_in, self.out_tolerance = sample_in, out_tolerance
        self._rng = np.random.default_rng(seed)
        self.beam_profile = _beam_profile(phantom.shape[0], phantom.shape[2], seed)
        self.defect_gain = _defect_gain(self.beam_profile.shape, ring_defects, ring_strength, ring_width, seed)
        self.image.put(np.zeros((phantom.shape[0], phantom.shape[2]), dtype=np.uint16))

    def frame_kind(self) -> str:
        """``"dark"`` (shutter closed), ``"flat"`` (sample out of the beam) or ``"projection"``."""
        if self.shutter.get() != SHUTTER_OPEN:
            return "dark"
        if abs(self.sample_x.position - self.sample_in) > self.out_tolerance:
            return "flat"
        return "projection"

    def expected_counts(self) -> np.ndarray:
        """Mean counts (float64) for the current stage, shutter and sample positions."""
        level = self.photons if self.photons is not None else 10000.0
        kind = self.frame_kind()
        beam = np.zeros_like(self.beam_profile) if kind == "dark" else level * self.beam_profile
        if self.beam_drift:
            beam = beam * (1.0 + self.beam_drift * self.frames_taken * np.linspace(-1.0, 1.0, beam.shape[1]))
        if kind == "projection":
            angle = np.deg2rad(self.rotation.position)
            beam = beam * np.exp(-self.phantom.project(angle).astype(np.float64)) * self.defect_gain
        return beam + self.dark_counts

    def trigger(self) -> Status:
        counts = self.expected_counts()
        if self.photons is not None:
            counts = self._rng.poisson(counts - self.dark_counts) + self.dark_counts
            counts = counts + self._rng.normal(0.0, self.read_noise, counts.shape)
        image = np.clip(np.rint(counts), 0, np.iinfo(np.uint16).max).astype(np.uint16)
        self.frames_taken += 1
        self.image.put(image)
        if self.assets != "inline":
            self._write(image)
        status = Status(obj=self)
        status.set_finished()
        return status

    def _write(self, image: np.ndarray) -> None:
        """Append ``image`` to the file of its frame kind and queue its asset documents."""
        if not self._staged_assets:
            raise BadInputError(
                f"detector {self.name!r} writes its frames to files between stage() and "
                f"unstage() (assets={self.assets!r}); stage it before trigger(), as bluesky "
                "plans do."
            )
        kind = self.frame_kind()
        if self._writer is None or kind != self._writer_kind:
            self._close_file()
            path = self._files_dir() / f"{self.name}_{kind}_{uuid.uuid4()}.h5"
            writer = _ResourceWriter if self.assets == "resource" else _StreamWriter
            self._writer = writer(path, self.image.name, image.shape, image.dtype)
            self._writer_kind = kind
        docs = self._writer.write(image)
        self._asset_docs.extend(docs)
        self._datum_id = docs[-1][1].get("datum_id")

    def _files_dir(self) -> Path:
        """``asset_dir``, which file assets require (checked in ``__init__``)."""
        if self.asset_dir is None:
            raise BadInputError(NO_ASSET_DIR.format(assets=self.assets))
        return self.asset_dir

    def _close_file(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._writer, self._writer_kind = None, None

    def stage(self) -> list:
        """Stage; with external assets, get ready to write files into ``asset_dir``."""
        staged = super().stage()
        self.frames_taken = 0
        if self.assets != "inline":
            self._files_dir().mkdir(parents=True, exist_ok=True)
            self._staged_assets = True
        return staged

    def unstage(self) -> list:
        """Close the open HDF5 file, then unstage."""
        self._close_file()
        self._staged_assets, self._datum_id = False, None
        return super().unstage()

    def describe(self) -> dict:
        """As ophyd's, with ``external`` set on the image when it lives in a file."""
        description = super().describe()
        if self.assets != "inline":
            description[self.image.name]["external"] = _EXTERNAL[self.assets]
        return description

    def read(self) -> dict:
        """The image inline, as a datum id (``"resource"``) or absent (``"stream"``)."""
        reading = super().read()
        if self.assets == "resource":
            reading[self.image.name]["value"] = self._datum_id
        elif self.assets == "stream":
            del reading[self.image.name]
        return reading

    def collect_asset_docs(self) -> Iterator[tuple[str, dict]]:
        """Asset documents of frames written since the last call; bluesky calls it on read."""
        while self._asset_docs:
            yield self._asset_docs.popleft()


def _beam_profile(rows: int, cols: int, seed: int) -> np.ndarray:
    """A smooth beam (brighter in the middle) times a fixed per-pixel gain pattern."""
    rng = np.random.default_rng(seed + 1)
    v = np.linspace(-1.0, 1.0, rows)[:, None]
    u = np.linspace(-1.0, 1.0, cols)[None, :]
    smooth = np.exp(-(v**2) / 2.0 - u**2 / 4.0)
    gain = 1.0 + 0.03 * rng.standard_normal((rows, cols))
    return smooth * gain


def _defect_gain(shape: tuple[int, ...], fraction: float, strength: float, width: int, seed: int) -> np.ndarray:
    """Per-pixel gain on the sample-attenuated beam only: 1, or ``1 + strength * N(0, 1)`` on
    ``fraction`` of pixels, each defect spanning ``width`` columns."""
    if width < 1:
        raise BadInputError(f"ring_width must be a whole number of columns >= 1; got {width!r}.")
    error = np.zeros(shape)
    if fraction > 0:
        rng = np.random.default_rng(seed + 2)
        bad = rng.random(shape) < fraction
        error[bad] = strength * rng.standard_normal(int(bad.sum()))
        error = ndimage.convolve1d(error, np.ones(int(width)), axis=1, mode="constant", origin=-(int(width) // 2))
    return np.clip(1.0 + error, 0.05, None)


def _check_assets(assets: str, asset_dir: str | Path | None) -> tuple[str, Path | None]:
    if assets not in ASSET_MODES:
        raise BadInputError(f"assets must be one of {ASSET_MODES!r}; got {assets!r}.")
    if assets != "inline" and asset_dir is None:
        raise BadInputError(NO_ASSET_DIR.format(assets=assets))
    return assets, None if asset_dir is None else Path(asset_dir).resolve()


_EXTERNAL = {"resource": "FILESTORE:", "stream": "STREAM:"}


class _FrameFile:
    """One growing frame stack in an HDF5 file, written in SWMR mode and flushed per frame."""

    def __init__(self, path: Path, frame_shape: tuple[int, ...], dtype: np.dtype):
        self.path = path
        self.chunk_shape = (1, *frame_shape)
        self._file = h5py.File(path, "w", libver="latest")
        self._data = self._file.create_dataset(
            IMAGE_DATASET,
            shape=(0, *frame_shape),
            maxshape=(None, *frame_shape),
            dtype=dtype,
            chunks=self.chunk_shape,
        )
        self._file.swmr_mode = True

    def append(self, frame: np.ndarray) -> int:
        """Write ``frame`` after the last one and flush it; return its index."""
        index = self._data.shape[0]
        self._data.resize(index + 1, axis=0)
        self._data[index] = frame
        self._data.flush()
        return index

    def close(self) -> None:
        self._file.close()


class _AssetWriter(ABC):
    """Writes frames to a :class:`_FrameFile` and makes the documents that announce them."""

    def __init__(self, path: Path, data_key: str, frame_shape: tuple[int, ...], dtype: np.dtype):
        self.file = _FrameFile(path, frame_shape, dtype)
        self.data_key = data_key
        self.uid = str(uuid.uuid4())

    def write(self, frame: np.ndarray) -> list[tuple[str, dict]]:
        """Append ``frame``; return its (Stream)Datum, after the (Stream)Resource if first."""
        index = self.file.append(frame)
        datum = self._datum_doc(index)
        return [self._resource_doc(), datum] if index == 0 else [datum]

    def close(self) -> None:
        self.file.close()

    @abstractmethod
    def _resource_doc(self) -> tuple[str, dict]: ...

    @abstractmethod
    def _datum_doc(self, index: int) -> tuple[str, dict]: ...


class _ResourceWriter(_AssetWriter):
    """Resource (spec ``AD_HDF5``) + one Datum per frame, as ophyd's areaDetector HDF5 plugin."""

    def _resource_doc(self) -> tuple[str, dict]:
        path = self.file.path
        return "resource", {
            "uid": self.uid,
            "spec": "AD_HDF5",
            "root": str(path.parent),
            "resource_path": path.name,
            "resource_kwargs": {"frame_per_point": 1},
            "path_semantics": "posix",
        }

    def _datum_doc(self, index: int) -> tuple[str, dict]:
        return "datum", {
            "datum_id": f"{self.uid}/{index}",
            "resource": self.uid,
            "datum_kwargs": {"point_number": index},
        }


class _StreamWriter(_AssetWriter):
    """StreamResource + one StreamDatum per frame, as ophyd-async's HDF5 writers.

    bluesky fills in ``run_start``, the StreamDatum's ``descriptor`` and its ``seq_nums``.
    """

    def _resource_doc(self) -> tuple[str, dict]:
        return "stream_resource", {
            "uid": self.uid,
            "data_key": self.data_key,
            "mimetype": "application/x-hdf5",
            "uri": f"file://localhost{self.file.path.as_posix()}",
            "parameters": {"dataset": IMAGE_DATASET, "chunk_shape": list(self.file.chunk_shape)},
        }

    def _datum_doc(self, index: int) -> tuple[str, dict]:
        return "stream_datum", {
            "uid": f"{self.uid}/{index}",
            "stream_resource": self.uid,
            "descriptor": "",
            "indices": {"start": index, "stop": index + 1},
            "seq_nums": {"start": 0, "stop": 0},
        }


@dataclass
class SimBeamline:
    """The simulated devices a tomography plan needs, wired together."""

    detector: SimTomoDetector
    rotation: SynAxis
    sample_x: SynAxis
    shutter: Signal
    phantom: Sample
    sample_out: float = 20.0


def make_sim_beamline(
    phantom: Sample | np.ndarray | None = None,
    *,
    photons: float | None = 5000.0,
    seed: int = 0,
    beam_drift: float = 0.0,
    ring_defects: float = 0.0,
    ring_strength: float = 0.05,
    ring_width: int = 1,
    prefix: str = "sim",
    assets: str = "inline",
    asset_dir: str | Path | None = None,
) -> SimBeamline:
    """Create a simulated detector, rotation stage, sample stage and shutter.

    Parameters
    ----------
    phantom : phantom, ndarray or object with ``attenuation()``, optional
        The sample (see :class:`SimTomoDetector`): e.g. ``make_rock(...)``, your own 3D
        attenuation volume per pixel, or default a seeded 64-slice, 128-pixel-wide foam.
    photons : float or None
        Open-beam photons per pixel (sets the noise); ``None`` for noise-free images.
    seed : int
        Noise seed.
    beam_drift, ring_defects, ring_strength, ring_width
        A drifting beam and pixels the flats do not correct (see :class:`SimTomoDetector`).
    prefix : str
        Prefix of the device names (``sim_det``, ``sim_rotation``, ...).
    assets : {"inline", "resource", "stream"}
        How the detector hands over images (see :class:`SimTomoDetector`).
    asset_dir : path, optional
        Directory of the detector's HDF5 files; required unless ``assets="inline"``.
    """
    phantom = as_sample(make_foam((64, 128, 128), seed=seed) if phantom is None else phantom)
    rotation = SynAxis(name=f"{prefix}_rotation", labels={"motors"})
    sample_x = SynAxis(name=f"{prefix}_sample_x", labels={"motors"})
    shutter = Signal(name=f"{prefix}_shutter", value=SHUTTER_OPEN)
    detector = SimTomoDetector(
        name=f"{prefix}_det",
        phantom=phantom,
        rotation=rotation,
        sample_x=sample_x,
        shutter=shutter,
        photons=photons,
        seed=seed,
        beam_drift=beam_drift,
        ring_defects=ring_defects,
        ring_strength=ring_strength,
        ring_width=ring_width,
        assets=assets,
        asset_dir=asset_dir,
        labels={"detectors"},
    )
    return SimBeamline(detector, rotation, sample_x, shutter, phantom)
