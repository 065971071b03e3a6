"""cellrcnn-evaluate: score a model on a labelled folder."""

from __future__ import annotations

import logging
from pathlib import Path

from ..config.tree import Config
from .common import (TTA_HELP, command, DATA_FLAGS, HelpFormatter, Parser, add_cell_arguments, add_config_arguments, add_scale_arguments,
                     cell_choice, check_out_folder, check_scale_arguments, comma_separated, data_config_from_args,
                     setup_logging)

__all__ = ["evaluate_main"]

logger = logging.getLogger(__name__)


@command
def evaluate_main(argv: list[str] | None = None) -> int:
    """``cellrcnn-evaluate (MODEL.pt | --pred-dir DIR) DATA_DIR --out OUT_DIR``: exit 0 done, 2 when the input is at fault (one line says what to do), 1 a bug."""
    parser = Parser(prog="cellrcnn-evaluate", formatter_class=HelpFormatter,
                    description="Score a model, or label TIFFs already written (by cellrcnn or another tool), "
                                "against the ground truth of a data folder.",
                    epilog="With a model, the data options default to those the model was trained with.")
    parser.add_argument("paths", nargs="+", type=Path, metavar="[MODEL.pt] DATA_DIR",
                        help="a checkpoint and the data folder, or only the data folder with --pred-dir")
    parser.add_argument("--out", type=Path, required=True, help="folder for per_image.csv, summary.csv, worst_images.png")
    parser.add_argument("--pred-dir", type=Path, default=None, help="score label TIFFs in this folder instead of a "
                        "model (with its cells.json from cellrcnn-predict --coco: whole masks and scores too)")
    parser.add_argument("--pred-cells-suffix", default="_cells", help="with --pred-dir: <image><suffix>.tif holds cells")
    parser.add_argument("--pred-parts-suffix", default="_parts", help="with --pred-dir: <image><suffix>.tif holds parts "
                        "(optional: without it only cells are scored)")
    parser.add_argument("--parts", type=comma_separated, default=("background", "cytoplasm", "nucleus"),
                        metavar="NAME,...", help="part names (with a model: the model's)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--tta", action="store_true", help=TTA_HELP)
    parser.add_argument("--overwrite", action="store_true", help="replace existing results")
    add_cell_arguments(parser)
    add_scale_arguments(parser)
    add_config_arguments(parser, DATA_FLAGS)
    args = parser.parse_args(argv)
    check_out_folder(parser, args.out)
    check_scale_arguments(parser, args)
    choice = cell_choice(parser, args)
    from ..data.dataset import CellDataset  # the heavy imports, after --help
    from ..evaluation.report import score_folder, worst_images_figure
    from ..io.folders import find_pairs
    from ..modeling.checkpoint import load_checkpoint
    from ..utils.files import atomic_write

    model_path, base = None, None
    if args.pred_dir is None:
        if len(args.paths) != 2:
            parser.error("give MODEL.pt and DATA_DIR, or DATA_DIR with --pred-dir")
        model_path, data_dir = args.paths
        if not model_path.is_file():
            parser.error(f"{model_path}: checkpoint not found")
        try:
            saved = Config.from_saved(load_checkpoint(model_path)["config"])
        except ValueError as err:
            parser.error(str(err))
        base, args.parts = saved.data, saved.model.parts
    else:
        if len(args.paths) != 1:
            parser.error("with --pred-dir give only DATA_DIR")
        data_dir = args.paths[0]
        given = [f"--{n.replace('_', '-')}" for n in ("scale", "cell_diameter", "tile", "overlap")
                 if getattr(args, n) is not None] + (["--tta"] if args.tta else [])
        if given:
            parser.error(f"{', '.join(given)} apply to a model's predictions, not to label TIFFs (--pred-dir)")
        if not args.pred_dir.is_dir():
            parser.error(f"{args.pred_dir}: folder not found")
    if not data_dir.is_dir():
        parser.error(f"{data_dir}: folder not found")
    try:
        config = data_config_from_args(args, base)
    except ValueError as err:
        parser.error(str(err))
    outputs = [args.out / n for n in ("per_image.csv", "summary.csv", "worst_images.png")]
    if not args.overwrite and any(p.exists() for p in outputs):
        parser.error(f"{args.out} already holds results; pass --overwrite to replace them or choose another --out")
    setup_logging(parser=parser)
    dataset = CellDataset(find_pairs(data_dir, config), config)
    if model_path is not None:
        from ..inference.predictor import Predictor
        source = Predictor.from_checkpoint(model_path, device=args.device, scale=args.scale,
                                           cell_diameter=args.cell_diameter)
        source.tta = args.tta
        options = {**choice, "tile": args.tile, "overlap": args.overlap}
    else:
        source, options = args.pred_dir, {"cells_suffix": args.pred_cells_suffix,
                                          "parts_suffix": args.pred_parts_suffix}
    result = score_folder(dataset, args.parts, source, **options)
    items = result["items"]
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write(outputs[0], lambda tmp: result["per_image"].to_csv(tmp, index=False), overwrite=args.overwrite)
    atomic_write(outputs[1], lambda tmp: result["summary"].to_csv(tmp, index=False), overwrite=args.overwrite)
    worst_images_figure(outputs[2], items, result["per_image"], args.parts, overwrite=args.overwrite)
    summary = result["summary"].set_index("metric")
    headline = [m for m in [f"mean {p}_dice" for p in args.parts[1:]] + ["mean cell_dice", "COCO mask AP",
                                                                          "COCO mask AP50"] if m in summary.index]
    logger.info("%d images: %s", len(items), ", ".join(f"{m.replace('mean ', '')} {summary.loc[m, 'value']:.3f}"
                                                         for m in headline))
    at50 = result["summary"].query("threshold == 0.5").set_index("metric")["value"]
    logger.info("at IoU 0.5: precision %.3f, recall %.3f, F1 %.3f, PQ %.3f; results in %s",
                at50["precision"], at50["recall"], at50["f1"], at50["pq"], args.out)
    return 0
