"""The ``rtsflow`` command line."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click
import numpy as np

from rtsflow import __version__

CLUSTER_HELP = (
    "Where to run: 'local' (embedded LocalCluster, default), 'slurm' or 'pbs' (a dask-jobqueue profile from "
    "cluster/profiles/), a profile YAML path, or a scheduler address such as tcp://host:8786."
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="rtsflow")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int) -> None:
    """Find retrogressive thaw slumps in time series of elevation models and measure their volume change."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    # distributed sets its own loggers to INFO when imported; import it first, then quieten them.
    import distributed  # noqa: F401

    logging.getLogger("distributed").setLevel(logging.DEBUG if verbose >= 2 else logging.WARNING)


@main.command()
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--seed", type=int, default=0, show_default=True, help="Everything random derives from it.")
@click.option(
    "--size-km", type=float, nargs=2, default=(5.0, 5.0), show_default=True, help="Region width and height (km)."
)
@click.option(
    "--center",
    type=float,
    nargs=2,
    default=(-119.6, 72.9),
    show_default=True,
    help="Region centre as LON LAT (degrees).",
)
@click.option("--resolution", type=float, default=10.0, show_default=True, help="Pixel size (m).")
@click.option(
    "--winters",
    type=str,
    default="2010,2013,2016",
    show_default=True,
    help="Comma-separated winters (year each starts).",
)
@click.option("--obs-per-winter", type=int, default=3, show_default=True)
@click.option("--no-summer", is_flag=True, help="Leave out the summer acquisitions.")
@click.option("--slump-density", type=float, default=1.5, show_default=True, help="Slump sites per km².")
@click.option("--terrain", type=click.Path(exists=True, dir_okay=False), default=None,
              help="A real DEM as the ground (any CRS), e.g. ../shared/data/longyearbyen/DEM_1995.tif.")
@click.option("--terrain-offset-km", type=float, nargs=2, default=(0.0, 0.0), show_default=True,
              help="Which place of the --terrain DEM lies at the region's centre: X Y km east and north of "
                   "the DEM's centre.")
@click.option("--terrain-turns", type=click.IntRange(0, 3), default=0, show_default=True,
              help="Quarter turns (anticlockwise) of the --terrain DEM about that place.")
@click.option("--terrain-flip", is_flag=True, help="Mirror the --terrain DEM left-right (before the turns).")
@click.option("--outlines", type=click.Path(exists=True, dir_okay=False), multiple=True,
              help="Vector file of real RTS polygons whose shapes slumps take (repeatable).")
@click.option("--noise-correlation-px", type=float, default=0.0, show_default=True,
              help="Correlation length of the DEM noise (px); 0: independent pixels.")
@click.option("--blunders-per-100km2", type=float, default=0.0, show_default=True,
              help="Phase-unwrapping blunders (patches off by k·HoA) per 100 km² and observation.")
@click.option("--ramp-m-per-km", type=float, default=0.004, show_default=True, help="1σ of each DEM's ramp.")
@click.option("--undulation-rms-m", type=float, default=0.1, show_default=True,
              help="RMS of each DEM's 2–20 km undulations.")
@click.option("--hard-negatives-per-km2", type=float, default=0.0, show_default=True,
              help="Gullies, bank retreat, snow drifts, spoil heaps, thinning ice per km².")
@click.option("--winter-coherence", type=click.FloatRange(0.1, 0.98), default=0.8, show_default=True,
              help="Mean coherence of winter acquisitions; 0.97: real TanDEM-X dDEM errors over RTS.")
@click.option("--slump-slopes", type=click.Choice(["any", "arts"]), default="any", show_default=True,
              help="Where slumps form: any 0.5–30° hillslope, or the slopes of the ARTS inventory's RTS "
                   "(median 7.9°).")  # fmt: skip
def synth(out, seed, size_km, center, resolution, winters, obs_per_winter, no_summer, slump_density, terrain,
          terrain_offset_km, terrain_turns, terrain_flip, outlines, noise_correlation_px, blunders_per_100km2,
          ramp_m_per_km, undulation_rms_m, hard_negatives_per_km2, winter_coherence, slump_slopes) -> None:  # fmt: skip
    """Generate a synthetic region (products + ground truth) in OUT."""
    from rtsflow.synth.generator import SynthConfig, synthesize

    try:
        years = tuple(int(w) for w in winters.split(","))
    except ValueError:
        raise click.BadParameter(f"expected comma-separated years, got {winters!r}", param_hint="--winters") from None
    config = SynthConfig(
        seed=seed,
        center_lonlat=tuple(center),
        size_km=tuple(size_km),
        resolution=resolution,
        winters=years,
        obs_per_winter=obs_per_winter,
        summer=not no_summer,
        slump_density=slump_density,
        terrain=str(Path(terrain).resolve()) if terrain else None,
        terrain_offset_km=tuple(terrain_offset_km),
        terrain_turns=terrain_turns,
        terrain_flip=terrain_flip,
        outlines=tuple(str(Path(p).resolve()) for p in outlines) or None,
        noise_correlation_px=noise_correlation_px,
        blunders_per_100km2=blunders_per_100km2,
        ramp_m_per_km=ramp_m_per_km,
        undulation_rms_m=undulation_rms_m,
        hard_negatives_per_km2=hard_negatives_per_km2,
        winter_coherence=winter_coherence,
        slump_slopes=slump_slopes,
    )
    region = synthesize(out, config=config)
    click.echo(f"wrote {len(region.products)} products and truth for {region.n_slumps} slumps to {out}")
    click.echo(f"products: {out / 'products'}/*.json")


@main.command(name="ingest")
@click.argument("products", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--cube",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Observation cube (Zarr); created if missing.",
)
@click.option(
    "--bbox",
    type=float,
    nargs=4,
    default=None,
    help="Extent of a new cube: LEFT BOTTOM RIGHT TOP (in --bbox-crs); default: the products' union.",
)
@click.option("--bbox-crs", default="EPSG:3413", show_default=True)
@click.option("--resolution", type=float, default=10.0, show_default=True, help="Grid resolution of a new cube (m).")
@click.option("--cluster", default="local", show_default=True, help=CLUSTER_HELP)
@click.option("--workers", type=int, default=None, help="Workers of the local cluster (default: one per core).")
def ingest_cmd(products, cube, bbox, bbox_crs, resolution, cluster, workers) -> None:
    """Ingest product sidecars (PRODUCTS: *.json) into an observation cube.

    Everything is checked before anything is written: a bad product stops the
    ingest with an error naming the file and field, and the cube is left as
    it was. Products already in the cube (same id, same content) are skipped.
    """
    from rtsflow.cluster import connect
    from rtsflow.grid import Grid
    from rtsflow.ingest import LockedError, ingest
    from rtsflow.products import ProductError

    grid = Grid(resolution=resolution)
    region = grid.region_from_bounds(tuple(bbox), crs=bbox_crs) if bbox else None
    try:
        with connect(cluster, n_workers=workers):
            report = ingest(list(products), cube=cube, grid=grid, region=region, progress=True)
    except ProductError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except LockedError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(3)
    click.echo(str(report))


@main.command(name="ingest-mask")
@click.argument("raster", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--cube", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--name", default="water", show_default=True, help="Variable name in the cube.")
@click.option("--cluster", default="local", show_default=True, help=CLUSTER_HELP)
def ingest_mask_cmd(raster, cube, name, cluster) -> None:
    """Add a static mask GeoTIFF (1 = water, 0 = land; any CRS) to an observation cube."""
    from rtsflow.cluster import connect
    from rtsflow.ingest import LockedError, ingest_mask
    from rtsflow.products import ProductError

    try:
        with connect(cluster, quiet=True, local_directory=cube.parent / f".{cube.name}.dask-scratch"):
            n = ingest_mask(raster, cube=cube, name=name)
    except (ProductError, ValueError, LockedError) as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    click.echo(f"wrote mask {name!r} ({n} block(s)) into {cube}")


@main.command(name="ingest-reference")
@click.argument("raster", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--cube", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--name", default="reference_dem", show_default=True, help="Variable name in the cube.")
@click.option("--sigma", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Optional 1σ error raster of the reference (m), stored as NAME_sigma.")  # fmt: skip
@click.option("--cluster", default="local", show_default=True, help=CLUSTER_HELP)
def ingest_reference_cmd(raster, cube, name, sigma, cluster) -> None:
    """Add a reference DEM GeoTIFF (any CRS, metres; bilinear) to an observation cube.

    Runs then co-register every observation to it before compositing
    (``reference: reference_dem`` in the run config, the default).
    """
    from rtsflow.cluster import connect
    from rtsflow.ingest import LockedError, ingest_reference_dem
    from rtsflow.products import ProductError

    try:
        with connect(cluster, quiet=True, local_directory=cube.parent / f".{cube.name}.dask-scratch"):
            n = ingest_reference_dem(raster, cube=cube, name=name, sigma=sigma)
    except (ProductError, ValueError, LockedError) as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    click.echo(f"wrote reference DEM {name!r} ({n} block(s)) into {cube}" + (f" with {name}_sigma" if sigma else ""))


@main.command()
@click.argument("cube", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--pair",
    type=int,
    nargs=2,
    required=True,
    metavar="EARLIER LATER",
    help="Winters (year each starts), e.g. 2010 2016; YYYYMMDD dates with --epoch date.",
)
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Feature store (Zarr).")
@click.option(
    "--water", default="water", show_default=True, help="Cube variable holding the water mask ('none' for no mask)."
)
@click.option(
    "--reference",
    default="reference_dem",
    show_default=True,
    help="Cube variable holding a reference DEM to co-register every observation to "
    "('none' to skip; skipped when the default is absent).",
)
@click.option(
    "--weighting", type=click.Choice(["coherence", "inverse_variance"]), default="coherence", show_default=True
)
@click.option("--epoch", type=click.Choice(["winter", "date"]), default="winter", show_default=True)
@click.option("--all-months", is_flag=True, help="Do not restrict acquisitions to October-April.")
@click.option("--hoa-range", type=float, nargs=2, default=(15.0, 80.0), show_default=True)
@click.option("--no-coreg", is_flag=True, help="Skip co-registration of the later composite.")
@click.option("--overwrite", is_flag=True)
@click.option("--cluster", default="local", show_default=True, help=CLUSTER_HELP)
def features(cube, pair, out, water, reference, weighting, epoch, all_months, hoa_range, no_coreg, overwrite,
             cluster) -> None:  # fmt: skip
    """Compute pair features (dDEM, σ, dDEM_norm, slope, masks, co-registration fits) into a Zarr store."""
    from rtsflow.cluster import connect
    from rtsflow.graph.coreg import CoregConfig
    from rtsflow.graph.dem import CompositeConfig
    from rtsflow.graph.features import pair_features
    from rtsflow.io.cube import cube_info, open_cube
    from rtsflow.io.features import write_features
    from rtsflow.selection import WINTER_MONTHS, SelectionRules

    ds = open_cube(cube)
    mask = None
    if water != "none":
        if water not in ds:
            raise click.BadParameter(
                f"the cube has no variable {water!r} (add one with rtsflow ingest-mask, or pass --water none)",
                param_hint="--water",
            )
        mask = ds[water]
    ref = None
    if reference != "none":
        if reference in ds:
            ref = ds[reference]
        elif reference != "reference_dem":
            raise click.BadParameter(f"the cube has no variable {reference!r}", param_hint="--reference")
    rules = SelectionRules(hoa_range=tuple(hoa_range), months=None if all_months else WINTER_MONTHS, epoch=epoch)
    try:
        feats, selection = pair_features(
            ds,
            grid=cube_info(cube).grid,
            earlier=pair[0],
            later=pair[1],
            water=mask,
            reference=ref,
            composite=CompositeConfig(method=weighting, rules=rules),
            coreg=None if no_coreg else CoregConfig(),
        )
    except ValueError as e:
        click.echo(f"error: {e}", err=True)
        click.echo(selection_text(cube), err=True)
        sys.exit(2)
    with connect(cluster):
        write_features(feats, out, grid=cube_info(cube).grid, selection=selection, overwrite=overwrite)
    click.echo(selection.to_string(columns=["product_id", "epoch", "selected", "reason"], index=False))
    click.echo(f"wrote {out}")


@main.command()
@click.option(
    "--features",
    "features_paths",
    multiple=True,
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Feature store (repeatable: one per training area/pair).",
)
@click.option(
    "--labels",
    "labels_paths",
    multiple=True,
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="RTS polygons (GeoParquet/GeoPackage/GeoJSON, any CRS): one for all stores, or one per --features. "
    "Rows with label = 0 (rejected candidates, as `rtsflow labels merge` writes) are hard negatives.",
)
@click.option("--where", default=None, help="pandas query selecting label rows, e.g. 'winter_start == 2010'.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Checkpoint directory.")
@click.option(
    "--preset",
    type=click.Choice(["paper", "demo"]),
    default="paper",
    show_default=True,
    help="paper: UNet++ ResNet18 on 512² tiles; demo: compact 3-level UNet on 128² tiles.",
)
@click.option("--architecture", type=click.Choice(["unet", "unetplusplus", "deeplabv3plus"]), default=None)
@click.option("--encoder", default=None, help="Any segmentation-models-pytorch encoder name.")
@click.option("--epochs", type=int, default=None)
@click.option("--steps-per-epoch", type=int, default=None)
@click.option("--batch-size", type=int, default=None)
@click.option("--split-size", type=int, default=None, help="Side (px) of the train/validation split cells.")
@click.option("--tile", type=int, default=None, help="Training tile side (px, a multiple of 32).")
@click.option("--lr", type=float, default=None, help="Peak learning rate (lower it to fine-tune with --init-from).")
@click.option("--patience", type=int, default=None, help="Epochs without a better validation score before stopping.")
@click.option("--loss", type=click.Choice(["dice", "bce+dice"]), default=None)
@click.option("--select-by", type=click.Choice(["f05_iou", "f1_iou", "pixel_iou"]), default=None,
              help="Validation score that chooses the checkpoint (default f05_iou: geometric mean of pixel IoU and "
                   "object-level detection F0.5, so false objects count).")
@click.option("--min-object-area", type=float, default=None,
              help="Smallest predicted object (m²) that validation counts (default 1000, the post-processing's).")
@click.option("--seed", type=int, default=None)
@click.option("--split-seed", type=int, default=None,
              help="Seed of the train/validation split alone (default: --seed); fix it to compare seeds.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True)
@click.option("--max-minutes", type=float, default=None, help="Stop after the epoch that crosses this wall time.")
@click.option("--init-from", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Continue from this checkpoint (its architecture, bands and tile size are used).")
@click.option("--mine", is_flag=True,
              help="With --init-from: predict the training cells with that model first and train on its false "
                   "objects as hard negatives (hard-negative mining; only for completely labelled areas, or "
                   "unmapped slumps are learnt as background).")
@click.option("--overwrite", is_flag=True)
def train(
    features_paths,
    labels_paths,
    where,
    out,
    preset,
    architecture,
    encoder,
    epochs,
    steps_per_epoch,
    batch_size,
    split_size,
    tile,
    lr,
    patience,
    loss,
    select_by,
    min_object_area,
    seed,
    split_seed,
    device,
    precision,
    max_minutes,
    init_from,
    mine,
    overwrite,
) -> None:
    """Train a segmentation model on feature stores and RTS label polygons; keep the best checkpoint."""
    import dataclasses

    from rtsflow.model.train import DEMO_CONFIG, TrainConfig, load_area, read_labels
    from rtsflow.model.train import train as train_model

    if len(labels_paths) not in (1, len(features_paths)):
        raise click.BadParameter(
            f"give one --labels for all stores or one per --features ({len(features_paths)}), got {len(labels_paths)}",
            param_hint="--labels",
        )
    base = DEMO_CONFIG if preset == "demo" else TrainConfig()
    overrides = {
        k: v
        for k, v in dict(
            architecture=architecture,
            encoder=encoder,
            epochs=epochs,
            steps_per_epoch=steps_per_epoch,
            batch_size=batch_size,
            split_size=split_size,
            tile=tile,
            lr=lr,
            patience=patience,
            loss=loss,
            select_by=select_by,
            min_object_m2=min_object_area,
            seed=seed,
            split_seed=split_seed,
            max_minutes=max_minutes,
        ).items()
        if v is not None
    }
    if init_from is not None:
        from rtsflow.model.checkpoint import read_record
        from rtsflow.model.train import config_like

        base = config_like(read_record(init_from), base)
    try:
        config = dataclasses.replace(base, device=device, precision=precision, **overrides)
    except ValueError as e:
        raise click.ClickException(f"training config: {e}") from None
    if mine and init_from is None:
        raise click.BadParameter("mining needs a model to mine with: give --init-from", param_hint="--mine")
    labels = [read_labels(p, where=where, negatives=True) for p in labels_paths]
    areas = [load_area(f, labels[min(i, len(labels) - 1)], config=config) for i, f in enumerate(features_paths)]
    try:
        result = train_model(areas, out=out, config=config, overwrite=overwrite, init_from=init_from, mine=mine)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    from rtsflow.model.checkpoint import read_record

    info = read_record(out)["training"]
    if "mined" in info:
        n = info["mined"]
        click.echo(f"mined {n['false_objects']} false objects of {init_from} on {n['training_km2']:.1f} km² of "
                   f"training cells ({n['per_100km2']:.1f} per 100 km²)")  # fmt: skip
    if "initial_validation" in info:
        s = info["initial_validation"]
        click.echo(f"starting model: validation score {s['val_score']:.3f}, pixel IoU {s['val_iou']:.3f}, "
                   f"{s['val_false_objects']} false objects")  # fmt: skip
    m = result.metrics
    click.echo(
        f"best epoch {result.best_epoch} (by {config.select_by}): validation score {m['val_score']:.3f}, pixel "
        f"IoU {m['val_iou']:.3f}, "
        f"detection F1 {m['val_detection_f1']:.3f}, {m['val_false_objects']} false objects "
        f"({m['val_false_per_100km2']:.1f} per 100 km²)"
    )
    click.echo(f"checkpoint: {out} (sha256 {result.spec.sha256[:12]}…); log: {result.log}")


@main.command()
@click.argument("features_path", metavar="FEATURES", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--model",
    "model_path",
    required=True,
    type=click.Path(exists=True, path_type=Path),
    help="Checkpoint directory (model.safetensors + rtsflow_model.json).",
)
@click.option(
    "--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Probability store (Zarr)."
)
@click.option("--halo", type=int, default=64, show_default=True, help="Overlap of neighbouring tiles (px, even).")
@click.option("--tile", type=int, default=None, help="Tile size (default: the checkpoint's).")
@click.option("--batch-size", type=int, default=None, help="Windows per batch (default: 4 on CPU, from GPU memory).")
@click.option("--device", default="auto", show_default=True, help="auto (cuda if the worker has one), cpu or cuda.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default="auto", show_default=True,
              help="auto: bf16 autocast on a GPU, fp32 on CPU.")  # fmt: skip
@click.option("--dtype", type=click.Choice(["uint8", "float16"]), default="uint8", show_default=True)
@click.option("--tta/--no-tta", default=None,
              help="Test-time augmentation: each window's mean over its 8 flips and quarter turns (8x the model's "
                   "work; default as a run's inference.tta: on); --no-tta: one view.")  # fmt: skip
@click.option("--overwrite", is_flag=True)
@click.option("--cluster", default="local", show_default=True, help=CLUSTER_HELP)
def predict(
    features_path, model_path, out, halo, tile, batch_size, device, precision, dtype, tta, overwrite, cluster
) -> None:
    """Run the model over a feature store and write the RTS probability (Zarr, with the model's sha256)."""
    from rtsflow.cluster import connect, gpu_resources
    from rtsflow.graph.dem import grid_of
    from rtsflow.io.features import open_features
    from rtsflow.io.probability import write_probability
    from rtsflow.model.checkpoint import CheckpointError, ModelSpec, read_record
    from rtsflow.model.inference import predict as predict_lazy

    try:
        record = read_record(model_path)
    except CheckpointError as e:
        raise click.BadParameter(str(e), param_hint="--model") from e
    feats = open_features(features_path)
    missing = [b for b in record["bands"] if b not in feats]
    if missing:
        raise click.BadParameter(f"{features_path} lacks the model's band(s) {missing}", param_hint="FEATURES")
    spec = ModelSpec(path=str(Path(model_path).resolve()), sha256=record["weights_sha256"])
    grid = grid_of(feats)
    prob = predict_lazy(
        feats,
        spec=spec,
        bands=record["bands"],
        halo=halo,
        tile=tile or record["tile_size"],
        batch_size=batch_size,
        device=device,
        precision=precision,
        grid=grid,
        **({} if tta is None else {"tta": tta}),  # unset: the library's default
    )
    with connect(cluster) as client:
        resources = gpu_resources(client)
        write_probability(
            prob,
            out,
            grid=grid,
            dtype=dtype,
            overwrite=overwrite,
            resources=resources,
            attrs={
                "features": str(Path(features_path).resolve()),
                "model": spec.path,
                "threshold": record["threshold"],
            },
        )
    where = "GPU-tagged workers" if resources else "all workers"
    click.echo(f"wrote {out} (model {spec.sha256[:12]}…, inference on {where})")


def _length_or_auto(value: str, param) -> float | str:
    if value == "auto":
        return value
    try:
        length = float(value)
    except ValueError:
        length = -1.0
    if not length > 0:
        raise click.BadParameter(f"expected 'auto' or a length > 0 (m), got {value!r}", param=param)
    return length


@main.command(name="reduce")
@click.argument("features_path", metavar="FEATURES", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--probability",
    required=True,
    type=click.Path(exists=True, path_type=Path),
    help="RTS probability (0-1) or 0/1 mask: a GeoTIFF in any CRS (resampled onto the features' grid) "
    "or a Zarr store with a 'probability' variable on that grid.",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="RTS polygons: .parquet (GeoParquet) or .gpkg.",
)
@click.option("--threshold", type=float, default=0.5, show_default=True)
@click.option("--min-area", type=float, default=1000.0, show_default=True, help="m² (nominal pixel area).")
@click.option("--max-water", type=float, default=0.5, show_default=True, help="Largest water overlap kept.")
@click.option("--max-quality", type=float, default=0.5, show_default=True, help="Largest SAR-mask overlap kept.")
@click.option("--min-dh", type=float, default=2.0, show_default=True, help="Smallest max |dh| kept (m).")
@click.option("--min-volume-snr", type=float, help="Smallest |volume| / σ(volume) kept (default: no such rule).")
@click.option("--max-volume", type=float, help="Largest net volume change kept (m³; 0: net losses only).")
@click.option("--min-circularity", type=float, default=0.2, show_default=True,
              help="Least 4π·area/perimeter² kept: drops bank strips and ragged ice (0: no such rule).")
@click.option("--grow-outlines/--no-grow-outlines", default=True, show_default=True,
              help="Grow detections of at least 1 000 m² into the loss ≤ −2σ around them, up to 50 px "
                   "(rtsflow.kernels.grow; a run config's grow_outlines sets each value).")  # fmt: skip
@click.option(
    "--correlation-length",
    default="auto",
    show_default=True,
    callback=lambda ctx, param, v: _length_or_auto(v, param),
    help="DEM-error model for the volume σ: 'auto' fits a three-range variogram on stable terrain; "
    "a number is one fixed correlation length (m).",
)
@click.option("--cell-size", type=float, multiple=True, help="Regular-grid densities (m), e.g. 10000; repeatable.")
@click.option(
    "--sites",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Regions (any vector format/CRS) for densities, named by --site-name.",
)
@click.option("--site-name", default="name", show_default=True)
@click.option("--cluster", default="local", show_default=True, help=CLUSTER_HELP)
def reduce_cmd(features_path, probability, out, threshold, min_area, max_water, max_quality, min_dh,
               min_volume_snr, max_volume, min_circularity, grow_outlines, correlation_length, cell_size, sites,
               site_name, cluster) -> None:  # fmt: skip
    """Probability + features → RTS polygons with volume change ± σ, filters and regional densities."""
    import dask
    import geopandas as gpd

    from rtsflow.cluster import connect
    from rtsflow.graph.dem import grid_of
    from rtsflow.graph.densities import regional_densities
    from rtsflow.io.features import open_features
    from rtsflow.io.vectors import run_metadata, write_vectors
    from rtsflow.kernels.grow import DEFAULT_GROWTH
    from rtsflow.postprocess import FilterConfig
    from rtsflow.reduce import detect_rts, probability_on_grid

    feats = open_features(features_path)
    grid = grid_of(feats)
    prob = probability_on_grid(probability, like=feats["ddem"], grid=grid)
    filters = FilterConfig(min_area_m2=min_area, max_water_fraction=max_water, max_quality_fraction=max_quality,
                           min_max_abs_dh_m=min_dh, min_volume_snr=min_volume_snr,
                           max_volume_m3=max_volume, min_circularity=min_circularity or None)  # fmt: skip
    growth = DEFAULT_GROWTH if grow_outlines else None
    meta = run_metadata(command="reduce", features=str(features_path), probability=str(probability),
                        threshold=threshold, filters=filters.__dict__, correlation_length=correlation_length,
                        model_sha256=feats.attrs.get("model_sha256"),
                        grow_outlines=growth and growth.__dict__)  # fmt: skip
    with connect(cluster):
        rts = detect_rts(prob, feats, grid=grid, threshold=threshold, filters=filters,
                         correlation_length=correlation_length, grow_outlines=growth).compute()  # fmt: skip
        write_vectors(rts, out, metadata={**meta, "error_model": rts.attrs.get("error_model")})
        kept = rts[rts.kept]
        jobs = {f"cells_{int(c)}m": regional_densities(kept, feats, grid=grid, cell_size=c) for c in cell_size}
        if sites:
            jobs["sites"] = regional_densities(kept, feats, grid=grid, regions=gpd.read_file(sites), name=site_name)
        results = dict(zip(jobs, dask.compute(*jobs.values()), strict=True))
    for name, table in results.items():
        write_vectors(table, out.with_name(f"{out.stem}_densities_{name}{out.suffix}"), metadata=meta)
    click.echo(f"{len(rts)} polygons, {int(rts.kept.sum())} kept after filters; written to {out}")
    if len(kept):
        sigma = np.sqrt((kept.volume_sigma_m3**2).sum())
        click.echo(f"net volume change of kept RTS: {kept.volume_m3.sum():.0f} ± {sigma:.0f} m³ "
                   f"({kept.volume_per_year_m3.sum():.0f} m³/yr)")  # fmt: skip
    for name, table in results.items():
        click.echo(f"densities ({name}): {len(table)} regions written next to {out.name}")


@main.command()
@click.argument("predicted", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("reference", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--kept-only/--all",
    default=True,
    show_default=True,
    help="With an rtsflow polygon file, use only polygons that passed the filters.",
)
@click.option("--sites", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Per-site metrics.")
@click.option("--site-name", default="name", show_default=True)
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Also write JSON here.")
def evaluate(predicted, reference, kept_only, sites, site_name, json_out) -> None:
    """Pixel and detection IoU/F1/precision/recall of PREDICTED polygons against REFERENCE (paper Sec. 2.5.3)."""
    import json as jsonlib

    import geopandas as gpd

    from rtsflow.evaluate import evaluate_by_site, evaluate_polygons

    def read(p):
        return gpd.read_parquet(p) if p.suffix == ".parquet" else gpd.read_file(p)

    pred, ref = read(predicted), read(reference)
    if kept_only and "kept" in pred:
        pred = pred[pred.kept]
    pred = pred.to_crs(ref.crs)
    if sites:
        table = evaluate_by_site(pred, ref, gpd.read_file(sites), name=site_name)
        click.echo(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        result = table.to_dict(orient="records")
    else:
        m = evaluate_polygons(pred, ref)
        click.echo(m.table())
        result = m.to_dict()
    if json_out:
        Path(json_out).write_text(jsonlib.dumps(result, indent=2, default=float))


def selection_text(cube: Path) -> str:
    from rtsflow.io.cube import open_cube
    from rtsflow.selection import select_observations

    sel = select_observations(open_cube(cube))
    return sel.to_string(columns=["product_id", "time", "winter", "selected", "reason"], index=False)


@main.command()
@click.argument("sidecar", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--id", "pid", required=True, help="Unique product id.")
@click.option("--acquired", required=True, help="Acquisition time, ISO 8601 UTC (e.g. 2010-11-05T12:31:07Z).")
@click.option("--dem", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--coherence", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--layover-shadow", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--incidence", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--sigma",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Per-pixel 1σ error raster (m) of a DEM-only product.",
)
@click.option("--hoa", type=float, help="Height of ambiguity (m); required with --coherence.")
@click.option("--orbit", type=click.Choice(["ascending", "descending", "unknown"]), default="unknown")
@click.option("--sensor", default="unknown")
def sidecar(sidecar, pid, acquired, dem, coherence, layover_shadow, incidence, sigma, hoa, orbit, sensor) -> None:
    """Write a product sidecar (SIDECAR.json) for existing GeoTIFFs."""
    from rtsflow.products import ProductError, write_sidecar

    try:
        write_sidecar(
            sidecar,
            id=pid,
            acquired=acquired,
            dem=dem,
            coherence=coherence,
            layover_shadow=layover_shadow,
            incidence=incidence,
            sigma=sigma,
            hoa_m=hoa,
            orbit=orbit,
            sensor=sensor,
        )
    except ProductError as e:
        Path(sidecar).unlink(missing_ok=True)
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    click.echo(f"wrote {sidecar}")


@main.group(name="cube")
def cube_group() -> None:
    """Inspect and maintain observation cubes."""


def _cube_error(e: Exception) -> None:
    click.echo(f"error: {e}", err=True)
    sys.exit(2)


@cube_group.command(name="footprints")
@click.argument("cube", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--cluster", default="local", show_default=True, help=CLUSTER_HELP)
def cube_footprints(cube, cluster) -> None:
    """(Re)build the footprint index of CUBE: which grid tiles each observation has data in.

    Ingest keeps it up to date; cubes converted from older rtsflow may need this
    once (reads every stored DEM shard once; one new cube version). Runs build it
    themselves when it is missing.
    """
    from rtsflow.cluster import connect
    from rtsflow.io.cube import cube_info
    from rtsflow.io.footprints import build_footprints

    try:
        info_ = cube_info(cube)
    except ValueError as e:
        _cube_error(e)
    with connect(cluster, quiet=True, local_directory=cube.parent / f".{cube.name}.dask-scratch"):
        n = build_footprints(cube, grid=info_.grid, window=info_.window, n_obs=info_.n_obs)
    click.echo(f"{cube}: footprint index of {info_.n_obs} observation(s), {n} (observation, tile) entries")


@cube_group.command(name="migrate")
@click.argument("cube", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--delete-old", is_flag=True, help="Delete the old store once the new cube has been checked.")
def cube_migrate(cube, delete_old) -> None:
    """Convert CUBE, written by rtsflow ≤ 0.2 (plain Zarr), into a versioned cube (Icechunk).

    Every chunk is copied byte for byte and every value compared before the
    old store is moved aside (kept as <CUBE>.plain-zarr-<time> unless
    --delete-old); fixed-length text coordinates become variable-length strings.
    """
    from rtsflow.io.migrate import migrate_cube
    from rtsflow.io.repo import NotACubeError

    try:
        click.echo(str(migrate_cube(cube, keep_old=not delete_old)))
    except (NotACubeError, RuntimeError) as e:
        _cube_error(e)


@cube_group.command(name="log")
@click.argument("cube", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--files/--no-files", default=True, show_default=True, help="List each version's files and hashes.")
def cube_log(cube, files) -> None:
    """List CUBE's versions, newest first: when, by which command and user, from which files (sha256)."""
    from rtsflow.io.repo import NotACubeError, history, tagged_versions

    try:
        versions = history(cube)
        kept = tagged_versions(cube)
    except NotACubeError as e:
        _cube_error(e)
    for i, v in enumerate(versions):
        m = v.metadata
        current = "  (current)" if i == 0 else ""
        click.echo(f"version {v.version}  {v.time:%Y-%m-%d %H:%M:%S} UTC  {v.command}{current}")
        click.echo(f"    {v.message}")
        click.echo(f"    by {m.get('user') or '?'}@{m.get('host', '?')}: {m.get('argv', '')}")
        if files:
            for p in m.get("products", []):
                click.echo(f"    + {p['id']}  sha256 {p['content_sha256'][:16]}…  {p['sidecar']}")
            for f in m.get("files", []):
                click.echo(f"    + {f['variable']}  sha256 {f['sha256'][:16]}…  {f['path']}")
    for tag, version in kept.items():
        click.echo(f"kept by a rollback: version {version} (tag {tag}); `rtsflow cube rollback {cube} {version}` "
                   "returns to it")  # fmt: skip


@cube_group.command(name="rollback")
@click.argument("cube", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("version")
def cube_rollback(cube, version) -> None:
    """Make VERSION (from `rtsflow cube log`; a unique prefix will do) CUBE's current version again.

    Nothing is deleted: the version rolled back from stays reachable and can be
    returned to the same way. Waits for other writers of the cube.
    """
    from rtsflow.ingest import cube_lock
    from rtsflow.io.repo import NotACubeError, rollback

    try:
        with cube_lock(cube):
            old, tag = rollback(cube, version=version)
    except (NotACubeError, ValueError) as e:
        _cube_error(e)
    from rtsflow.io.repo import head

    click.echo(f"{cube}: now at version {head(cube)} (was {old}, kept as tag {tag}; "
               f"`rtsflow cube rollback {cube} {old}` undoes this)")  # fmt: skip


@cube_group.command(name="check")
@click.argument("cube", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--deep", is_flag=True, help="Also decode every stored shard (reads the whole cube).")
@click.option("--repair", is_flag=True, help="Clear what dead writers left (unfinished writes, unreferenced data).")
def cube_check(cube, deep, repair) -> None:
    """Verify CUBE: repository, metadata, coordinates, footprint index (and every shard with --deep).

    Exits 0 when the cube is fine, 1 when a problem was found (each is named).
    """
    from rtsflow.ingest import cube_lock
    from rtsflow.io.check import check_cube
    from rtsflow.io.repo import cleanup, is_plain_zarr

    if is_plain_zarr(cube):
        click.echo(f"{cube}: a plain-Zarr cube of rtsflow ≤ 0.2; convert it with `rtsflow cube migrate {cube}`")
        sys.exit(1)
    if repair:
        with cube_lock(cube):
            cleared = cleanup(cube)
        click.echo(f"{cube}: cleared {len(cleared)} unfinished write(s)")
    result = check_cube(cube, deep=deep)
    click.echo(str(result))
    sys.exit(0 if result.ok else 1)


@main.command()
@click.argument("cube", type=click.Path(exists=True, file_okay=False, path_type=Path))
def info(cube) -> None:
    """Describe an observation cube (reads metadata only)."""
    from rtsflow.io.cube import open_cube
    from rtsflow.io.repo import NotACubeError, head
    from rtsflow.summary import cube_summary

    try:
        ds = open_cube(cube)
    except NotACubeError as e:
        _cube_error(e)
    click.echo(cube_summary(ds, path=cube))
    click.echo(f"version: {head(cube)} (`rtsflow cube log {cube}` lists them all)")


@main.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("demo_output"), show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--size-km", type=float, default=5.0, show_default=True, help="Side of the square test region (km).")
@click.option("--cluster", default="local", show_default=True, help=CLUSTER_HELP)
@click.option("--force", is_flag=True, help="Regenerate, retrain and recompute everything.")
@click.option("--retrain", is_flag=True, help="Train the default model again instead of using the shipped one.")
def demo(out, seed, size_km, cluster, force, retrain) -> None:
    """Run the main job end to end on a built-in synthetic region with the shipped default model.

    The model is trained again (its recipe: the demo's training region plus 18
    realistic regions on analytic and real terrain, pipelines/demo.py) with
    --retrain, or when no shipped or cached model has this seed's recipe.
    """
    from pipelines.demo import run_demo

    run_demo(out=out, seed=seed, size_km=size_km, cluster=cluster, force=force, retrain=retrain)


@main.command(name="run")
@click.argument("config_path", metavar="CONFIG", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--output", default=None, help="Run directory (overrides the config's 'output').")
@click.option("--force", is_flag=True, help="Recompute every block, even those already done.")
@click.option("--until", type=click.Choice(["features", "probability"]), default=None,
              help="Stop after this stage (e.g. features of a large region for training; no model needed).")
@click.option("--cluster", default="local", show_default=True, help=CLUSTER_HELP)
def run_cmd(config_path, output, force, until, cluster) -> None:
    """Run (or resume) a configured region: per-block features and inference, RTS, densities, report."""
    from pipelines.region import RunIncomplete, run_region
    from rtsflow.config import ConfigError, load_config
    from rtsflow.io.lock import LockedError

    try:
        config = load_config(config_path, output=output)
    except ConfigError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    try:
        result = run_region(config, cluster=cluster, force=force, upto=until)
    except RunIncomplete as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    except LockedError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(3)
    except ValueError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    for key, s in result.pairs.items():
        line = f"{key}: {s['n_rts']} RTS, {s['volume_change_rate_m3_per_yr_km2']:.1f} m³/yr/km²"
        if "metrics" in s:
            line += f", detection F1 {s['metrics']['detection_f1']:.3f}"
        click.echo(line + (f"; report {s['report']}" if s.get("report") else ""))
    click.echo(f"run directory: {result.run}")


@main.command()
@click.argument("run_dir", metavar="RUN", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--pair", default=None, help="EARLIER_LATER (default: every pair of the run).")
@click.option("--iterations", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="iterations.csv of a mapping loop (`rtsflow labels merge`): tabulated and plotted.")
def report(run_dir, pair, iterations) -> None:
    """(Re)write the report of a finished run: quick-look map, distributions, Markdown summary."""
    from rtsflow.report import write_report

    pairs = [pair] if pair else sorted(p.stem.removeprefix("summary_") for p in run_dir.glob("summary_*.json"))
    if not pairs:
        raise click.BadParameter(f"{run_dir} has no finished pair (no summary_*.json)", param_hint="RUN")
    for key in pairs:
        click.echo(f"wrote {write_report(run_dir, pair=key, iterations=iterations)}")


@main.command()
@click.argument("run_dir", metavar="RUN", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--pair", required=True, help="EARLIER_LATER: the period whose RTS are reviewed.")
@click.option("--labels", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Current label set (RTS polygons; `label` 0 rows are known negatives). Default: none.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for candidates.gpkg and chips/.")  # fmt: skip
@click.option("--max", "max_candidates", type=int, default=None,
              help="Export only this many, largest volume loss first (one review session); the rest come next time.")
def candidates(run_dir, pair, labels, out, max_candidates) -> None:
    """Export a run's new detections (not in the label set) with quick-look chips, for a person to review.

    Open OUT/candidates.gpkg in QGIS, set each `label` to RTS, not RTS or unsure,
    then `rtsflow labels merge OUT/candidates.gpkg --labels LABELS --out NEW_LABELS`.
    """
    from rtsflow.candidates import LabelError, export_candidates

    try:
        cand = export_candidates(run_dir, pair=pair, labels=labels, out=out, max_candidates=max_candidates)
    except LabelError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"{len(cand)} candidate(s) → {out / 'candidates.gpkg'} (chips in {out / 'chips'})")


@main.group()
def labels() -> None:
    """Label sets of the iterative mapping loop."""


@labels.command(name="merge")
@click.argument("candidates_path", metavar="CANDIDATES", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--labels", "labels_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The label set the candidates were exported against.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="New label set.")
@click.option("--iterations", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Iteration log (default: iterations.csv beside --out).")  # fmt: skip
def labels_merge(candidates_path, labels_path, out, iterations) -> None:
    """Add reviewed candidates to the labels (RTS → positives, not RTS → negatives) and log the iteration."""
    from rtsflow.candidates import LabelError, merge_labels

    try:
        row = merge_labels(candidates_path, labels=labels_path, out=out, iterations=iterations).iloc[0]
    except LabelError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"iteration {row.iteration}: {row.confirmed_rts} RTS confirmed, {row.rejected} rejected, "
               f"{row.unsure} unsure, {row.unreviewed} not reviewed → {out} "
               f"({row.training_polygons_after} RTS, {row.negatives_after} negatives)")  # fmt: skip


if __name__ == "__main__":  # pragma: no cover
    main()
