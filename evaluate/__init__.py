"""What the pick is worth: extract (adaptive weight inheritance), fine-tune, measure, export,
report.

The ``run`` pipeline calls, per (strategy, budget) of a search::

    sub = extract_subnet(supernet_path, search=search_json, strategy=s, budget=b, out=p)
    ft = finetune_subnet(p, out=q, teacher=supernet_path)
    figures = evaluate_model(q)
    module = load_subnet(q)  # the plain module, rebuilt from the file (weights-only)
    write_report(rows, out_dir=run_dir, full=figures["full"])
"""

from ._common import (
    SUBNET_FORMAT,
    SubnetRecord,
    build_subnet,
    load_subnet,
    read_subnet,
    save_subnet,
)
from .convert import convert_file
from .export import (
    EXPORT_FORMATS,
    export_onnx,
    export_subnet,
    export_timm_string,
    export_torchscript,
    timm_model_from_string,
    timm_shape_string,
)
from .extract import (
    extract_subnet,
    find_search_result,
    read_search,
    read_widths,
)
from .finetune import distill_loss, finetune_paths, finetune_subnet
from .inheritance import (
    INHERITANCE,
    candidate_indices,
    channel_importance,
    choose_inheritance,
    group_blocks,
    inherit,
    topk_indices,
)
from .measure import counted_macs, dataset_top1, evaluate_model, measure_latency
from .report import format_table, plot_pareto, save_png, write_report

__all__ = [
    "EXPORT_FORMATS",
    "INHERITANCE",
    "SUBNET_FORMAT",
    "SubnetRecord",
    "build_subnet",
    "candidate_indices",
    "channel_importance",
    "choose_inheritance",
    "convert_file",
    "counted_macs",
    "dataset_top1",
    "distill_loss",
    "evaluate_model",
    "export_onnx",
    "export_subnet",
    "export_timm_string",
    "export_torchscript",
    "extract_subnet",
    "find_search_result",
    "finetune_paths",
    "finetune_subnet",
    "format_table",
    "group_blocks",
    "inherit",
    "load_subnet",
    "measure_latency",
    "plot_pareto",
    "read_search",
    "read_subnet",
    "read_widths",
    "save_png",
    "save_subnet",
    "timm_model_from_string",
    "timm_shape_string",
    "topk_indices",
    "write_report",
]
