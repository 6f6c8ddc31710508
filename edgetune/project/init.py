"""``edgetune init``: a documented example project to start from."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from edgetune.errors import OutputExistsError
from edgetune.project import PROJECT_FILE, TEMPLATES


@dataclass(frozen=True)
class Written:
    path: Path
    action: str  # "wrote", "replaced", "kept" or "updated"


GITIGNORE_TEMPLATE = "gitignore"  # shipped without the dot, so it never applies to this repo


def init_project(directory: str | Path, *, name: str | None = None,
                 force: bool = False) -> list[Written]:
    """Write ``edgetune.yaml``, example Q&A data and a ``.gitignore`` into ``directory``.

    An existing ``edgetune.yaml`` is refused unless ``force``; existing data is never
    overwritten, and an existing ``.gitignore`` only gains the lines it lacks.
    """
    from edgetune.demo import DEMO_DATA

    directory = Path(directory)
    config = directory / PROJECT_FILE
    if directory.exists() and not directory.is_dir():
        raise OutputExistsError(f"{directory} is a file", hint="choose a folder for the project")
    if config.exists() and not force:
        raise OutputExistsError(f"{config} already exists",
                                hint="pass --force to replace it (data and .gitignore are kept), "
                                     "or choose another folder")
    name = name or Path(os.path.abspath(directory)).name or "my-model"
    written: list[Written] = []
    data = directory / "data" / "qa.jsonl"
    if data.exists():
        written.append(Written(data, "kept"))
    else:
        data.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(DEMO_DATA, data)
        written.append(Written(data, "wrote"))
    written.append(_gitignore(directory / ".gitignore"))
    text = (TEMPLATES / PROJECT_FILE).read_text(encoding="utf-8")
    existed = config.exists()
    config.write_text(text.replace('"{{name}}"', json.dumps(name, ensure_ascii=False)),
                      encoding="utf-8")
    written.append(Written(config, "replaced" if existed else "wrote"))
    return written


def _gitignore(path: Path) -> Written:
    template = (TEMPLATES / GITIGNORE_TEMPLATE).read_text(encoding="utf-8")
    if not path.exists():
        path.write_text(template, encoding="utf-8")
        return Written(path, "wrote")
    current = path.read_text(encoding="utf-8", errors="replace")
    have = {line.strip() for line in current.splitlines()}
    missing = [line for line in template.splitlines()
               if line.strip() and not line.startswith("#") and line.strip() not in have]
    if not missing:
        return Written(path, "kept")
    sep = "" if current.endswith("\n") or not current else "\n"
    path.write_text(current + sep + "# added by edgetune init\n" + "\n".join(missing) + "\n",
                    encoding="utf-8")
    return Written(path, "updated")
