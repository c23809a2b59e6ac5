"""Tomography's built-in stages, each on the :class:`~tomolive.stages.Stage` protocol.

In pipeline order: :class:`CenterStage` (the rotation axis, while the ``recon`` array is
made), :class:`ReconStage` (the volume's blocks on Dask; QC's slices first, so QC starts
during the reconstruction), :class:`DenoiseStage`, :class:`SegmentStage`,
:class:`QualityStage`; then the user's block stages (:mod:`tomolive.stages`).
"""

from __future__ import annotations

from ...stages import StageContext, VolumeRef
from .analysis import early_qc_rows, record_quality, segment_recon, submit_qc
from .denoising import denoise_scan
from .reconstruction import find_scan_center, new_recon_volume, scan_angles, submit_reconstruction


class CenterStage:
    """The rotation centre (given, or found on a few middle rows), while ``recon`` is created."""

    name = "center"

    def run(self, ctx: StageContext) -> None:
        acquisition = ctx.acquisition
        spool = acquisition.spool
        volume = acquisition.early_volume(ctx.store)
        if volume is None:  # not made during the scan (Tiled was down, or this is the outbox)
            volume = acquisition.recon_volume = ctx.io.submit(
                new_recon_volume, ctx.store, spool.frame_shape, ctx.params
            )
        ctx.results["recon_volume"] = volume
        if acquisition.preview_status is not None:
            ctx.metadata["preview_status"] = acquisition.preview_status
        with ctx.provenance.stage("center"):
            center = find_scan_center(spool, scan_angles(spool), ctx.params)
        ctx.provenance.results["center"] = center.as_dict()
        ctx.results["center"] = center


class ReconStage:
    """The volume, one Dask task per row block, each writing its slab of ``recon``."""

    name = "recon"

    def run(self, ctx: StageContext) -> None:
        spool = ctx.acquisition.spool
        client = ctx.dask_client()
        n_rows, n_cols = spool.frame_shape
        qc_rows = early_qc_rows(ctx.params, n_rows)
        target = ctx.results["recon_volume"].result()
        center = ctx.results["center"]
        recon = submit_reconstruction(spool, center, target, ctx.params, client, ctx.provenance, first_rows=qc_rows)
        ctx.acquisition.blocks_started()
        if qc_rows:
            after = recon.futures_for_rows(qc_rows)
            ctx.results["qc"] = submit_qc(client, target, None, ctx.params, center.confidence, after=after)
        recon.wait(ctx.show_progress, lambda done, total: ctx.report("recon", done, total))
        ctx.volumes["recon"] = VolumeRef(target, (n_rows, n_cols, n_cols), recon.blocks)


class DenoiseStage:
    """Noise2Inverse: a ``denoised`` volume beside ``recon``, its model in the model store."""

    name = "denoise"

    def run(self, ctx: StageContext) -> None:
        metadata = ctx.acquisition.run.metadata
        denoise_scan(
            ctx.acquisition.spool,
            ctx.store,
            ctx.params,
            ctx.dask_client(),
            ctx.provenance,
            ctx.results["center"].center,
            model_client=ctx.store.models_client,
            sample_class=str(metadata.get("sample_class") or metadata.get("sample") or "unspecified"),
            scan_uids=(ctx.uid,),
            progress=ctx.show_progress,
            on_progress=lambda stage, done, total: ctx.report(stage, done, total),
        )


class SegmentStage:
    """Phases of ``recon``: the ``segmented`` labels, porosity and phase fractions."""

    name = "segment"

    def run(self, ctx: StageContext) -> None:
        ctx.report("segment")
        ctx.volumes["segmented"] = segment_recon(ctx)


class QualityStage:
    """QC numbers and alerts (SNR, CNR, rings, edge width, centre confidence), for every scan."""

    name = "qc"

    def run(self, ctx: StageContext) -> None:
        record_quality(ctx, ctx.results.get("qc"))
