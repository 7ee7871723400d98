"""Data flows one way (DESIGN.md): a module imports only from modules to its left."""

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "workbench"
# Left to right along the data flow; a module may import its own layer and layers to its left.
LAYERS = [
    {"types", "boxes", "config", "doctor", "package_files", "checkpoint", "cpu", "safe_paths"},
    {"data"},
    {"model"},
    {"matching"},
    {"losses"},
    {"rewards"},
    {"vlm"},  # Vision-R1 rewards for box-writing VLMs and their TRL adapter: nothing imports it
    {"objectives"},
    {"trainer", "training_state", "optim", "run_folder"},
    {"predictor", "inputs", "postprocess", "prompt_bank", "prompt_file"},
    {"evaluation", "coco_eval", "query_metrics", "annotate"},
    {"analysis", "grqo_probes"},
    {"viz", "plots"},
    {"integrations", "experiment", "adapt", "cli", "__main__", "__init__"},
    {"app"},
]
FRONT_DOOR_ONLY = {
    "gradio",
    "gradio_client",
    "fiftyone",
    "IPython",
    "ipywidgets",
    "jupyter_bbox_widget",
}


def layer_of(parts):
    for rank, names in enumerate(LAYERS):
        if parts[0] in names:
            return rank
    raise AssertionError(f"workbench/{'/'.join(parts)} is in no layer; add it to LAYERS")


def imports(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def test_imports_follow_the_data_flow():
    problems = []
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        rank = layer_of(parts)
        for name in imports(path):
            top = name.split(".")
            if top[0] == "workbench" and len(top) > 1 and layer_of(top[1:]) > rank:
                problems.append(f"{'/'.join(parts)} imports {name}, which is to its right")
            if top[0] in FRONT_DOOR_ONLY and not may_import_front_doors(parts, top[0]):
                problems.append(f"{'/'.join(parts)} imports {name}; only integrations/ may")
    assert not problems, "\n".join(problems)


def may_import_front_doors(parts, package: str) -> bool:
    """integrations/ may import any front door; the app's page (app/layout.py) gradio only:
    the app's other modules are plain Python, so its handlers run without a server."""
    if parts[0] == "integrations":
        return True
    return parts == ("app", "layout") and package in {
        "gradio",
        "gradio_client",
        "gradio_image_annotation",
    }


# Path(__file__).parents[2], .parent.parent, ...: a module reaching above its own package
_CLIMBS = re.compile(r"__file__\)?(\.resolve\(\))?\.(parents\b|parent\.parent)")


def test_no_library_module_computes_the_repository_layout():
    """Where the models, examples or runs live is for the front door (app.py, the CLI's
    arguments, a notebook) to say; a library module finds only files of its own package."""
    climbing = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if _CLIMBS.search(path.read_text(encoding="utf-8"))
    ]
    assert not climbing, climbing
