"""``install_runtime``: pip-install a missing TFLite interpreter into ``<workdir>/venv`` on the
target (never system-wide), as the SSH user, as its own logged step."""

from __future__ import annotations

import logging

from hal.deadline import Deadline
from hal.driver import StepRecorder
from hal.errors import DeviceError
from hal.rpi import preflight
from hal.rpi.ssh import SshSession, quote_args

log = logging.getLogger(__name__)

STEP_INSTALL_RUNTIME = "install_runtime"


def install_runtime(session: SshSession, facts: preflight.TargetFacts, base_python: str,
                    pip_args: list[str], workdir: str, sha: str, deadline: Deadline,
                    steps: StepRecorder, device_id: str, command_timeout_s: float
                    ) -> tuple[preflight.TargetFacts, str]:
    """Make the venv with ``base_python`` (so it has that Python's version and architecture,
    which pip then matches wheels against), install the interpreter there (wheels only,
    PIP_OPTIONS), probe again. Returns the new facts and the venv's python."""
    venv = f"{facts.workdir}/venv"
    packages = preflight.pip_packages(facts)
    with steps.step(STEP_INSTALL_RUNTIME, venv=venv, packages=packages) as info:
        log.warning("device=%s installing %s into %s on the target (install_runtime = "
                    "true)", device_id, " ".join(packages), venv)
        pip = [venv + "/bin/python", "-m", "pip", "install", *preflight.PIP_OPTIONS,
               *pip_args, *packages]
        script = (
            f"{quote_args([base_python, '-m', 'venv', venv])} || exit 10\n"
            f"{quote_args(pip)} || exit 11\n"
        )
        res = session.run(script, deadline.sub(900.0, "install runtime"),
                          what="install runtime")
        info.update(status=res.status)
        if not res.ok:
            stage = "creating the venv" if res.status == 10 else "pip install"
            fix = preflight.install_hint(facts)
            if res.status == 10 and b"ensurepip" in res.stderr:
                fix = "on the target: sudo apt install python3-venv"
            raise DeviceError("runtime_missing", f"installing the runtime failed while "
                              f"{stage}: {res.err_text(600)}", venv=venv,
                              packages=packages, status=res.status,
                              stderr_tail=res.err_text(), fix=fix)
        python = venv + "/bin/python"
        facts = preflight.probe(session, python, workdir, sha,
                                deadline.sub(command_timeout_s, "preflight"))
        preflight.choose_runtime(facts)
        info.update(python=python, runtimes=facts.runtimes, numpy=facts.numpy)
    return facts, python
