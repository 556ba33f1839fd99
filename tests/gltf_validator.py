"""The Khronos glTF-Validator (npm ``gltf-validator``, installed by tools/setup.sh into
.venv/node) run on a file from the tests; skips with the reason where it is missing."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
VALIDATOR = REPO_ROOT / ".venv" / "node" / "node_modules" / "gltf-validator"
_SCRIPT = """
const fs = require('fs');
const validator = require(process.argv[1]);
validator.validateBytes(new Uint8Array(fs.readFileSync(process.argv[2])), {maxIssues: 100})
  .then((report) => process.stdout.write(JSON.stringify(report)))
  .catch((error) => { process.stderr.write(String(error)); process.exit(1); });
"""


def validate(path: str | Path) -> dict:
    """The validator's report of ``path`` (``issues.numErrors``, ``issues.messages``...)."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the glTF validator runs on Node.js")
    if not (VALIDATOR / "package.json").is_file():
        pytest.skip(f"gltf-validator is not installed in {VALIDATOR} (tools/setup.sh installs it)")
    done = subprocess.run(
        [node, "-e", _SCRIPT, str(VALIDATOR), str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"the validator could not read {path}: {done.stderr}"
    return json.loads(done.stdout)


def errors(report: dict) -> list[dict]:
    return [m for m in report["issues"]["messages"] if m["severity"] == 0]
