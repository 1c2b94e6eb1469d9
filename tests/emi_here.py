"""Run a shell script as written, with its ``emi`` commands run in the test's process.

bash runs the script (``-euo pipefail``: its expansions, its ``VAR=value emi ...``
prefixes, its order and its exit statuses); ``emi`` on its ``PATH`` is a small script
that hands its arguments, working folder and environment to the test's process, which
runs them through emi's command line there (``cli.main.emi``) and hands back the
output and exit status. A command given in ``processes`` (``"extract"``, ...) runs as
its own ``emi`` process instead: one that reads a setting only a new process reads
(``HF_HOME``, the Hugging Face cache's place, is read when the hub is first imported),
or whose being a process is the point. Each emi process spends about 6 s of CPU
importing torch and transformers before it does anything; a page's tour runs several.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from click.testing import CliRunner

EMI = Path(sys.executable).parent / "emi"
_SHIM = """#!{python}
import json, os, socket, sys
with socket.socket(socket.AF_UNIX) as link:
    link.connect(os.environ["EMI_HERE_SOCKET"])
    ask = {{"argv": sys.argv[1:], "cwd": os.getcwd(), "env": dict(os.environ)}}
    link.sendall(json.dumps(ask).encode())
    link.shutdown(socket.SHUT_WR)
    reply = json.loads(b"".join(iter(lambda: link.recv(65536), b"")))
if reply.get("exec"):
    os.execv({emi!r}, [{emi!r}, *sys.argv[1:]])
sys.stdout.write(reply["stdout"])
sys.stderr.write(reply["stderr"])
sys.exit(reply["code"])
"""


def run_bash(script: str, cwd: Path, env: dict, *, processes: tuple[str, ...] = ()):
    """Run ``script`` under bash in ``cwd`` with ``env``; its ``emi`` commands here but
    those in ``processes``. Returns the ``subprocess.CompletedProcess`` (text output)."""
    with tempfile.TemporaryDirectory(prefix="emi-here-") as folder:
        shim = Path(folder) / "emi"
        shim.write_text(_SHIM.format(python=sys.executable, emi=str(EMI)))
        shim.chmod(0o755)
        env = {**env, "PATH": f"{folder}:{env['PATH']}"}
        env["EMI_HERE_SOCKET"] = str(Path(folder) / "socket")
        with socket.socket(socket.AF_UNIX) as server:
            server.bind(env["EMI_HERE_SOCKET"])
            server.listen()
            server.settimeout(0.1)
            out, err = Path(folder) / "out", Path(folder) / "err"
            with out.open("w") as stdout, err.open("w") as stderr:
                bash = subprocess.Popen(
                    ["bash", "-euo", "pipefail", "-c", script],
                    cwd=cwd, env=env, stdout=stdout, stderr=stderr, text=True,
                )  # fmt: skip
                while bash.poll() is None:
                    with contextlib.suppress(TimeoutError):
                        link, _ = server.accept()
                        with link:
                            _answer(link, processes)
            return subprocess.CompletedProcess(
                bash.args, bash.returncode, out.read_text(), err.read_text()
            )


def _answer(link: socket.socket, processes: tuple[str, ...]) -> None:
    """One ``emi`` command from the shim: run here, or told to run as a process."""
    link.settimeout(None)
    ask = json.loads(b"".join(iter(lambda: link.recv(65536), b"")))
    argv, env = ask["argv"], ask["env"]
    if not argv or argv[0] in processes:
        link.sendall(json.dumps({"exec": True}).encode())
        return
    changed = {k: v for k, v in env.items() if os.environ.get(k) != v}
    changed.update({k: None for k in os.environ if k not in env})
    from cli.main import emi

    here = os.getcwd()
    os.chdir(ask["cwd"])
    try:
        result = CliRunner().invoke(emi, argv, env=changed)
    finally:
        os.chdir(here)
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        import traceback

        stderr += "".join(traceback.format_exception(result.exception))
    link.sendall(
        json.dumps({"code": result.exit_code, "stdout": result.stdout, "stderr": stderr}).encode()
    )
