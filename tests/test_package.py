"""What `pip install gloss` puts in site-packages: one top-level package that finds its files."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

from gloss.store import db

ROOT = Path(__file__).resolve().parent.parent

FIND_FILES = """
import gloss, gloss.store.db as db, gloss.pipeline.prompts as prompts, gloss.pipeline.config as cfg
import gloss.pipeline.labeling, gloss.pipeline.evaluate  # every subpackage: explainers, scorers
import pipeline  # the user's own package of that name, beside gloss's
assert pipeline.MINE, "the user's pipeline/"
print(gloss.__file__)
print(prompts.load_prompt("explain_local").name)
print(db.head_revision())
print(cfg.template().splitlines()[0])
"""


def test_a_built_wheel_installs_only_gloss_and_finds_its_prompts_and_migrations(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(wheels), str(ROOT)],
        check=True, capture_output=True, cwd=tmp_path,
    )  # fmt: skip
    (wheel,) = wheels.glob("gloss-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names if ".dist-info/" not in n} == {"gloss"}
    for needed in (
        "gloss/prompts/explain_local.txt",
        "gloss/migrations/env.py",
        "gloss/migrations/script.py.mako",
        f"gloss/migrations/versions/{sorted(p.name for p in db.MIGRATIONS.glob('versions/0*.py'))[-1]}",
        "gloss/pipeline/gloss.toml",
        "gloss/review/templates/feature.html",
        "gloss/review/static/app.css",
    ):
        assert needed in names, needed
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
        check=True, capture_output=True, cwd=tmp_path,
    )  # fmt: skip
    assert {p.name for p in site.iterdir() if not p.name.endswith(".dist-info")} <= {"gloss", "bin"}
    user = tmp_path / "pipeline"  # a notebook folder with a package of its own named pipeline
    user.mkdir()
    (user / "__init__.py").write_text("MINE = True\n")
    out = subprocess.run(
        [sys.executable, "-c", FIND_FILES],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(site)},
        check=True, capture_output=True, text=True,
    ).stdout.splitlines()  # fmt: skip
    assert out[0] == str(site / "gloss" / "__init__.py")
    assert out[1:] == [
        "explain-local",
        db.head_revision(),
        "# gloss.toml — every setting of `gloss run`.",
    ]
