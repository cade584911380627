from __future__ import annotations

import subprocess
import sys


def test_engine_imports_without_monai() -> None:
    code = (
        "import sys; sys.modules['monai'] = None\n"
        "import invseg.engine\n"
        "assert 'monai' not in {m.split('.')[0] for m, v in sys.modules.items() if v}\n"
        "assert 'memcnn' not in sys.modules\n"
    )
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
