"""edgetune as an installed wheel, not the checkout: the wheel holds the code and its data files,
and a fresh virtual environment with only that wheel runs the demo end to end.

The wheel is built from a copy of the checkout, so the build neither writes into the checkout nor
picks up a stale ``build/`` left there (setuptools ships whatever ``build/lib`` still holds). The
fresh venv sees the heavy dependencies (torch, llama_cpp...) through a ``.pth`` file naming this
interpreter's site-packages: a plain path line, so that environment's own ``.pth`` files (an
editable edgetune among them) are not processed and the wheel's edgetune is the one imported.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

import edgetune

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
# Not part of a build: environments, caches, build output, git.
NOT_SOURCES = (".git", ".venv", ".cache", "build", "dist", "*.egg-info", "__pycache__",
               ".pytest_cache", "edgetune-out", ".whl*")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT, src, symlinks=True, ignore=shutil.ignore_patterns(*NOT_SOURCES))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp / "dist"), str(src)], check=True, capture_output=True, timeout=300)
    (found,) = (tmp / "dist").glob("edgetune-*.whl")
    return found


@pytest.fixture(scope="module")
def env(wheel, tmp_path_factory) -> Path:
    """A fresh venv holding only the wheel; returns its bin directory."""
    root = tmp_path_factory.mktemp("venv")
    venv.create(root, with_pip=False)
    python = root / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                    "--no-deps", "--no-index", str(wheel)], check=True, capture_output=True,
                   timeout=300)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          check=True, capture_output=True, text=True).stdout.strip()
    ours = dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")])
    (Path(site) / "edgetune-test-deps.pth").write_text("".join(f"{p}\n" for p in ours))
    return root / "bin"


def _run(env: Path, *args: str, cwd: Path, extra: dict | None = None,
         timeout: float = 60) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    environ.update({"PATH": f"{env}{os.pathsep}{environ.get('PATH', '')}", **(extra or {})})
    proc = subprocess.run(list(args), cwd=cwd, env=environ, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{args}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_wheel_holds_every_file_of_the_package(wheel):
    """Every module and data file in the checkout's edgetune/ (the linked profiles and schema as
    real files), and nothing else."""
    def packaged(path: Path) -> bool:
        return "__pycache__" not in path.parts and path.suffix != ".pyc" and path.is_file()

    package = ROOT / "edgetune"
    expected = {f"edgetune/{p.relative_to(package).as_posix()}"
                for p in package.rglob("*") if packaged(p)}
    # rglob does not enter linked folders: list the profiles through the link.
    expected |= {f"edgetune/resources/quant_profiles/{p.name}"
                 for p in (package / "resources" / "quant_profiles").glob("*.yaml")}
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        shipped = {n for n in names if not n.startswith("edgetune-")}
        schema = zf.read("edgetune/resources/edgetune.schema.json")
    assert shipped == expected
    assert schema == (ROOT / "mobile_bundle" / "edgetune.schema.json").read_bytes()
    assert {"edgetune/resources/quant_profiles/phone.yaml", "edgetune/templates/edgetune.yaml",
            "edgetune/templates/gitignore", "edgetune/demo/data/questions.jsonl"} <= shipped


def test_installed_wheel_runs_outside_the_checkout(env, tmp_path):
    where = _run(env, "python", "-c", "import edgetune; print(edgetune.__file__)", cwd=tmp_path)
    assert Path(where.stdout.strip()).is_relative_to(env.parent)
    assert _run(env, "edgetune", "--version", cwd=tmp_path).stdout == \
        f"edgetune, version {edgetune.__version__}\n"
    assert "Usage:" in _run(env, "python", "-m", "edgetune", "--help", cwd=tmp_path).stdout
    listed = _run(env, "edgetune", "targets", cwd=tmp_path).stdout
    names = [line.split()[0] for line in listed.splitlines() if line.strip()]
    assert names == sorted(p.stem for p in (ROOT / "quant_profiles").glob("*.yaml"))
    assert "phone" in names


def test_installed_wheel_builds_and_verifies_the_demo(env, demo_base, tmp_path):
    """`edgetune build --target phone --steps 2` from the wheel; llama.cpp's converter comes from
    this environment (EDGETUNE_LLAMA_CPP_DIR), as `make setup` installed it."""
    from edgetune import llamacpp
    from edgetune.demo.model import RECIPE_VERSION

    home = tmp_path / "home"
    (home / "cache").mkdir(parents=True)
    # The demo base model the build would make first, already built this session.
    (home / "cache" / f"demo-base-v{RECIPE_VERSION}").symlink_to(demo_base)
    extra = {"EDGETUNE_HOME": str(home), "EDGETUNE_LLAMA_CPP_DIR": str(llamacpp.converter_dir())}
    work = tmp_path / "elsewhere"
    work.mkdir()
    # --accept-gate-failure: the phone's decode-speed floor follows this machine's load (a busy
    # CI machine failed it); this test is about the installed wheel, not the gates.
    _run(env, "edgetune", "build", "--target", "phone", "--steps", "2", "--accept-gate-failure",
         "--out", str(tmp_path / "out"), cwd=work, extra=extra, timeout=600)
    bundle = tmp_path / "out" / "bundle"
    _run(env, "edgetune", "verify", str(bundle), "--key", str(home / "keys" / "edgetune.pub"),
         cwd=work, extra=extra)
    # Q4_K_X (the measured mix) ships only where it beat Q4_K_M.
    mix = json.loads((bundle / "eval.json").read_text())["quants"]["Q4_K_X"]["mix"]
    assert sorted(p.name for p in bundle.glob("*.gguf")) == [
        "edgetune-demo-Q4_K_M.gguf", *(["edgetune-demo-Q4_K_X.gguf"] if mix["ships"] else []),
        "edgetune-demo-Q5_K_M.gguf", "edgetune-demo-Q8_0.gguf"]
